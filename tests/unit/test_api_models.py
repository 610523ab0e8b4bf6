"""OpenAI wire models and error bodies (no Ray)."""

from __future__ import annotations

import json
import json
import pickle

import pytest
from pydantic import ValidationError

from serve_app.api.errors import as_service_error, error_response
from serve_app.api.models import ChatCompletionRequest, parse_chat_request
from serve_app import errors


def request(**fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_minimal_request_defaults():
    chat = ChatCompletionRequest.model_validate(request())
    assert chat.stop == [] and chat.temperature == 1.0 and not chat.stream


def test_image_parts_are_listed_with_their_param_path():
    chat = ChatCompletionRequest.model_validate(
        request(
            messages=[
                {"role": "system", "content": "s"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "https://x/1.jpg"}},
                        {"type": "image_url", "image_url": "https://x/2.jpg"},
                    ],
                },
            ]
        )
    )
    assert chat.image_urls() == [
        ("https://x/1.jpg", "messages[1].content[1].image_url.url"),
        ("https://x/2.jpg", "messages[1].content[2].image_url.url"),
    ]
    assert chat.plain_messages()[1]["content"] == [
        {"type": "text", "text": "a"},
        {"type": "image_url"},
        {"type": "image_url"},
    ]


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"frobnicate": True}, "frobnicate"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),  # no tool_call_id
        ({"seed": 2**70}, "seed"),  # reached the engine as an OverflowError (500) before
        ({"seed": -(2**63) - 1}, "seed"),
    ],
)
def test_invalid_requests_map_to_400_naming_the_field(fields, param):
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(request(**fields))
    error = as_service_error(info.value)
    assert error.status_code == 400
    assert error.param == param


def test_stop_string_becomes_a_list():
    assert ChatCompletionRequest.model_validate(request(stop="END")).stop == ["END"]


@pytest.mark.parametrize(
    "cls, status",
    [
        (errors.ImageNotFoundError, 400),
        (errors.ImageForbiddenError, 403),
        (errors.ImageTooLargeError, 413),
        (errors.ImageFetchTimeoutError, 504),
        (errors.UnknownModelError, 400),
        (errors.AuthenticationError, 401),
        (errors.EngineOverloadedError, 503),
    ],
)
def test_typed_errors_keep_status_param_and_code_through_pickle(cls, status):
    original = cls("boom", param="messages[0].content[1].image_url.url")
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert (copy.message, copy.param, copy.code) == (original.message, original.param, original.code)
    response = error_response(copy)
    assert response.status_code == status
    assert b'"param":"messages[0].content[1].image_url.url"' in response.body


def test_unexpected_exceptions_are_logged_500s_naming_the_request_without_details(caplog):
    with caplog.at_level("ERROR", logger="serve_app.api.errors"):
        error = as_service_error(RuntimeError("secret internal detail"), "chatcmpl-123")
    assert error.status_code == 500
    assert "secret" not in error.message and "chatcmpl-123" in error.message
    assert "chatcmpl-123" in caplog.text and "secret internal detail" in caplog.text

def test_ray_wrapped_errors_are_unwrapped():
    class FakeRayTaskError(Exception):
        def __init__(self, cause):
            self.cause = cause

    inner = errors.ImageDecodeError("bad")
    assert as_service_error(FakeRayTaskError(inner)) is inner


@pytest.mark.parametrize(
    "error, status, retry_after",
    [
        (errors.ServerOverloadedError("busy"), 429, "1"),
        (errors.ServerOverloadedError("busy", retry_after_s=2.2), 429, "3"),
        (errors.EngineOverloadedError("restarting"), 503, "5"),
        (errors.ImageDecodeError("bad"), 400, None),
    ],
)
def test_429_and_503_carry_retry_after_through_pickle(error, status, retry_after):
    response = error_response(pickle.loads(pickle.dumps(error)))
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after


def test_serve_back_pressure_becomes_one_openai_429():
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    refused = BackPressureError(num_queued_requests=8, max_queued_requests=8, status_code=429, retry_after_s=4)
    for raised in (refused, pickle.loads(pickle.dumps(refused))):
        response = error_response(raised)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "4"
        assert json.loads(response.body)["error"]["code"] == "server_overloaded"
    wrapped = RayTaskError("generate", "traceback", refused)
    assert as_service_error(wrapped).status_code == 429


def test_a_dead_replica_is_a_503_with_retry_after():
    from ray.exceptions import ActorDiedError

    response = error_response(ActorDiedError())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert json.loads(response.body)["error"]["code"] == "engine_overloaded"


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"messages": [{"role": "user", "content": "Describe \ud800."}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}, "messages[0].content"),
        ({"stop": ["\ud800"]}, "stop[0]"),
    ],
)
def test_lone_surrogates_are_a_400_before_any_tokenizer_sees_them(fields, param):
    body = json.dumps(request(**fields)).encode()  # JSON carries them as \ud800 escapes
    with pytest.raises(errors.InvalidRequestError) as info:
        parse_chat_request(body)
    assert info.value.status_code == 400
    assert info.value.param.startswith(param)
    assert "lone surrogate" in info.value.message


def test_surrogate_pairs_are_ordinary_text():
    chat = parse_chat_request(json.dumps(request(messages=[{"role": "user", "content": "\U000103ff"}])).encode())
    assert chat.messages[0].content == "\U000103ff"
