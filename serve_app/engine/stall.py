"""Hung-engine detection: work is pending and nothing has moved for ``llm.engine_stall_s``.

vLLM reports an engine *dead* when its core process exits; an engine core that is alive but
stuck (a hung CUDA or NCCL call, a stopped process) is never reported, and its requests would
wait for the client's timeout while the admission ledger never drains. ``StallWatch`` is the
replica's view of progress: every chunk a request receives, and every engine step the engine
reports (``Engine.last_step_at``), counts. While the engine holds unfinished requests and none
of that happened for ``stall_s`` seconds, ``check`` names the stall; from then on every guarded
stream ends with ``EngineOverloadedError`` (503 + Retry-After) instead of waiting.

Pure asyncio bookkeeping, no engine and no Ray: the replica wraps each request's stream in
``guard`` and its watchdog calls ``check`` every period.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable, TypeVar

from serve_app.engine.stream import close_stream
from serve_app.errors import EngineOverloadedError

T = TypeVar("T")


class StallWatch:
    """When the engine last showed progress, and the end of every stream once it stalls."""

    def __init__(self, stall_s: float | None, clock: Callable[[], float] = time.monotonic):
        self._stall_s = stall_s
        self._clock = clock
        self._last_progress = clock()
        self._stalled: asyncio.Future[str] | None = None
        self.reason: str | None = None

    def progressed(self) -> None:
        self._last_progress = self._clock()

    def check(self, pending_requests: int, engine_step_at: float | None) -> str | None:
        """The stall's description once no progress was seen for ``stall_s`` with work pending.

        Idle time is not a stall: while nothing is pending the clock restarts, so a request that
        arrives after an hour of silence gets the full ``stall_s``.
        """
        if self.reason is not None:
            return self.reason
        now = self._clock()
        if pending_requests <= 0 or self._stall_s is None:
            self._last_progress = now
            return None
        last = self._last_progress if engine_step_at is None else max(self._last_progress, engine_step_at)
        if now - last < self._stall_s:
            return None
        self.halt(f"no progress for {now - last:.1f} s with {pending_requests} requests pending")
        return self.reason

    def halt(self, reason: str) -> None:
        """End every guarded stream now and later ones at once (the engine is stalled or dead)."""
        if self.reason is None:
            self.reason = reason
        if self._stalled is not None and not self._stalled.done():
            self._stalled.set_result(self.reason)

    async def guard(self, chunks: AsyncIterator[T]) -> AsyncIterator[T]:
        """``chunks``, each one counted as progress; ends with 503 the moment a stall is found."""
        if self._stalled is None:
            self._stalled = asyncio.get_running_loop().create_future()
            if self.reason is not None:
                self._stalled.set_result(self.reason)
        source = aiter(chunks)
        read: asyncio.Future[T] | None = None
        try:
            while True:
                if self.reason is None:
                    read = asyncio.ensure_future(anext(source))
                    await asyncio.wait({read, self._stalled}, return_when=asyncio.FIRST_COMPLETED)
                if read is None or not read.done():
                    raise EngineOverloadedError(f"the engine is unavailable ({self.reason}); retry the request")
                task, read = read, None
                try:
                    chunk = task.result()
                except StopAsyncIteration:
                    return
                self.progressed()
                yield chunk
        finally:
            # Closing aborts the engine request; a stuck engine may never confirm it.
            await close_stream(source, read, None if self.reason is None else 1.0)
