"""RoutingPolicy: how requests reach the LLM replicas, one object for both ends of it: the
Serve options the builder sets on the deployment (``app.py``) and the affinity key the ingress
gives each request (``deployments/ingress.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from serve_app.routing.affinity import affinity_key
from serve_app.routing.request_router import CacheAffinityRouter

if TYPE_CHECKING:
    from serve_app.config import LLMDeploymentConfig


def router_config(deployment: str, **kwargs: Any) -> dict[str, Any]:
    """Our request router on a deployment (Serve's ``request_router_config``): it also tells the
    ingress which replicas are routable and where each request went (``routing.replica_set``)."""
    return {"request_router_class": CacheAffinityRouter, "request_router_kwargs": {"deployment": deployment, **kwargs}}


@dataclass(frozen=True)
class RoutingPolicy:
    """``llm.routing`` of the config: affinity keys (or none: power of two choices on load alone)
    and the busy bound at which the router hands a keyed request to a less loaded replica."""

    affinity: bool
    prefix_chars: int
    busy_at: int

    @classmethod
    def of(cls, llm: "LLMDeploymentConfig") -> "RoutingPolicy":
        return cls(
            affinity=llm.routing.policy == "affinity",
            prefix_chars=llm.routing.prefix_chars,
            busy_at=llm.busy_ongoing_requests(),
        )

    def router_config(self, deployment: str) -> dict[str, Any]:
        """The LLM deployment's router; keyless requests (pow2) get Serve's power of two choices from it."""
        return router_config(deployment, busy_at=self.busy_at)

    def key(self, messages: Sequence[dict[str, Any]], image_ids: Sequence[str]) -> str:
        """The request's affinity key ("" routes by load alone); see ``affinity.affinity_key``."""
        if not self.affinity:
            return ""
        return affinity_key(messages, image_ids, prefix_chars=self.prefix_chars)
