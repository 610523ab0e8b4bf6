"""The Serve application builder: ``import_path: serve_app.app:build_app``.

Validates the application args once (``AppConfig``) and wires the three
deployments: OpenAIIngress -> ImagePool (CPU) and PixtralServer (vLLM).
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from serve_app.autoscaling import PendingWorkPolicy, replicas_that_fit
from serve_app.compat import haproxy_enabled
from serve_app.config import AppConfig, DeploymentConfig
from serve_app.deployments.image_pool import ImagePool
from serve_app.deployments.ingress import OpenAIIngress
from serve_app.deployments.pixtral_server import EngineFactory, PixtralServer, vllm_engine_factory
from serve_app.engine.prompt import image_grid_of
from serve_app.routing.policy import RoutingPolicy, router_config

logger = logging.getLogger(__name__)


def _common_options(deployment: DeploymentConfig) -> dict[str, Any]:
    """Serve's own levers: bounded queues with 429 back-pressure, autoscaling, graceful drain."""
    return {
        "max_ongoing_requests": deployment.max_ongoing_requests,
        "max_queued_requests": deployment.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=deployment.retry_after_s),
        "graceful_shutdown_timeout_s": deployment.graceful_shutdown_timeout_s,
        "autoscaling_config": deployment.autoscaling.to_serve(),
    }


def llm_bundles(config: AppConfig) -> list[dict[str, float]]:
    """What one LLM replica takes from the cluster: its placement bundles, or its CPUs."""
    llm = config.llm
    if llm.accelerator == "gpu":
        return llm.placement_bundles(config.engine.tensor_parallel_size)
    return [{"CPU": llm.num_cpus}]


def llm_options(config: AppConfig) -> dict[str, Any]:
    llm = config.llm
    actor: dict[str, Any] = {"num_cpus": llm.num_cpus}
    if llm.env:
        actor["runtime_env"] = {"env_vars": dict(llm.env)}
    options = {
        **_common_options(llm),
        "ray_actor_options": actor,
        "health_check_period_s": llm.health_check_period_s,
        "health_check_timeout_s": 60,
        "request_router_config": RoutingPolicy.of(llm).router_config(PixtralServer.name),
    }
    if llm.target_pending_s is not None:
        options["autoscaling_config"] = {
            **options["autoscaling_config"],
            "policy": {
                "policy_function": f"{PendingWorkPolicy.__module__}:{PendingWorkPolicy.__name__}",
                "policy_kwargs": {"target_pending_s": llm.target_pending_s},
            },
        }
    if llm.accelerator == "gpu":
        tp = config.engine.tensor_parallel_size
        # With TP 1 the engine runs in the replica and needs its GPU (or its share of one); with
        # TP > 1 vLLM's Ray workers take the GPUs of the replica's placement group.
        actor["num_gpus"] = llm.gpus_per_replica if tp == 1 else 0
        options["placement_group_bundles"] = llm_bundles(config)
        options["placement_group_strategy"] = llm.placement_strategy
    return options


def replicas_beyond_cluster(config: AppConfig, cluster: dict[str, float]) -> str | None:
    """A warning when ``llm.autoscaling.max_replicas`` asks for more than ``cluster`` holds."""
    bundles = llm_bundles(config)
    fit = replicas_that_fit(cluster, bundles)
    wanted = config.llm.autoscaling.max_replicas
    if fit >= wanted:
        return None
    return (
        f"llm.autoscaling.max_replicas is {wanted}, but the cluster's resources hold {fit} LLM replica(s) "
        f"now ({bundles} each). Unless the cluster adds nodes, replicas beyond {fit} never start, "
        f"and a redeploy after a burst that asked for them waits for llm.autoscaling.downscale_delay_s "
        f"({config.llm.autoscaling.downscale_delay_s:g} s) before it replaces the running replicas: set "
        f"max_replicas to at most {fit} on a cluster that cannot grow."
    )


def build_app(args: dict[str, Any]) -> Application:
    """The Serve ``import_path``: validates ``args`` once and wires the three deployments."""
    config = AppConfig.model_validate(args)
    if ray.is_initialized() and (warning := replicas_beyond_cluster(config, ray.cluster_resources())):
        logger.warning(warning)
    return build_pipeline(config)


def build_pipeline(config: AppConfig, engine_factory: EngineFactory = vllm_engine_factory) -> Application:
    """The deployments for a validated config; tests inject a stand-in engine here."""
    grid = image_grid_of(config.tokenizer_path())
    pool = ImagePool.options(
        **_common_options(config.image_pool),
        ray_actor_options={"num_cpus": config.image_pool.num_cpus},
        request_router_config=router_config(ImagePool.name),
    ).bind(config.image_pool, grid)
    if config.ingress.colocated:
        from serve_app.deployments.colocated import ColocatedServer, with_picker

        ignored = sorted((set(DeploymentConfig.model_fields) - {"retry_after_s"}) & config.ingress.model_fields_set)
        if ignored:
            logger.warning(
                "ingress.colocated: the LLM replicas serve the API, so ingress.%s do(es) not apply (llm.* do)",
                ", ingress.".join(ignored),
            )
        # Behind Serve's Python proxy, the proxy routes to the replicas with our router. Behind HAProxy,
        # several replicas get the picker HAProxy asks for each POST (with our router); one replica gets
        # neither (Serve refuses a custom router on an ingress HAProxy fronts alone).
        options = llm_options(config)
        haproxy = haproxy_enabled()
        picker = haproxy and config.llm.autoscaling.max_replicas > 1
        if haproxy and not picker:
            del options["request_router_config"]
        server = ColocatedServer.options(**options).bind(config, pool, engine_factory)
        return with_picker(server, RoutingPolicy.of(config.llm)) if picker else server
    llm = PixtralServer.options(**llm_options(config)).bind(config, engine_factory)
    return OpenAIIngress.options(
        **_common_options(config.ingress),
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
    ).bind(config, pool, llm)
