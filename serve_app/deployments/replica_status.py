"""ReplicaStatus: what Serve's controller says about the application's replicas, for the ingress.

Each ingress replica looks up Serve's status (``serve.status()``) once a second in the
background, on a thread of its own, and answers three questions from the latest lookup:

* ``readiness()`` — /ready: 200 once the engine and the pool each have a RUNNING replica
  (the controller health-checks every engine replica), else 503 saying what is missing;
* ``refuse_while_no_engine()`` — at the door: while no engine replica is running (the app
  is starting, or its only replica is being replaced) a request gets 503 + Retry-After at
  once instead of waiting in Serve's queue for the minutes an engine takes to start;
* ``first_chunk(stream)`` — a request already waiting for the engine when the last engine
  replica goes away is withdrawn with the same 503 instead of waiting out the restart.

A refusal always rests on a lookup at most ``REFUSAL_STATUS_AGE_S`` old (one more is made
first), and when the controller does not answer, requests go through as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ray import serve

from serve_app.errors import EngineOverloadedError

logger = logging.getLogger(__name__)

ENGINE = "PixtralServer"
POOL = "ImagePool"
STATUS_PERIOD_S = 1.0
REFUSAL_STATUS_AGE_S = 0.2
# One thread of its own: a controller that stops answering holds this thread, not the
# default executor that big request bodies are parsed on.
_STATUS_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-status")


async def running_replicas(
    app_name: str, timeout_s: float, status: Callable[[], Any] = serve.status
) -> dict[str, int] | None:
    """RUNNING replicas of each of the application's deployments, as Serve's controller sees
    them; None when its status does not answer within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            current = await loop.run_in_executor(_STATUS_THREAD, status)
    except TimeoutError:
        return None
    application = current.applications.get(app_name)
    if application is None:
        return {}
    return {name: d.replica_states.get("RUNNING", 0) for name, d in application.deployments.items()}


def readiness_of(running: dict[str, int] | None, timeout_s: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /ready for one lookup's answer (None: it did not answer in time)."""
    if running is None:
        return 503, {"status": "not_ready", "reason": f"Serve's status did not answer within {timeout_s} s"}
    for name in (ENGINE, POOL):
        if running.get(name, 0) < 1:
            return 503, {"status": "not_ready", "reason": f"no running {name} replica"}
    return 200, {"status": "ready"}


def _no_engine_error(message: str) -> EngineOverloadedError:
    return EngineOverloadedError(message, code="engine_unavailable")


class ReplicaStatus:
    """The latest lookup of Serve's status for one application, refreshed in the background."""

    def __init__(
        self,
        app_name: str,
        *,
        timeout_s: float,
        gate_engine: bool = True,
        status: Callable[[], Any] = serve.status,
        period_s: float = STATUS_PERIOD_S,
    ):
        self._app_name = app_name
        self._timeout_s = timeout_s
        self._gate_engine = gate_engine
        self._status = status
        self._period_s = period_s
        self._running: dict[str, int] | None = None
        self._running_at = -math.inf
        self._lookup: asyncio.Future | None = None  # the lookup in progress, shared by its callers
        self._engine_gone = asyncio.Event()  # set while the latest lookup shows no running engine
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        """One lookup now (so /ready knows from the first request), then one per period."""
        await self.refresh()
        self._watch = asyncio.create_task(self._watch_forever())

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            await self.refresh()

    async def refresh(self) -> None:
        """One lookup of Serve's status; callers arriving meanwhile wait for the same one."""
        if self._lookup is None or self._lookup.done():
            self._lookup = asyncio.ensure_future(self._look_up())
        await asyncio.shield(self._lookup)

    async def _look_up(self) -> None:
        try:
            running = await running_replicas(self._app_name, self._timeout_s, self._status)
        except Exception:  # noqa: BLE001 - a controller hiccup must not end the watch
            logger.warning("Serve's status lookup failed", exc_info=True)
            running = None
        if running is None:
            return
        self._running, self._running_at = running, time.monotonic()
        if running.get(ENGINE, 0) < 1:
            self._engine_gone.set()
        else:
            self._engine_gone.clear()

    def latest(self) -> dict[str, int] | None:
        """RUNNING replicas per deployment from the latest lookup; None when none answered recently."""
        if time.monotonic() - self._running_at > self._timeout_s + self._period_s:
            return None
        return self._running

    def readiness(self) -> tuple[int, dict[str, Any]]:
        return readiness_of(self.latest(), self._timeout_s)

    def _no_engine(self) -> bool:
        running = self.latest()
        return self._gate_engine and running is not None and running.get(ENGINE, 0) < 1

    async def refuse_while_no_engine(self) -> None:
        """Raises 503 engine_unavailable (with Retry-After) while no engine replica is running."""
        if not self._no_engine():
            return
        if time.monotonic() - self._running_at > REFUSAL_STATUS_AGE_S:
            await self.refresh()
        if self._no_engine():
            raise _no_engine_error("no engine replica is running (starting or being replaced); retry the request")

    async def first_chunk(self, stream: Any) -> Any:
        """``stream``'s first item; if a lookup meanwhile finds no engine replica running, the
        request is cancelled and 503 engine_unavailable raised instead."""
        if not self._gate_engine:
            return await stream.__anext__()
        first = asyncio.ensure_future(stream.__anext__())
        gone = asyncio.ensure_future(self._engine_gone.wait())
        withdrawn = False
        try:
            await asyncio.wait((first, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not first.done():  # the engine went away first, or the client did
                withdrawn = True
                first.cancel()
                stream.cancel()
        if withdrawn:
            raise _no_engine_error(
                "the engine replica went away and none is running (being replaced); retry the request"
            )
        return first.result()
