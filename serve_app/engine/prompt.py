"""Pixtral prompts from OpenAI messages, tokenized exactly as mistral_common does.

The image pool has already resized every image to its token grid, so the only
thing the tokenizer needs from an image is its size. ``_GridOnlyImageEncoder``
gives mistral_common the image token run without its float32 resize and
normalise (vLLM does those once more anyway), and hands back the pool's uint8
pixels so that the engine receives the images in the order mistral_common
placed them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import mistral_common
import numpy as np

from mistral_common.exceptions import (
    InvalidAssistantMessageException,
    InvalidMessageStructureException,
    InvalidRequestException,
    InvalidSystemPromptException,
    InvalidUserMessageException,
)
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
from mistral_common.exceptions import InvalidFunctionCallException, InvalidToolException, InvalidToolMessageException
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.image import ImageEncoder, ImageEncoding
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from PIL import Image

from serve_app.compat.mistral_common import image_to_num_tokens
from serve_app.errors import InvalidRequestError, TooManyImagesError
from serve_app.images.grid import ImageGrid
from serve_app.images.prepared import PreparedImage
from serve_app.engine.protocol import ChatPrompt
from serve_app.engine.tools import TOOL_CALLS_MARKER, ToolCallIds

PACKAGED_PREFIX = "mistral_common:"
# mistral_common's request validator raises these for conversations a client got wrong (order of
# roles, empty system prompt, ...); their messages are written for the client.
_CONVERSATION_ERRORS = (
    InvalidAssistantMessageException,
    InvalidMessageStructureException,
    InvalidRequestException,
    InvalidSystemPromptException,
    InvalidUserMessageException,
    InvalidFunctionCallException,
    InvalidToolException,
    InvalidToolMessageException,
)
MISTRAL_COMMON_DATA = Path(mistral_common.__file__).parent / "data"


def resolve_tokenizer_file(spec: str | Path) -> Path:
    """A tokenizer path, or ``mistral_common:<file>`` for one in mistral_common's package data."""
    text = str(spec)
    if text.startswith(PACKAGED_PREFIX):
        path = MISTRAL_COMMON_DATA / text[len(PACKAGED_PREFIX) :]
    else:
        path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def image_grid_of(tokenizer_file: str | Path) -> ImageGrid:
    """The image grid (patch, merge, max size) a Pixtral tokenizer encodes images with."""
    tokenizer = MistralTokenizer.from_file(str(resolve_tokenizer_file(tokenizer_file)))
    encoder = tokenizer.instruct_tokenizer.image_encoder
    if encoder is None:
        raise ValueError(f"{tokenizer_file} has no image encoder: not a Pixtral tokenizer")
    return _grid_from(encoder)


def _grid_from(encoder: ImageEncoder) -> ImageGrid:
    config = encoder.image_config
    return ImageGrid(
        patch_size=config.image_patch_size,
        spatial_merge_size=config.spatial_merge_size,
        max_image_size=config.max_image_size,
    )


class _GridOnlyImageEncoder(ImageEncoder):
    def __call__(self, content: ImageChunk) -> ImageEncoding:  # type: ignore[override]
        prepared = content.image
        width, height = prepared.size
        cols, rows = image_to_num_tokens(self, prepared)
        tile = self.image_config.image_patch_size * self.image_config.spatial_merge_size
        if (cols * tile, rows * tile) != (width, height):
            raise InvalidRequestError(
                f"image of {width}x{height} is not on Pixtral's {tile}-pixel grid; the image pool resizes first"
            )
        tokens = ([self.special_ids.img] * cols + [self.special_ids.img_break]) * rows
        tokens[-1] = self.special_ids.img_end
        # Hand back the pool's own pixels, tagged with their content id, so that
        # encoded.images lists our images in the order mistral_common placed them.
        pixels = prepared.info["pixels"].view(_TaggedPixels)
        pixels.content_id = prepared.info["content_id"]
        pixels.pil_image = prepared
        return ImageEncoding(tokens=tokens, image=pixels)


def _without_prompt_text(decode: Any) -> Any:
    """The instruct tokenizer's ``decode``, except the call ``encode_instruct`` makes to fill
    ``Tokenized.text`` (special tokens kept), which gets "".

    mistral_common 1.13 decodes every prompt it encodes back to text, one special token at a
    time: 0.6 ms of a 0.9 ms build for one 512x384 image, 1 ms for a 1024x768 one, all of it
    on the way to the first token, and the text is never used here. Decoding for anything
    else (special tokens ignored, the default) is unchanged.
    """

    def decode_unless_prompt_text(
        tokens: list[int], special_token_policy: SpecialTokenPolicy = SpecialTokenPolicy.IGNORE
    ) -> str:
        if special_token_policy == SpecialTokenPolicy.KEEP:
            return ""
        return decode(tokens, special_token_policy)

    return decode_unless_prompt_text


class _TaggedPixels(np.ndarray):
    content_id: str = ""
    pil_image: Image.Image | None = None


class PixtralPromptBuilder:
    """Builds ``ChatPrompt`` objects with mistral_common's ``encode_chat_completion``."""

    def __init__(self, tokenizer_file: str | Path):
        self.tokenizer_file = resolve_tokenizer_file(tokenizer_file)
        self._tokenizer = MistralTokenizer.from_file(str(self.tokenizer_file))
        instruct = self._tokenizer.instruct_tokenizer
        encoder = instruct.image_encoder
        if encoder is None:
            raise ValueError(f"{self.tokenizer_file} has no image encoder: not a Pixtral tokenizer")
        instruct.image_encoder = _GridOnlyImageEncoder(encoder.image_config, encoder.special_ids)
        instruct.decode = _without_prompt_text(instruct.decode)
        self.grid = _grid_from(encoder)
        special = encoder.special_ids
        # An image's token run: [IMG] and [IMG_BREAK] tokens, closed by [IMG_END].
        self.image_tokens = (special.img, special.img_break, special.img_end)
        self.image_end = special.img_end

    def build(
        self,
        messages: Sequence[dict[str, Any]],
        images: Sequence[PreparedImage],
        tools: Sequence[dict[str, Any]] = (),
        *,
        force_tool_call: bool = False,
    ) -> ChatPrompt:
        """Tokenize OpenAI-shaped ``messages``; ``images`` fill their image parts in order.

        Each message is ``{"role": ..., "content": str | [{"type": "text", "text": ...} |
        {"type": "image_url"}], "tool_calls"?: [{"id", "name", "arguments"}], "tool_call_id"?}``
        (already validated by the API models); ``tools`` are ``{"name", "description",
        "parameters"}``. ``force_tool_call`` ends the prompt with ``[TOOL_CALLS]``, so the model
        continues with its call list.
        """
        pending = list(images)
        ids = ToolCallIds()
        converted = []
        for message in messages:
            role = message["role"]
            content = message["content"]
            if role == "system":
                converted.append(SystemMessage(content=_text_of(content, role)))
            elif role == "assistant":
                calls = [
                    ToolCall(id=ids.to_mistral(call["id"]), function=FunctionCall(name=call["name"], arguments=call["arguments"]))
                    for call in message.get("tool_calls") or ()
                ]
                text = None if content is None else _text_of(content, role)
                converted.append(AssistantMessage(content=text or None, tool_calls=calls or None))
            elif role == "tool":
                converted.append(
                    ToolMessage(content=_text_of(content, role), tool_call_id=ids.to_mistral(message["tool_call_id"]))
                )
            elif role == "user":
                converted.append(UserMessage(content=_user_chunks(content, pending)))
            else:
                raise InvalidRequestError(f"unsupported message role {role!r}", param="messages")
        if pending:
            raise TooManyImagesError(f"{len(pending)} image(s) were given without an image_url part")
        offered = [
            Tool(function=Function(name=t["name"], description=t["description"], parameters=t["parameters"]))
            for t in tools
        ]
        try:
            encoded = self._tokenizer.encode_chat_completion(
                ChatCompletionRequest(messages=converted, tools=offered or None)
            )
        except _CONVERSATION_ERRORS as exc:
            raise InvalidRequestError(f"messages cannot be encoded for Pixtral: {exc}", param="messages") from exc
        tokens = list(encoded.tokens)
        if force_tool_call:
            tokens.append(self.tool_calls_token)
        return ChatPrompt(
            token_ids=tokens,
            images=[pixels.pil_image for pixels in encoded.images],
            image_ids=[pixels.content_id for pixels in encoded.images],
            tool_call_ids=ids,
        )

    @property
    def tool_calls_token(self) -> int:
        """The id of ``[TOOL_CALLS]``, the control token a Mistral model starts its calls with."""
        return self._tokenizer.instruct_tokenizer.tokenizer.get_special_token(TOOL_CALLS_MARKER)


def _text_of(content: str | list[dict[str, Any]], role: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequestError(f"{role} messages may only contain text", param="messages")
        texts.append(part["text"])
    return "".join(texts)


def _user_chunks(content: str | list[dict[str, Any]], pending: list[PreparedImage]) -> str | list:
    if isinstance(content, str):
        return content
    chunks: list[TextChunk | ImageChunk] = []
    for part in content:
        if part["type"] == "text":
            chunks.append(TextChunk(text=part["text"]))
        else:
            if not pending:
                raise TooManyImagesError("more image_url parts than prepared images", param="messages")
            prepared = pending.pop(0)
            image = Image.fromarray(prepared.pixels)
            image.info["pixels"] = prepared.pixels
            image.info["content_id"] = prepared.content_id
            chunks.append(ImageChunk(image=image))
    return chunks
