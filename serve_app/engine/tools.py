"""Mistral's function-calling format: tool-call ids, the grammar of a forced call, and the
parsing of the model's ``[TOOL_CALLS][{"name": ..., "arguments": {...}}]`` output.

mistral_common requires tool-call ids of exactly 9 letters and digits; OpenAI clients send
ids of any shape (``call_...``). ``ToolCallIds`` maps a client's ids to Mistral ids for the
prompt and the model's ids back to the client's, one request at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
import string
from typing import TYPE_CHECKING, Any, AsyncIterator

if TYPE_CHECKING:
    from serve_app.engine.protocol import GenerationChunk

MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
_ALPHABET = string.ascii_letters + string.digits
TOOL_CALLS_MARKER = "[TOOL_CALLS]"


def new_call_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(9))


class ToolCallIds:
    """Client tool-call id <-> the 9-character id the Mistral prompt carries."""

    def __init__(self) -> None:
        self._to_mistral: dict[str, str] = {}
        self._to_client: dict[str, str] = {}

    def to_mistral(self, client_id: str) -> str:
        if client_id in self._to_mistral:
            return self._to_mistral[client_id]
        if MISTRAL_ID.match(client_id) and client_id not in self._to_client:
            mistral_id = client_id
        else:
            digest = int.from_bytes(hashlib.sha256(client_id.encode()).digest(), "big")
            mistral_id = ""
            while len(mistral_id) < 9 or mistral_id in self._to_client:
                digest, rest = divmod(digest, len(_ALPHABET))
                mistral_id = (mistral_id + _ALPHABET[rest])[-9:]
                if digest == 0:  # collisions exhausted the hash: fall back to a fresh id
                    mistral_id = new_call_id()
        self._to_mistral[client_id] = mistral_id
        self._to_client[mistral_id] = client_id
        return mistral_id

    def to_client(self, mistral_id: Any) -> str:
        """The client's own id for an id it sent; a fresh Mistral id for anything else."""
        if isinstance(mistral_id, str) and mistral_id in self._to_client:
            return self._to_client[mistral_id]
        if isinstance(mistral_id, str) and MISTRAL_ID.match(mistral_id):
            return mistral_id
        return new_call_id()


def forced_call_schema(tools: list[dict[str, Any]], named: str | None, parallel: bool) -> dict[str, Any]:
    """The JSON schema of what follows ``[TOOL_CALLS]`` when a call is required: a list of
    ``{"name": <one of the tools>, "arguments": <its parameters>}``, at least one (one only when
    ``parallel`` is false)."""
    offered = [tool for tool in tools if named is None or tool["name"] == named]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in offered
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
    }
    if not parallel:
        schema["maxItems"] = 1
    return schema


def parse_tool_calls(text: str, ids: ToolCallIds) -> list[dict[str, Any]] | None:
    """``[{"name", "arguments", "id"?}, ...]`` (the text after ``[TOOL_CALLS]``) as
    ``[{"id", "name", "arguments": <JSON string>}]``; None when it is not such a list."""
    try:
        calls = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        return None
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", {})
        parsed.append(
            {
                "id": ids.to_client(call.get("id")),
                "name": call["name"],
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
            }
        )
    return parsed


class ToolCallText:
    """One choice's text split into content and tool calls as it streams.

    ``forced``: the whole output is the call list (the prompt ends in ``[TOOL_CALLS]``).
    Otherwise text passes through until the model writes ``[TOOL_CALLS]``; what follows is
    held and parsed at the end. A list that does not parse goes out as content.
    """

    def __init__(self, ids: ToolCallIds, *, forced: bool):
        self._ids = ids
        self._held: list[str] | None = [] if forced else None
        self._forced = forced

    def feed(self, text: str) -> str:
        """The content to send now out of ``text``."""
        if self._held is not None:
            self._held.append(text)
            return ""
        before, marker, after = text.partition(TOOL_CALLS_MARKER)
        if marker:
            self._held = [after]
        return before

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """(content still to send, the parsed calls or None) once the choice has ended."""
        if self._held is None:
            return "", None
        held = "".join(self._held).replace(TOOL_CALLS_MARKER, "")
        calls = parse_tool_calls(held, self._ids)
        if calls is None:
            return held if self._forced else TOOL_CALLS_MARKER + held, None
        return "", calls


async def with_tool_calls(
    chunks: AsyncIterator[GenerationChunk], ids: ToolCallIds, *, forced: bool
) -> AsyncIterator[GenerationChunk]:
    """``chunks`` with each choice's tool calls taken out of its text and set on its last chunk
    (``finish_reason`` "tool_calls")."""
    splits: dict[int, ToolCallText] = {}
    async with contextlib.aclosing(chunks):  # closing this closes the engine stream (abort)
        async for chunk in chunks:
            split = splits.setdefault(chunk.index, ToolCallText(ids, forced=forced))
            text = split.feed(chunk.text)
            calls = None
            if chunk.finish_reason is not None:
                rest, calls = split.finish()
                text += rest
            if calls:
                chunk = dataclasses.replace(chunk, text=text, tool_calls=calls, finish_reason="tool_calls")
            elif text != chunk.text:
                chunk = dataclasses.replace(chunk, text=text)
            yield chunk
