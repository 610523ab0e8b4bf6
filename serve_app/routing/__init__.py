"""Routing of requests to LLM replicas by cache affinity (pure policy in ``affinity``)."""

from serve_app.routing.affinity import RoutingDecision, affinity_key, rendezvous_order, route

__all__ = ["RoutingDecision", "affinity_key", "rendezvous_order", "route"]
