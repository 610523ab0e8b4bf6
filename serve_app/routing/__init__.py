"""Routing of requests to LLM replicas by cache affinity (pure policy in ``affinity``), the
policy object both ends use (``policy``), Serve's request router (``request_router``), the
routable replicas it reports (``replica_set``) and HAProxy's picker for replicas that serve the
API themselves (``replica_picker``)."""

from serve_app import _lazy_exports

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "affinity": ("RoutingDecision", "affinity_key", "body_affinity_key", "rendezvous_order", "route"),
        "policy": ("RoutingPolicy", "router_config"),
        "replica_picker": ("ReplicaPicker", "picker_api"),
        "replica_set": ("Placement", "ReplicaSets"),
        "request_router": ("CacheAffinityRouter", "RoutingTag"),
    },
)
