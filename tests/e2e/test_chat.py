"""The whole request path with the real engine, through the official openai SDK."""

from __future__ import annotations

import json
import time
import urllib.request

import httpx
import pytest
from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from openai import APIStatusError, BadRequestError

from chat_payloads import REQUEST_LIMIT, data_url, jpeg_bytes, user_message

MODEL = "tiny-pixtral"


@pytest.fixture(scope="module")
def reference_tokenizer(tiny_model) -> MistralTokenizer:
    return MistralTokenizer.from_file(str(tiny_model / "tekken.json"))


def reference_prompt_tokens(tokenizer, text: str, *urls: str, system: str | None = None) -> int:
    """What mistral_common itself counts for the same conversation (original images)."""
    chunks = [TextChunk(text=text)] + [ImageURLChunk(image_url=url) for url in urls]
    messages = ([SystemMessage(content=system)] if system else []) + [UserMessage(content=chunks)]
    return len(tokenizer.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens)


def complete(client, messages, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def test_one_image_non_streaming_reports_mistral_common_usage(client, reference_tokenizer):
    url = data_url(jpeg_bytes(1, (500, 300)))
    response = complete(client, [user_message(url)])
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens == reference_prompt_tokens(reference_tokenizer, "Describe the image.", url)
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8


def test_streaming_matches_non_streaming(client):
    messages = [user_message(data_url(jpeg_bytes(2)))]
    full = complete(client, messages, max_tokens=10)
    stream = complete(client, messages, max_tokens=10, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(chunks) >= 3
    assert text == full.choices[0].message.content
    assert finishes == ["length"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_two_images_and_text_only(client, reference_tokenizer):
    first, second = data_url(jpeg_bytes(3, (256, 256))), data_url(jpeg_bytes(4, (640, 480)))
    two = complete(client, [user_message(first, second, text="Compare.")])
    assert two.usage.prompt_tokens == reference_prompt_tokens(reference_tokenizer, "Compare.", first, second)
    text_only = complete(client, [{"role": "user", "content": "Hello there"}])
    expected = len(
        reference_tokenizer.encode_chat_completion(
            ChatCompletionRequest(messages=[UserMessage(content="Hello there")])
        ).tokens
    )
    assert text_only.usage.prompt_tokens == expected
    assert text_only.choices[0].message.content


def test_system_and_assistant_turns(client, reference_tokenizer):
    from mistral_common.protocol.instruct.messages import AssistantMessage

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        user_message(data_url(jpeg_bytes(5))),
    ]
    response = complete(client, messages)
    expected = reference_tokenizer.encode_chat_completion(
        ChatCompletionRequest(
            messages=[
                SystemMessage(content="Be brief."),
                UserMessage(content="Hi"),
                AssistantMessage(content="Hello"),
                UserMessage(
                    content=[
                        TextChunk(text="Describe the image."),
                        ImageURLChunk(image_url=data_url(jpeg_bytes(5))),
                    ]
                ),
            ]
        )
    )
    assert response.usage.prompt_tokens == len(expected.tokens)


def test_image_changes_the_output_and_same_image_repeats_it(client):
    first, second = data_url(jpeg_bytes(10, (512, 384))), data_url(jpeg_bytes(11, (512, 384)))
    a1 = complete(client, [user_message(first)], max_tokens=16).choices[0].message.content
    b = complete(client, [user_message(second)], max_tokens=16).choices[0].message.content
    a2 = complete(client, [user_message(first)], max_tokens=16).choices[0].message.content
    assert a1 == a2
    assert a1 != b


def test_image_from_local_http_server(client, image_server):
    payload = jpeg_bytes(20, (400, 400))
    image_server.routes["/photo.jpg"] = ("image/jpeg", payload)
    by_http = complete(client, [user_message(f"{image_server.base_url}/photo.jpg")])
    by_data = complete(client, [user_message(data_url(payload))])
    assert by_http.usage.prompt_tokens == by_data.usage.prompt_tokens
    assert by_http.choices[0].message.content == by_data.choices[0].message.content


def test_models_health_and_ready(client, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with urllib.request.urlopen(served + "/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(served + "/ready", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ready"}


def _post(served, api_key, body: bytes | dict, key: str | None = "use-fixture") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {api_key if key == 'use-fixture' else key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(served + "/v1/chat/completions", content=content, headers=headers, timeout=60)


def _assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_auth_is_required(served, api_key):
    good = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _assert_openai_error(_post(served, api_key, good, key=None), 401, "invalid_api_key")
    _assert_openai_error(_post(served, api_key, good, key="wrong"), 401, "invalid_api_key")
    assert _post(served, api_key, good).status_code == 200


@pytest.mark.parametrize(
    "body, code, param",
    [
        (b"{not json", "invalid_json", None),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, "model_not_found", "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 99}, "invalid_request", "n"),  # over chat_fields.max_n
        ({"model": MODEL, "messages": []}, "invalid_request", "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "invalid_request", "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {}}, "invalid_request", "logit_bias"),
    ],
    ids=["malformed-json", "unknown-model", "n-2", "no-messages", "temperature", "unsupported-field"],
)
def test_bad_requests_get_openai_errors(served, api_key, body, code, param):
    error = _assert_openai_error(_post(served, api_key, body), 400, code)
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    "url, code",
    [
        (data_url(b"this is not an image at all", "image/png"), "invalid_image"),
        ("data:image/jpeg;base64,@@@not-base64@@@", None),
        ("file:///etc/passwd", "unsupported_image_url"),
        ("ftp://example.com/a.jpg", "unsupported_image_url"),
    ],
    ids=["not-an-image", "bad-base64", "file-url", "ftp-url"],
)
def test_bad_images_get_400_naming_the_image(client, url, code):
    with pytest.raises(BadRequestError) as info:
        complete(client, [user_message(data_url(jpeg_bytes(1)), url)])
    error = info.value.body
    assert error["param"] == "messages[0].content[2].image_url.url"
    assert error["message"].startswith("image 1:")
    if code is not None:
        assert error["code"] == code
    # The server is still fine afterwards.
    assert complete(client, [user_message(data_url(jpeg_bytes(1)))]).usage.completion_tokens == 8


def test_more_images_than_the_limit(client):
    urls = [data_url(jpeg_bytes(i, (64, 64))) for i in range(3)]  # config.cpu.yaml allows 2
    with pytest.raises(BadRequestError) as info:
        complete(client, [user_message(*urls)])
    assert info.value.body["code"] == "too_many_images"
    assert complete(client, [user_message(*urls[:2])]).choices[0].finish_reason == "length"


def test_missing_image_on_http_host_is_a_client_error(client, image_server):
    with pytest.raises(APIStatusError) as info:
        complete(client, [user_message(f"{image_server.base_url}/missing.jpg")])
    assert info.value.status_code == 400
    assert info.value.body["code"] == "image_not_found"


def test_prompt_longer_than_the_context(client):
    with pytest.raises(BadRequestError) as info:
        complete(client, [{"role": "user", "content": "word " * 9000}])
    assert info.value.body["code"] == "context_length_exceeded"


def test_max_tokens_past_the_context_is_refused_before_generating(client):
    # ~5000 prompt tokens + 4000 (under the 4096 server cap) > the 8192-token context
    with pytest.raises(BadRequestError) as info:
        complete(client, [{"role": "user", "content": "word " * 5000}], max_tokens=4000)
    assert info.value.body["param"] == "max_tokens"
    assert info.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"max_tokens": 4097}, "max_tokens"),
        ({"max_tokens": 4097, "ignore_eos": True}, "max_tokens"),
        ({"max_completion_tokens": 5000, "ignore_eos": True}, "max_completion_tokens"),
    ],
    ids=["max_tokens", "ignore_eos", "max_completion_tokens"],
)
def test_max_tokens_over_the_server_cap_is_refused(served, api_key, fields, param):
    """max_tokens_limit (4096 by default) holds even where the context would have room."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    error = _assert_openai_error(_post(served, api_key, body), 400, "max_tokens_too_large")
    assert error["param"] == param


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_refused(served, api_key, chunked):
    filler = "x" * (REQUEST_LIMIT + 1024)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": filler}]}).encode()
    content = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    response = httpx.post(
        served + "/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        timeout=60,
    )
    error = _assert_openai_error(response, 400, "request_too_large")
    # A declared length is refused from the header, before the body is read; only a chunked body is counted.
    assert ("(Content-Length)" in error["message"]) is not chunked, error["message"]


def test_unknown_path_is_an_openai_404(served):
    response = httpx.get(served + "/v1/nothing", timeout=10)
    _assert_openai_error(response, 404, "not_found")


def test_return_token_ids_equal_mistral_common(served, api_key, reference_tokenizer):
    url = data_url(jpeg_bytes(41, (200, 300)))
    response = httpx.post(
        served + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [user_message(url)],
            "max_tokens": 5,
            "temperature": 0,
            "return_token_ids": True,
        },
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=120,
    )
    body = response.json()
    expected = reference_tokenizer.encode_chat_completion(
        ChatCompletionRequest(messages=[UserMessage(content=[TextChunk(text="Describe the image."), ImageURLChunk(image_url=url)])])
    ).tokens
    assert body["prompt_token_ids"] == expected
    assert len(body["choices"][0]["token_ids"]) == body["usage"]["completion_tokens"] == 5


def test_a_failed_image_cancels_the_other_fetches(served, api_key, image_server):
    """The request fails on its missing image, and its slow sibling's download stops too."""
    import time

    tag = time.monotonic_ns()
    slow, missing = f"/slow/sibling-{tag}.jpg", f"/late404/missing-{tag}.jpg"
    urls = [image_server.base_url + slow, image_server.base_url + missing]
    body = {"model": MODEL, "messages": [user_message(*urls)], "max_tokens": 2}
    started = time.monotonic()
    error = _assert_openai_error(_post(served, api_key, body), 400, "image_not_found")
    assert error["param"] == "messages[0].content[2].image_url.url"
    assert time.monotonic() - started < 10
    assert slow in image_server.started  # the sibling download was under way when the request failed
    deadline = time.monotonic() + 10  # the fetch's own deadline (fetch.total_timeout_s) is 20 s
    while slow not in image_server.aborted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slow in image_server.aborted


def test_resent_image_hits_the_prefix_cache_and_another_image_never_does(client, reference_tokenizer):
    """A chat client resends the whole conversation, image included, every turn: the engine's
    prefix cache (keyed by the pool's content hashes) answers it; a different image never hits."""
    image, other = data_url(jpeg_bytes(50, (512, 384))), data_url(jpeg_bytes(51, (512, 384)))
    turn1 = [user_message(image)]
    first = complete(client, turn1, max_tokens=4)
    turn2 = turn1 + [
        {"role": "assistant", "content": first.choices[0].message.content or "ok"},
        {"role": "user", "content": "And the colours?"},
    ]
    second = complete(client, turn2, max_tokens=4)
    image_tokens = reference_prompt_tokens(reference_tokenizer, "Describe the image.", image)
    assert second.usage.prompt_tokens_details is not None
    # At least the whole first turn up to its last full cache block came from the cache.
    assert second.usage.prompt_tokens_details.cached_tokens >= image_tokens - 256
    assert second.usage.prompt_tokens_details.cached_tokens > 0

    fresh = complete(client, [user_message(other)], max_tokens=4)
    ids = reference_tokenizer.encode_chat_completion(
        ChatCompletionRequest(messages=[UserMessage(content=[TextChunk(text="Describe the image."), ImageURLChunk(image_url=other)])])
    ).tokens
    first_image_token = ids.index(reference_tokenizer.instruct_tokenizer.image_encoder.special_ids.img)
    # Only the text before the image can be shared with earlier requests, never image tokens.
    assert fresh.usage.prompt_tokens_details.cached_tokens <= first_image_token


def test_streamed_usage_reports_cached_tokens(client):
    messages = [user_message(data_url(jpeg_bytes(52, (256, 256))))]
    complete(client, messages, max_tokens=2)
    stream = complete(client, messages, max_tokens=6, stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 6
    assert usage[0].prompt_tokens_details.cached_tokens > 0


def test_no_replica_header_by_default(served, api_key):
    """The session's app runs config.cpu.yaml's ingress settings: internal replica ids stay inside."""
    body = {"model": MODEL, "messages": [user_message(data_url(jpeg_bytes(7, (64, 48))))], "max_tokens": 2}
    for stream in (False, True):
        response = _post(served, api_key, {**body, "stream": stream})
        assert response.status_code == 200, response.text
        assert "x-pixtral-replica" not in response.headers
@pytest.mark.parametrize("with_image", [False, True], ids=["text", "512x384"])
def test_server_timing_names_each_stage_to_the_first_token(served, api_key, with_image):
    content = user_message(data_url(jpeg_bytes(50, (512, 384))))["content"] if with_image else "Say hi."
    started = time.perf_counter()
    with httpx.stream(
        "POST",
        served + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "stream": True},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=120,
    ) as response:
        headers_after_s = time.perf_counter() - started
        assert response.status_code == 200
        header = response.headers["server-timing"]
        list(response.iter_lines())
    stages = {}
    for entry in header.split(", "):
        name, dur = entry.split(";dur=")
        stages[name] = float(dur) / 1000
    engine_parts = ["engine-render", "engine-to-core", "engine-queue", "engine-prefill", "engine-from-core"]
    assert list(stages) == ["auth", "body", "parse", "images", "route", "hop", "prompt", "engine", "total",
                            *engine_parts]
    assert all(seconds >= 0 for seconds in stages.values())
    # the parts (vLLM's request stats) lie within the engine stage, which also holds admission and the hand-on
    assert 0 < sum(stages[name] for name in engine_parts) <= stages["engine"] + 5e-6
    assert stages["engine-prefill"] > 0
    ingress_side = sum(stages[name] for name in ("auth", "body", "parse", "images", "route"))
    replica_side = stages["hop"] + stages["prompt"] + stages["engine"]
    assert stages["total"] == pytest.approx(ingress_side + replica_side, abs=2e-5)  # rounding to 1 us each
    assert stages["total"] <= headers_after_s
    assert stages["engine"] > 0
    if not with_image:
        assert stages["images"] < 0.001  # no pool call

