"""OpenAI chat-completions wire models: what we accept, and the chunks we send back."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.api.errors import as_service_error
from serve_app.errors import InvalidRequestError


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _valid_unicode(value: str) -> str:
    """JSON may carry lone surrogate escapes (``"\\ud800"``); no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it has a lone surrogate escape)") from None
    return value


UnicodeText = Annotated[str, AfterValidator(_valid_unicode)]


class TextPart(_Wire):
    type: Literal["text"]
    text: UnicodeText


class ImageURL(_Wire):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(_Wire):
    type: Literal["image_url"]
    image_url: ImageURL

    @model_validator(mode="before")
    @classmethod
    def _url_as_string(cls, data: Any) -> Any:
        # Some clients send "image_url": "https://..." instead of {"url": ...}.
        if isinstance(data, dict) and isinstance(data.get("image_url"), str):
            return {**data, "image_url": {"url": data["image_url"]}}
        return data


ContentPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _unicode_content(cls, value: Any) -> Any:
        return _valid_unicode(value) if isinstance(value, str) else value


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatCompletionRequest(_Wire):
    """The subset of OpenAI's request that Pixtral serving supports; anything else is a 400."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[UnicodeText] = Field(default_factory=list)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, description="A 64-bit integer, as OpenAI's.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS (benchmarks).")
    return_token_ids: bool = Field(
        False, description="vLLM extension: add prompt_token_ids to the response and token_ids to the choice."
    )

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if isinstance(stops, list) and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """(the output cap the client asked for, the field it came in)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def image_urls(self) -> list[tuple[str, str]]:
        """(url, param path) of every image part, in message order."""
        found = []
        for i, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if isinstance(part, ImageURLPart):
                        found.append((part.image_url.url, f"messages[{i}].content[{j}].image_url.url"))
        return found

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as plain dicts with image URLs dropped (the pool already has them)."""
        plain = []
        for message in self.messages:
            if isinstance(message.content, str):
                content: Any = message.content
            else:
                content = [
                    {"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image_url"}
                    for part in message.content
                ]
            plain.append({"role": message.role, "content": content})
        return plain


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """JSON bytes to a validated request, or InvalidRequestError naming what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError as exc:  # bad JSON or UTF-8, and integers past Python's 4300-digit limit
        raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise InvalidRequestError("request body is nested too deeply", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise as_service_error(exc) from exc


async def parse_chat_request_off_loop(body: bytes, *, off_loop_above: int) -> ChatCompletionRequest:
    """``parse_chat_request``, in a worker thread for bodies over ``off_loop_above`` bytes.

    Parsing and validating megabytes of JSON takes long enough to stall every
    other request on the ingress event loop; small bodies are cheaper inline.
    """
    if len(body) > off_loop_above:
        return await asyncio.to_thread(parse_chat_request, body)
    return parse_chat_request(body)


def completion_body(
    *,
    request_id: str,
    model: str,
    text: str,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_body(prompt_tokens, completion_tokens, cached_tokens),
    }


def chunk_body(
    *,
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    usage: dict[str, int] | None = None,
    with_choice: bool = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        if with_choice
        else [],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt_tokens_details.cached_tokens`` when the engine reported it."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage
