"""What this process's request routers know: each deployment's routable replicas, and where
each request went (no Ray; the routers in ``request_router`` feed it).

Ray Serve's controller pushes every change of a deployment's RUNNING replicas to each
handle's router (long poll), because the router needs them to route. A replica that is
draining (STOPPING on a scale-down or a redeploy) is no longer routable and leaves the
set at once, though it still finishes the requests it holds. So "is any engine replica
able to take a request" costs the controller nothing beyond what routing already costs,
however many ingress replicas run, and it is never staler than routing itself: a request
refused because the set is empty is one the router could not have placed either.

The routers run on Serve's router event loop (a thread of its own in throughput mode), the
ingress on the replica's loop: ``ReplicaSets`` is thread-safe and wakes waiters on their
own loops.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Placement:
    """One request's routing, as its router reported it: the replicas it was sent to, in order."""

    replicas: list[str] = field(default_factory=list)
    _routed: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def routed(self) -> bool:
        return bool(self.replicas)

    @property
    def last(self) -> str | None:
        return self.replicas[-1] if self.replicas else None


@dataclass
class _Deployment:
    replicas: frozenset[str] | None = None  # None: no router has reported yet
    empty_since: float | None = None  # monotonic time the set last became empty
    last_outage_s: float | None = None  # how long the previous empty spell lasted
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)


class ReplicaSets:
    """Routable replicas per (app, deployment), and per-request placements, for one process."""

    def __init__(self, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self._deployments: dict[tuple[str, str], _Deployment] = {}
        self._placements: dict[str, Placement] = {}

    # --- fed by the routers -------------------------------------------------------------
    def publish(self, app: str, deployment: str, replica_ids: frozenset[str]) -> None:
        """The router's replica set changed (Serve's push, or a replica found dead)."""
        with self._lock:
            state = self._deployments.setdefault((app, deployment), _Deployment())
            now = self._clock()
            was_empty = state.replicas is not None and not state.replicas
            state.replicas = frozenset(replica_ids)
            if not replica_ids and not was_empty:
                state.empty_since = now
            elif replica_ids and was_empty and state.empty_since is not None:
                state.last_outage_s = now - state.empty_since
                state.empty_since = None
            waiters = list(state.waiters) if not replica_ids else []
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    def routed(self, request_id: str, replica_id: str) -> None:
        """A router sent request ``request_id`` to ``replica_id``."""
        placement = self._placements.get(request_id)
        if placement is None:
            return
        placement.replicas.append(replica_id)
        if placement._loop is not None and placement._routed is not None:
            placement._loop.call_soon_threadsafe(placement._routed.set)

    # --- read by the ingress ------------------------------------------------------------
    def replicas(self, app: str, deployment: str) -> frozenset[str] | None:
        """The routable replicas; None while no router of this process has reported."""
        state = self._deployments.get((app, deployment))
        return None if state is None else state.replicas

    def outage(self, app: str, deployment: str) -> tuple[float, float | None]:
        """(seconds the set has been empty, how long the previous empty spell lasted)."""
        with self._lock:
            state = self._deployments.get((app, deployment))
            if state is None or state.empty_since is None:
                return 0.0, None if state is None else state.last_outage_s
            return self._clock() - state.empty_since, state.last_outage_s

    async def wait_until_empty(self, app: str, deployment: str) -> None:
        """Returns once the deployment has no routable replica (at once if it has none now)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            state = self._deployments.setdefault((app, deployment), _Deployment())
            if state.replicas is not None and not state.replicas:
                return
            state.waiters.append((loop, event))
        try:
            await event.wait()
        finally:
            with self._lock:
                state.waiters.remove((loop, event))

    def track(self, request_id: str) -> Placement:
        """Start recording where ``request_id`` is routed (``forget`` when it is answered)."""
        placement = Placement(_routed=asyncio.Event(), _loop=asyncio.get_running_loop())
        self._placements[request_id] = placement
        return placement

    def forget(self, request_id: str) -> None:
        self._placements.pop(request_id, None)


# The one registry of this process: Serve builds the routers itself, so they cannot be handed one.
REPLICA_SETS = ReplicaSets()


def shared() -> ReplicaSets:
    """This process's registry, found through ``sys.modules`` at each call.

    Serve ships the router class by value (cloudpickle of its module) to every handle's
    process and builds it there itself. A ``REPLICA_SETS`` bound to a name at import, in the
    router or in the ingress, was seen in the e2e cluster to be a different object from the
    one the other side used (the routers reported, the ingress never heard); the module
    ``sys.modules`` holds when a call runs is the one both sides find.
    """
    return importlib.import_module(_THIS_MODULE).REPLICA_SETS


_THIS_MODULE = "serve_app.routing.replica_set"
