"""OpenAI chat-completion responses from the LLM replica's chunks: one JSON body gathered per
choice, or Server-Sent Events as the chunks come."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

from serve_app.api.errors import sse_error_event

DONE = "data: [DONE]\n\n"


async def completion(first: Any, stream: Any, *, request_id: str, model: str, with_token_ids: bool) -> dict[str, Any]:
    """A chat.completion: ``first`` and the rest of ``stream`` gathered per choice."""
    choices = Choices()
    choices.add(first)
    last = first
    async for chunk in stream:
        choices.add(chunk)
        last = chunk
    body = {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices.bodies(with_token_ids=with_token_ids),
        "usage": usage_body(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
    }
    if with_token_ids:
        body["prompt_token_ids"] = first.prompt_token_ids
    return body


async def sse_events(
    first: Any, stream: Any, *, request_id: str, model: str, choices: int = 1, include_usage: bool = False
) -> AsyncIterator[str]:
    """chat.completion.chunk events: each choice's role, then ``first`` and the rest of
    ``stream``; a failure on the way is one error event. Ends with ``[DONE]``."""
    created = int(time.time())

    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body)}\n\n"

    for index in range(choices):
        yield event(
            chunk_body(
                request_id=request_id, model=model, created=created,
                delta={"role": "assistant", "content": ""}, finish_reason=None, index=index,
            )
        )
    last = first
    try:
        chunk = first
        while True:
            for delta, finish_reason, logprobs in chunk_deltas(chunk):
                yield event(
                    chunk_body(
                        request_id=request_id, model=model, created=created, delta=delta,
                        finish_reason=finish_reason, index=chunk.index, logprobs=logprobs,
                    )
                )
            last = chunk
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
    except Exception as exc:
        yield sse_error_event(exc, request_id)
        yield DONE
        return
    if include_usage:
        yield event(
            chunk_body(
                request_id=request_id, model=model, created=created, delta={}, finish_reason=None,
                usage=usage_body(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
                with_choice=False,
            )
        )
    yield DONE


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parsed calls ``{id, name, arguments}`` in OpenAI's message shape."""
    return [
        {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        for call in calls
    ]


def choice_body(
    index: int,
    text: str,
    tool_calls: list[dict[str, Any]] | None,
    finish_reason: str | None,
    logprobs: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = openai_tool_calls(tool_calls)
    return {
        "index": index,
        "message": message,
        "finish_reason": finish_reason,
        "logprobs": None if logprobs is None else {"content": logprobs},
    }


class Choices:
    """A generation's chunks gathered per choice, for a non-streamed answer."""

    def __init__(self) -> None:
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Any) -> None:
        entry = self._choices.setdefault(
            chunk.index, {"text": [], "token_ids": [], "logprobs": None, "tool_calls": None, "finish_reason": None}
        )
        entry["text"].append(chunk.text)
        entry["token_ids"].extend(chunk.token_ids)
        if chunk.logprobs is not None:
            entry["logprobs"] = (entry["logprobs"] or []) + chunk.logprobs
        if chunk.tool_calls:
            entry["tool_calls"] = chunk.tool_calls
        if chunk.finish_reason is not None:
            entry["finish_reason"] = chunk.finish_reason

    def bodies(self, *, with_token_ids: bool = False) -> list[dict[str, Any]]:
        bodies = []
        for index in sorted(self._choices):
            entry = self._choices[index]
            body = choice_body(
                index, "".join(entry["text"]), entry["tool_calls"], entry["finish_reason"], entry["logprobs"]
            )
            if with_token_ids:
                body["token_ids"] = entry["token_ids"]
            bodies.append(body)
        return bodies


def chunk_deltas(chunk: Any) -> list[tuple[dict[str, Any], str | None, dict[str, Any] | None]]:
    """The (delta, finish_reason, logprobs) events one chunk becomes when streamed: its text,
    then each tool call as OpenAI's deltas (id and name first, then the arguments)."""
    events: list[tuple[dict[str, Any], str | None, dict[str, Any] | None]] = []
    logprobs = None if chunk.logprobs is None else {"content": chunk.logprobs}
    if chunk.text or logprobs:
        events.append(({"content": chunk.text}, None, logprobs))
    for i, call in enumerate(chunk.tool_calls or ()):
        head = {"index": i, "id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": ""}}
        events.append(({"tool_calls": [head]}, None, None))
        events.append(({"tool_calls": [{"index": i, "function": {"arguments": call["arguments"]}}]}, None, None))
    if chunk.finish_reason is not None:
        events.append(({}, chunk.finish_reason, None))
    return events


def chunk_body(
    *,
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    usage: dict[str, int] | None = None,
    with_choice: bool = True,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}]
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
