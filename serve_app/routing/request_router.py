"""CacheAffinityRouter: Ray Serve's custom request-router API over ``routing.affinity``.

Serve runs one router per DeploymentHandle (here: in each OpenAIIngress replica, for the
PixtralServer handle). The ingress puts the request's affinity key in the handle's
``session_id``, the slot Serve keeps for stickiness, so ``PixtralServer.generate`` keeps
its signature. Set on the LLM deployment through ``request_router_config`` (``app.py``).
"""

from __future__ import annotations

import random
from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serve_app.routing.affinity import route


class CacheAffinityRouter(RequestRouter):
    """Rendezvous-hash on the request's affinity key; power of two choices when busy."""

    def initialize_state(self, busy_at: int = 64, seed: int | None = None) -> None:
        """``busy_at``: ongoing requests at which the preferred replica may hand a request on."""
        if busy_at < 1:
            raise ValueError(f"busy_at must be >= 1, got {busy_at}")
        self._busy_at = busy_at
        self._rng = random.Random(seed)

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # Every rank is returned at once: back off between rounds instead of spinning.
            pending_request.routing_context.should_backoff = True
        key = pending_request.metadata.session_id if pending_request is not None else ""
        if not key:  # a call without a key (health checks): Serve's default policy
            return [self._rng.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        cache = self.replica_queue_len_cache
        lens = {name: cache.get(replica.replica_id) for name, replica in by_id.items()}
        decision = route(key, lens, busy_at=self._busy_at, rng=self._rng)
        preferred_len = lens[decision.preferred]
        unknown = [by_id[name] for name, length in lens.items() if length is None]
        if not decision.fell_back and preferred_len is not None and preferred_len >= self._busy_at and unknown:
            # The preferred replica is busy and some others have no fresh queue length: ask
            # them (one round, Serve's deadline), since an idle replica is what falls out of
            # the cache first.
            for replica, length in await self._probe_queue_lens(unknown, 0):
                lens[replica.replica_id.unique_id] = length
            decision = route(key, lens, busy_at=self._busy_at, rng=self._rng)
        return [[by_id[name]] for name in decision.order]
