"""Prompt building against mistral_common's own encode_chat_completion (no Ray, no vLLM)."""

from __future__ import annotations

import numpy as np
import pytest
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from PIL import Image

from serve_app.engine.prompt import PixtralPromptBuilder, image_grid_of, resolve_tokenizer_file
from serve_app.errors import InvalidRequestError, TooManyImagesError
from serve_app.images import ImageGrid, PreparedImage

TOKENIZERS = ["mistral_common:tekken_240911.json", "mistral_common:mistral_instruct_tokenizer_241114.model.v7m1"]


@pytest.fixture(scope="module", params=TOKENIZERS, ids=["pixtral-12b", "pixtral-large"])
def pair(request):
    builder = PixtralPromptBuilder(request.param)
    reference = MistralTokenizer.from_file(str(resolve_tokenizer_file(request.param)))
    return builder, reference


def source_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def prepared(image: Image.Image, grid: ImageGrid, tag: str) -> PreparedImage:
    """What the pool would send: the image resized to its token grid."""
    target = grid.target_size(*image.size)
    return PreparedImage(
        pixels=np.asarray(image.resize(target)),
        sha256=tag,
        source_width=image.width,
        source_height=image.height,
        source_bytes=0,
    )


def test_text_only_conversation_matches(pair):
    builder, reference = pair
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "How are "}, {"type": "text", "text": "you?"}]},
    ]
    expected = reference.encode_chat_completion(
        ChatCompletionRequest(
            messages=[
                SystemMessage(content="Be brief."),
                UserMessage(content="Hi"),
                AssistantMessage(content="Hello!"),
                UserMessage(content=[TextChunk(text="How are "), TextChunk(text="you?")]),
            ]
        )
    )
    prompt = builder.build(messages, [])
    assert prompt.token_ids == expected.tokens
    assert prompt.images == []


@pytest.mark.parametrize("sizes", [[(640, 480)], [(2000, 300), (37, 1200)], [(1024, 1024), (16, 16)]])
def test_images_give_mistral_common_tokens_and_order(pair, sizes):
    builder, reference = pair
    originals = [source_image(i, w, h) for i, (w, h) in enumerate(sizes)]
    parts = [{"type": "text", "text": "Compare these."}] + [{"type": "image_url"} for _ in originals]
    pool_images = [prepared(img, builder.grid, f"sha{i}") for i, img in enumerate(originals)]
    prompt = builder.build([{"role": "user", "content": parts}], pool_images)
    expected = reference.encode_chat_completion(
        ChatCompletionRequest(
            messages=[UserMessage(content=[TextChunk(text="Compare these."), *[ImageChunk(image=i) for i in originals]])]
        )
    )
    assert prompt.token_ids == expected.tokens
    assert [im.size for im in prompt.images] == [tuple(p.pixels.shape[1::-1]) for p in pool_images]
    assert [im.shape[1:] for im in expected.images] == [(im.height, im.width) for im in prompt.images]
    assert prompt.image_ids == [f"sha{i}-{p.width}x{p.height}" for i, p in enumerate(pool_images)]
    for image, pool_image in zip(prompt.images, pool_images):
        np.testing.assert_array_equal(np.asarray(image), pool_image.pixels)


def test_text_then_single_image_keeps_mistral_common_reordering(pair):
    """mistral_common moves a trailing lone image first; tokens and images must agree."""
    builder, reference = pair
    original = source_image(7, 300, 200)
    prompt = builder.build(
        [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image_url"}]}],
        [prepared(original, builder.grid, "x")],
    )
    expected = reference.encode_chat_completion(
        ChatCompletionRequest(messages=[UserMessage(content=[TextChunk(text="What is it?"), ImageChunk(image=original)])])
    )
    assert prompt.token_ids == expected.tokens


def test_image_not_on_the_grid_is_refused(pair):
    builder, _ = pair
    off_grid = PreparedImage(
        pixels=np.zeros((100, 100, 3), np.uint8), sha256="x", source_width=100, source_height=100, source_bytes=0
    )
    with pytest.raises(InvalidRequestError, match="grid"):
        builder.build([{"role": "user", "content": [{"type": "image_url"}]}], [off_grid])


def test_image_count_mismatch_is_an_error(pair):
    builder, _ = pair
    image = prepared(source_image(1, 64, 64), builder.grid, "x")
    with pytest.raises(TooManyImagesError):
        builder.build([{"role": "user", "content": "no image part"}], [image])
    with pytest.raises(TooManyImagesError):
        builder.build([{"role": "user", "content": [{"type": "image_url"}]}], [])


def test_images_in_system_messages_are_refused(pair):
    builder, _ = pair
    with pytest.raises(InvalidRequestError, match="only contain text"):
        builder.build([{"role": "system", "content": [{"type": "image_url"}]}], [])


def test_conversation_ending_with_assistant_is_a_clear_error(pair):
    builder, _ = pair
    with pytest.raises(InvalidRequestError):
        builder.build([{"role": "assistant", "content": "hi"}], [])


def test_grids_of_both_tokenizers():
    assert image_grid_of(TOKENIZERS[0]) == ImageGrid(patch_size=16, spatial_merge_size=1, max_image_size=1024)
    assert image_grid_of(TOKENIZERS[1]) == ImageGrid(patch_size=16, spatial_merge_size=1, max_image_size=1024)


def test_missing_tokenizer_file():
    with pytest.raises(FileNotFoundError):
        resolve_tokenizer_file("mistral_common:nope.json")


def test_decoding_is_unchanged_by_skipping_the_prompt_text(pair):
    builder, reference = pair
    prompt = builder.build([{"role": "user", "content": "Bonjour, ça va ?"}], [])
    decoded = builder._tokenizer.decode(prompt.token_ids)
    assert decoded == reference.decode(prompt.token_ids)
    assert "Bonjour, ça va ?" in decoded


@pytest.mark.parametrize("size", [(512, 384), (1024, 768), (40, 900)])
def test_prompt_size_bounds_the_built_prompt(pair, size):
    from serve_app.deployments.pixtral_server import prompt_size

    builder, _ = pair
    image = prepared(source_image(5, *size), builder.grid, "s")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is it? " * 20}, {"type": "image_url"}]},
    ]
    built = len(builder.build(messages, [image]).token_ids)
    estimate = prompt_size(messages, [image], builder.grid)
    assert built <= estimate <= built * 4  # text: at least one character per token, at most ~4


def test_prompt_size_of_a_turn_without_content():
    """An assistant turn that only calls tools has ``content: None`` (the hostile suite's tool-id cases)."""
    from serve_app.deployments.pixtral_server import prompt_size

    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Call f."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"},
    ]
    assert prompt_size(messages, [], ImageGrid()) == len("Call f.") + len("done")
