"""ReplicaStatus: which engine and pool replicas the ingress can route to, for the ingress.

Read from this process's request routers (``serve_app.routing.replica_set``): Serve's
controller pushes every change of a deployment's routable (RUNNING) replicas to them, so
nothing here asks the controller anything, however many ingress replicas run. It answers:

* ``readiness()`` — /ready: 200 once the engine and the pool each have a routable replica
  (the controller health-checks every engine replica), else 503 saying what is missing;
* ``refuse_while_no_engine()`` — at the door: while no engine replica is routable (the app
  is starting, or its only replica is being replaced or drained) a request gets 503 +
  Retry-After at once instead of waiting in Serve's queue for the minutes an engine takes
  to start. Retry-After is what is left of the last measured outage (or
  ``expected_start_s`` before one was seen), jittered so refused clients do not return together;
* ``first_chunk(stream, placement)`` — a request that has not been handed to any replica
  when the last engine replica goes is withdrawn with the same 503. A request already
  handed to a replica is never withdrawn: a draining replica finishes it, and a replica
  that dies fails it with Serve's own error.

Before the routers have reported, nothing is refused and /ready says so.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from serve_app.deployments import IMAGE_POOL, LLM
from serve_app.errors import EngineOverloadedError
from serve_app.routing import replica_set
from serve_app.routing.replica_set import Placement, ReplicaSets

RETRY_AFTER_JITTER = 0.2  # +-20%


def no_engine_error(message: str, retry_after_s: float) -> EngineOverloadedError:
    return EngineOverloadedError(message, code="engine_unavailable", retry_after_s=retry_after_s)


class ReplicaStatus:
    """Routable engine and pool replicas of one application, as this process's routers know them."""

    def __init__(
        self,
        app_name: str,
        *,
        gate_engine: bool = True,
        engine_here: bool = False,
        expected_start_s: float = 60.0,
        replica_sets: ReplicaSets | None = None,
        rng: random.Random | None = None,
    ):
        self._app_name = app_name
        # The engine runs in this replica (deployments.colocated): it is there while the replica
        # serves, so nothing is gated on it, and this process has no router that reports the LLM
        # deployment's replicas.
        self._engine_here = engine_here
        self._gate_engine = gate_engine and not engine_here
        self._expected_start_s = expected_start_s
        self._given_sets = replica_sets
        self._rng = rng or random.Random()

    @property
    def _sets(self) -> ReplicaSets:
        # This process's registry, looked up at each use as the routers do (replica_set.shared).
        return self._given_sets or replica_set.shared()

    def engine_replicas(self) -> frozenset[str] | None:
        """Routable engine replicas; None until the router has reported."""
        return self._sets.replicas(self._app_name, LLM)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        for name in (IMAGE_POOL,) if self._engine_here else (LLM, IMAGE_POOL):
            replicas = self._sets.replicas(self._app_name, name)
            if replicas is None:
                return 503, {"status": "not_ready", "reason": f"no replica list for {name} from Serve yet"}
            if not replicas:
                return 503, {"status": "not_ready", "reason": f"no running {name} replica"}
        return 200, {"status": "ready"}

    def _no_engine(self) -> bool:
        return self._gate_engine and self.engine_replicas() == frozenset()

    def retry_after_s(self) -> float:
        """Seconds until an engine is likely back: the last outage's length (or the expected
        start) less the time this one has lasted, at least 1 s, jittered."""
        elapsed, last = self._sets.outage(self._app_name, LLM)
        expected = last if last is not None else self._expected_start_s
        remaining = max(1.0, expected - elapsed)
        return round(remaining * self._rng.uniform(1 - RETRY_AFTER_JITTER, 1 + RETRY_AFTER_JITTER), 1)

    def refuse_while_no_engine(self) -> None:
        """Raises 503 engine_unavailable (with Retry-After) while no engine replica is routable."""
        if self._no_engine():
            raise no_engine_error(
                "no engine replica is running (starting, being replaced or draining); retry the request",
                self.retry_after_s(),
            )

    async def first_chunk(self, stream: Any, placement: Placement) -> Any:
        """``stream``'s first item; if the last engine replica goes before the request was
        handed to one, the request is cancelled and 503 engine_unavailable raised instead."""
        if not self._gate_engine:
            return await stream.__anext__()
        first = asyncio.ensure_future(stream.__anext__())
        try:
            while not first.done():
                gone = asyncio.ensure_future(self._sets.wait_until_empty(self._app_name, LLM))
                try:
                    await asyncio.wait((first, gone), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                if first.done():
                    break
                if not placement.routed:
                    first.cancel()
                    stream.cancel()
                    raise no_engine_error(
                        "the engine replica went away and none is running (being replaced); retry the request",
                        self.retry_after_s(),
                    )
                # Handed to a replica that is draining: it finishes the request.
                await asyncio.wait((first,))
        except BaseException:
            if not first.done():  # the client went away
                first.cancel()
                stream.cancel()
            raise
        return first.result()
