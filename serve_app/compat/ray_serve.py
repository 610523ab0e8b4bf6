"""Ray Serve internals the app needs, each checked on Ray 2.60.0 (``CHECKED``).

| use | internal | where |
|---|---|---|
| ``serve_http_host`` | ``ray.serve.context._get_global_client().http_config.host`` | ingress: refuse key-less serving off loopback |
| ``probe_queue_lens`` | ``RequestRouter._probe_queue_lens(replicas, backoff_index)`` | routing: ask idle replicas their queue |
| ``back_off_between_rounds`` | ``PendingRequest.routing_context.should_backoff`` (``RequestRoutingContext`` is in ``ray.serve._private``) | routing |
| ``by_reference`` | ``DeploymentHandle.options(_by_reference=True)`` (Serve's own option, underscored) | ingress: the pool's records and the LLM calls that carry them go on Ray's task path, where a reference nested in a value is counted, not through the gRPC transport of throughput mode |
| ``haproxy_enabled`` | ``ray.serve._private.constants.RAY_SERVE_ENABLE_HA_PROXY`` | builder: HAProxy in front, or Serve's Python proxy |
| ``with_ingress_router`` | ``Application._with_ingress_request_router`` (Serve LLM's direct streaming uses it) | builder: HAProxy asks a router deployment which replica of the ingress takes each POST |
| ``chosen_replica`` | ``DeploymentHandle.choose_replica(..., _reserve=False)``, ``ReplicaSelection._replica.replica_id.to_full_id_str()`` (as Serve LLM's ``LLMRouter``) | routing: that router's answer |
| ``end_this_replica`` | ``ray.kill`` of the replica's own actor (public call, but Serve does not offer ending a replica) | LLM replica whose engine died |

Ray's and Serve's error classes for a refused or vanished replica are public
(``ray.serve.exceptions``, ``ray.exceptions``); they are gathered here so that errors are
matched by class, not by name.
"""

from __future__ import annotations

from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

CHECKED = ">=2.60.0,<2.61"

REPLICA_GONE: tuple[type[BaseException], ...] = (ActorDiedError, ActorUnavailableError, DeploymentUnavailableError)
"""A replica died or cannot be reached: the request may be retried elsewhere."""

__all__ = [
    "CHECKED",
    "REPLICA_GONE",
    "BackPressureError",
    "back_off_between_rounds",
    "by_reference",
    "chosen_replica",
    "end_this_replica",
    "haproxy_enabled",
    "probe_queue_lens",
    "serve_http_host",
    "with_ingress_router",
]


def serve_http_host() -> str:
    """The host Serve's HTTP proxies listen on (``http_options.host``); no public API has it."""
    from ray.serve.context import _get_global_client

    return str(_get_global_client().http_config.host)


async def probe_queue_lens(router: Any, replicas: list[Any]) -> list[tuple[Any, int | None]]:
    """(replica, queue length or None) for each replica, asked in one round (Serve's deadline)."""
    return await router._probe_queue_lens(replicas, 0)


def back_off_between_rounds(pending_request: Any) -> None:
    """Tell Serve's routing loop to back off before the next round instead of spinning."""
    pending_request.routing_context.should_backoff = True


def by_reference(handle: Any) -> Any:
    """``handle`` with its calls sent as Ray actor tasks even in Serve's throughput mode (gRPC by
    value): there an ``ObjectRef`` inside an argument or a result is pickled out of band and Ray
    pins its object for the life of the process, a leak per image; on the task path it is
    borrowed and freed when the last holder lets go."""
    return handle.options(_by_reference=True)


def end_this_replica() -> None:
    """End the calling replica's actor for good, so that Serve replaces it at once."""
    import ray

    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def haproxy_enabled() -> bool:
    """Whether Serve's HTTP front is HAProxy (``RAY_SERVE_ENABLE_HA_PROXY``), not its Python proxy."""
    from ray.serve._private.constants import RAY_SERVE_ENABLE_HA_PROXY

    return bool(RAY_SERVE_ENABLE_HA_PROXY)


def with_ingress_router(app: Any, router: Any) -> Any:
    """``app`` (whose ingress deployment serves HTTP) with ``router``, a one-deployment
    application that HAProxy asks (``POST /internal/route``) which of the ingress's replicas
    takes each POST; HAProxy then forwards the request to that replica itself."""
    return app._with_ingress_request_router(router)


async def chosen_replica(handle: Any, *args: Any) -> str:
    """The full actor name of the replica ``handle``'s request router picks (nothing is sent to it);
    ``args`` reach the router (``PendingRequest.args``)."""
    async with handle.choose_replica(*args, _reserve=False) as selection:
        return selection._replica.replica_id.to_full_id_str()
