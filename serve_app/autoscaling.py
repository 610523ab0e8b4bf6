"""PendingWorkPolicy: LLM replicas for the work they hold, not only the requests they hold.

Ray Serve's default policy scales on ongoing requests per replica. For an LLM that count
says little: sixty short text chats and sixty 12 MP photos with long answers are the same
count and very different work, and once admission refuses (429), the requests a replica
holds stop growing however much more is asked, so the autoscaler may never see load above
its target. Each PixtralServer replica reports the seconds of estimated engine work its
admission ledger holds (``record_autoscaling_stats``, Serve's custom autoscaling metrics);
this policy asks for enough replicas that each holds at most ``target_pending_s``, or what
the default policy asks for on ongoing requests, whichever is more. Serve applies the
deployment's min/max replicas and upscale/downscale delays on top (it wraps every policy).
Set on the LLM deployment by ``serve_app.app`` through ``autoscaling_config.policy``.

``replicas_that_fit``: how many replicas of given placement bundles a cluster's resources hold.
A target above it cannot be placed, and in Ray Serve 2.60 such replicas block a rollout: a
redeploy stops one outdated replica, starts its successor, and stops no other while that one
waits for resources the running replicas hold, until the autoscaler lowers the target after
``downscale_delay_s`` (bench/results/2026-12-06-cpu-redeploy.md).
"""

from __future__ import annotations

from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

PENDING_METRIC = "pending_s"


def replicas_that_fit(cluster: dict[str, float], bundles: list[dict[str, float]]) -> int:
    """Replicas whose ``bundles`` (one placement group each) ``cluster`` holds at once, by totals
    alone (bundles may still not pack onto nodes; this is an upper bound)."""
    need: dict[str, float] = {}
    for bundle in bundles:
        for resource, amount in bundle.items():
            need[resource] = need.get(resource, 0.0) + amount
    return min((int(cluster.get(r, 0.0) / amount + 1e-9) for r, amount in need.items() if amount > 0), default=0)


class PendingWorkPolicy:
    """Serve autoscaling policy (a class: Serve builds it once with ``policy_kwargs``)."""

    def __init__(self, target_pending_s: float):
        if target_pending_s <= 0:
            raise ValueError(f"target_pending_s must be > 0, got {target_pending_s}")
        self.target_pending_s = target_pending_s

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        by_requests, state = replica_queue_length_autoscaling_policy(ctx)
        pending = (ctx.aggregated_metrics or {}).get(PENDING_METRIC) or {}
        if ctx.current_num_replicas == 0 or not pending:
            return by_requests, state
        by_work = sum(pending.values()) / self.target_pending_s
        return max(by_requests, by_work), state
