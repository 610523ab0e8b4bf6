"""CacheAffinityRouter: Ray Serve's custom request-router API over ``routing.affinity``.

Serve runs one router per DeploymentHandle (here: in each OpenAIIngress replica, for the
PixtralServer and ImagePool handles). Besides choosing replicas it tells this process's
registry (``replica_set.shared()``) which replicas are routable (Serve pushes every change to it) and where
each request went, so the ingress knows both without asking the controller.

The ingress puts a ``RoutingTag`` in the handle's ``session_id`` (the slot Serve keeps for
stickiness, so ``PixtralServer.generate`` keeps its signature): the request's id, its
affinity key ("" routes by load alone) and the replicas that already refused it.
Set on the deployments through ``request_router_config`` (``app.py``). Serve pickles this
module by value into every handle's process, so the registry is looked up at each call
(``replica_set.shared()``), never bound to a name here: a copy would be a registry that the
ingress never reads.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serve_app.compat.ray_serve import back_off_between_rounds, probe_queue_lens
from serve_app.routing import replica_set
from serve_app.routing.affinity import route

_SEPARATOR = "|"

PICK_ONLY = "pick-only"
"""``choose_replica``'s argument from a caller that only picks (``ReplicaPicker``: HAProxy sends the
request): no request of its goes through this router, so the queue lengths it holds come from probes
alone, and a keyed request probes the replicas it does not know (Serve keeps a probe for 10 s)."""


@dataclass(frozen=True)
class RoutingTag:
    """What the router needs to know of one request, carried in Serve's ``session_id``."""

    request_id: str = ""
    key: str = ""
    avoid: frozenset[str] = frozenset()

    def encode(self) -> str:
        return _SEPARATOR.join((self.request_id, self.key, ",".join(sorted(self.avoid))))

    @classmethod
    def decode(cls, session_id: str | None) -> "RoutingTag":
        parts = (session_id or "").split(_SEPARATOR)
        if len(parts) != 3:
            return cls()
        request_id, key, avoid = parts
        return cls(request_id, key, frozenset(filter(None, avoid.split(","))))


class CacheAffinityRouter(FIFOMixin, RequestRouter):
    """Rendezvous-hash on the request's affinity key; power of two choices when busy or keyless.

    ``FIFOMixin`` (as Serve's own power-of-two router has): the calls one HTTP request makes
    (its images' pool calls) share Serve's internal request id, and without the mixin a
    replica found for one of them is matched by that id only, so the others were never sent."""

    def initialize_state(self, deployment: str = "", busy_at: int = 64, seed: int | None = None) -> None:
        """``deployment``: the name under which this router reports its replicas (``REPLICA_SETS``);
        ``busy_at``: ongoing requests at which the preferred replica may hand a request on."""
        if busy_at < 1:
            raise ValueError(f"busy_at must be >= 1, got {busy_at}")
        self._deployment = deployment
        self._busy_at = busy_at
        self._rng = random.Random(seed)

    def _publish(self) -> None:
        if self._deployment:
            ids = frozenset(replica_id.unique_id for replica_id in self.curr_replicas)
            replica_set.shared().publish(self.app_name, self._deployment, ids)

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._publish()

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._publish()

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        tag = RoutingTag.decode(pending_request.metadata.session_id)
        if tag.request_id:
            replica_set.shared().routed(tag.request_id, replica_id.unique_id)

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        tag = RoutingTag.decode(pending_request.metadata.session_id if pending_request is not None else "")
        # Replicas that already refused this request (admission) are tried last, not never:
        # the ingress decides when to stop.
        fresh = [r for r in candidate_replicas if r.replica_id.unique_id not in tag.avoid]
        refused = [r for r in candidate_replicas if r.replica_id.unique_id in tag.avoid]
        if pending_request is not None:
            # Every rank is returned at once: back off between rounds instead of spinning.
            back_off_between_rounds(pending_request)
        if not fresh:
            return [refused]
        if not tag.key:  # no key (load only, or Serve's own calls): power of two choices
            return [self._rng.sample(fresh, min(2, len(fresh))), *([refused] if refused else [])]
        by_id = {replica.replica_id.unique_id: replica for replica in fresh}
        cache = self.replica_queue_len_cache
        lens = {name: cache.get(replica.replica_id) for name, replica in by_id.items()}
        unknown = [by_id[name] for name, length in lens.items() if length is None]
        pick_only = pending_request is not None and PICK_ONLY in pending_request.args
        if unknown and pick_only:
            await self._probe_into(lens, unknown)
            unknown = []
        decision = route(tag.key, lens, busy_at=self._busy_at, rng=self._rng)
        preferred_len = lens[decision.preferred]
        if not decision.fell_back and preferred_len is not None and preferred_len >= self._busy_at and unknown:
            # The preferred replica is busy and some others have no fresh queue length: ask
            # them (one round, Serve's deadline), since an idle replica is what falls out of
            # the cache first.
            await self._probe_into(lens, unknown)
            decision = route(tag.key, lens, busy_at=self._busy_at, rng=self._rng)
        return [[by_id[name]] for name in decision.order] + ([refused] if refused else [])

    async def _probe_into(self, lens: dict[str, int | None], replicas: list[RunningReplica]) -> None:
        """Queue lengths of ``replicas`` asked of them (one round, Serve's deadline) into ``lens``."""
        for replica, length in await probe_queue_lens(self, replicas):
            lens[replica.replica_id.unique_id] = length
