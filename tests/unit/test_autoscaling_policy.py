"""PendingWorkPolicy (serve_app.autoscaling) on Serve's own AutoscalingContext, no cluster."""

from __future__ import annotations

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serve_app.autoscaling import PendingWorkPolicy

DEPLOYMENT = DeploymentID(name="PixtralServer", app_name="pixtral")


def context(replicas: int, ongoing: float, pending_s: list[float] | None) -> AutoscalingContext:
    ids = [ReplicaID(f"r{i}", DEPLOYMENT) for i in range(replicas)]
    metrics = None if pending_s is None else {"pending_s": dict(zip(ids, pending_s))}
    return AutoscalingContext(
        deployment_id=DEPLOYMENT, deployment_name="PixtralServer", app_name="pixtral",
        current_num_replicas=replicas, target_num_replicas=replicas, running_replicas=ids,
        total_num_requests=ongoing, total_queued_requests=0.0,
        aggregated_metrics=metrics, raw_metrics=None,
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=4,
        policy_state={}, last_scale_up_time=None, last_scale_down_time=None, current_time=None,
        config=AutoscalingConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=64),
    )


def test_work_above_target_asks_for_more_replicas_though_few_requests_are_held():
    policy = PendingWorkPolicy(target_pending_s=10)
    # 20 requests held (admission refuses the rest): the default policy would shrink.
    desired, _ = policy(context(replicas=1, ongoing=20, pending_s=[30.0]))
    assert desired == pytest.approx(3.0)


def test_the_default_policy_wins_when_it_asks_for_more():
    policy = PendingWorkPolicy(target_pending_s=10)
    desired, _ = policy(context(replicas=2, ongoing=256, pending_s=[1.0, 1.0]))
    assert desired == pytest.approx(4.0)  # 256 ongoing / 64 per replica


def test_without_metrics_yet_it_is_the_default_policy():
    desired, _ = PendingWorkPolicy(target_pending_s=10)(context(replicas=2, ongoing=64, pending_s=None))
    assert desired == pytest.approx(1.0)


def test_target_must_be_positive():
    with pytest.raises(ValueError):
        PendingWorkPolicy(target_pending_s=0)
