"""Coalescing of a generation's chunks: at most one message per interval across Ray.

vLLM yields one delta per engine step (one token per running request), and every delta
the LLM replica yields is one Ray message to the ingress and one SSE event. Under load
that per-token traffic costs CPU in the replica and the ingress; merging the deltas that
arrive within ``interval_s`` keeps the text, the token ids and the counts exact while
sending a fraction of the messages. The first chunk (time to first token) and the last
(finish reason, usage) are never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import AsyncIterator

from serve_app.engine.protocol import GenerationChunk


def merge(held: GenerationChunk, newer: GenerationChunk) -> GenerationChunk:
    """One chunk that says what ``held`` then ``newer`` said (of the same choice)."""
    logprobs = None if held.logprobs is None and newer.logprobs is None else [*(held.logprobs or ()), *(newer.logprobs or ())]
    return dataclasses.replace(
        newer,
        text=held.text + newer.text,
        token_ids=[*held.token_ids, *newer.token_ids],
        logprobs=logprobs,
        prompt_token_ids=held.prompt_token_ids if held.prompt_token_ids is not None else newer.prompt_token_ids,
        cached_tokens=newer.cached_tokens if newer.cached_tokens is not None else held.cached_tokens,
    )


async def coalesce(chunks: AsyncIterator[GenerationChunk], interval_s: float) -> AsyncIterator[GenerationChunk]:
    """Yield ``chunks`` merged so that at most one leaves per ``interval_s`` (0: unchanged).

    Closing or cancelling this generator cancels the pending read and closes ``chunks``,
    so a client that goes away still aborts the engine request."""
    source = aiter(chunks)
    if interval_s <= 0:
        try:
            async for chunk in source:
                yield chunk
        finally:
            await close_stream(source)
        return
    loop = asyncio.get_running_loop()
    read: asyncio.Task | None = None
    held: GenerationChunk | None = None
    sent_at: float | None = None  # None until the first chunk has gone out
    try:
        while True:
            if read is None:
                read = asyncio.ensure_future(anext(source))
            timeout = None if held is None else max(0.0, sent_at + interval_s - loop.time())
            done, _ = await asyncio.wait({read}, timeout=timeout)
            if not done:  # the interval is over: send what was held
                sent_at, out, held = loop.time(), held, None
                yield out
                continue
            task, read = read, None
            try:
                chunk = task.result()
            except StopAsyncIteration:
                break
            except BaseException:
                if held is not None:  # what the client has not seen yet goes out before the error
                    out, held = held, None
                    yield out
                raise
            if held is not None and held.index != chunk.index:  # another choice: what is held goes first
                out, held = held, None
                yield out
            held = chunk if held is None else merge(held, chunk)
            if sent_at is None or held.finish_reason is not None or loop.time() - sent_at >= interval_s:
                sent_at, out, held = loop.time(), held, None
                yield out
        if held is not None:
            yield held
    finally:
        await close_stream(source, read)


async def close_stream(
    source: AsyncIterator, read: asyncio.Future | None = None, bound_s: float | None = None
) -> None:
    """Cancel a pending ``read`` of ``source``, then close it (aborting the engine request), whatever
    state it is in; ``bound_s`` caps the wait for an engine that may never confirm the abort."""
    if read is not None:
        read.cancel()
        with contextlib.suppress(BaseException):
            await read
    closer = getattr(source, "aclose", None)
    if closer is not None:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(closer(), bound_s)
