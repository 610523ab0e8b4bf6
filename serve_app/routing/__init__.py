"""Routing of requests to LLM replicas by cache affinity (pure policy in ``affinity``), the
policy object both ends use (``policy``), Serve's request router (``request_router``) and the
routable replicas it reports (``replica_set``)."""

from serve_app import _lazy_exports

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "affinity": ("RoutingDecision", "affinity_key", "rendezvous_order", "route"),
        "policy": ("RoutingPolicy", "router_config"),
        "replica_set": ("Placement", "ReplicaSets"),
        "request_router": ("CacheAffinityRouter", "RoutingTag"),
    },
)
