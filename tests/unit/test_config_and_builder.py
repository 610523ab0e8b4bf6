"""Config validation, Serve options and placement groups (no Ray cluster started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.app import build_app, build_pipeline, llm_bundles, llm_options, replicas_beyond_cluster
from serve_app.autoscaling import replicas_that_fit
from serve_app.config import AppConfig, LLMDeploymentConfig, is_loopback_host
from serve_app.deployments.ingress import keys_required

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = ["config.yaml", "config.pixtral-large.yaml", "config.cpu.yaml"]


def app_args(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())["applications"][0]["args"]


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_configs_validate_with_serve_and_ours(name):
    document = yaml.safe_load((REPO / name).read_text())
    schema = ServeDeploySchema.model_validate(document)
    assert schema.applications[0].import_path == "serve_app.app:build_app"
    AppConfig.model_validate(app_args(name))


def test_typo_in_a_nested_key_is_named():
    args = app_args("config.yaml")
    args["image_pool"]["fetch"] = {"max_image_byte": 10}
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(args)
    assert "image_pool.fetch.max_image_byte" in str(info.value)
    assert info.value.errors()[0]["loc"] == ("image_pool", "fetch", "max_image_byte")
    assert info.value.errors()[0]["type"] == "extra_forbidden"


def test_autoscaling_bounds_are_checked():
    args = app_args("config.yaml")
    args["llm"]["autoscaling"] = {"min_replicas": 3, "max_replicas": 2}
    with pytest.raises(ValidationError, match="min_replicas"):
        AppConfig.model_validate(args)


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_placement_bundles_one_gpu_per_rank(tp):
    llm = LLMDeploymentConfig(num_cpus=2, cpus_per_gpu_worker=1)
    bundles = llm.placement_bundles(tp)
    assert len(bundles) == tp
    assert all(bundle["GPU"] == 1 for bundle in bundles)
    assert bundles[0]["CPU"] == 3  # the replica's own CPUs sit in the first bundle
    assert all(bundle["CPU"] == 1 for bundle in bundles[1:])


@pytest.mark.parametrize("tp, replica_gpus", [(1, 1), (8, 0)])
def test_gpu_llm_options(tp, replica_gpus):
    args = app_args("config.yaml")
    args["engine"]["tensor_parallel_size"] = tp
    options = llm_options(AppConfig.model_validate(args))
    assert options["ray_actor_options"]["num_gpus"] == replica_gpus
    assert len(options["placement_group_bundles"]) == tp
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["autoscaling_config"]["target_ongoing_requests"] < 1000


def test_two_replicas_share_one_gpu_with_a_fractional_share():
    args = app_args("config.yaml")
    args["llm"]["gpus_per_replica"] = 0.5
    args["engine"]["gpu_memory_utilization"] = 0.42
    options = llm_options(AppConfig.model_validate(args))
    assert options["ray_actor_options"]["num_gpus"] == 0.5
    assert options["placement_group_bundles"] == [{"CPU": 3, "GPU": 0.5}]


def test_fractional_gpu_share_is_rejected_with_tensor_parallel():
    args = app_args("config.yaml")
    args["llm"]["gpus_per_replica"] = 0.5
    args["engine"]["gpu_memory_utilization"] = 0.42
    args["engine"]["tensor_parallel_size"] = 2
    with pytest.raises(ValidationError, match="tensor_parallel_size 1"):
        AppConfig.model_validate(args)


def test_fractional_gpu_share_must_hold_the_engine_memory():
    args = app_args("config.yaml")
    args["llm"]["gpus_per_replica"] = 0.5  # the shipped gpu_memory_utilization 0.9 does not fit half a GPU
    with pytest.raises(ValidationError, match="gpu_memory_utilization"):
        AppConfig.model_validate(args)


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_gpu_share_outside_zero_to_one_is_an_error(share):
    args = app_args("config.yaml")
    args["llm"]["gpus_per_replica"] = share
    with pytest.raises(ValidationError, match="gpus_per_replica"):
        AppConfig.model_validate(args)


def test_cpu_llm_options_have_no_gpus():
    args = app_args("config.cpu.yaml")
    options = llm_options(AppConfig.model_validate(args))
    assert "placement_group_bundles" not in options
    assert "num_gpus" not in options["ray_actor_options"]
    assert options["ray_actor_options"]["num_cpus"] <= 0.5
    assert options["ray_actor_options"]["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_building_the_gpu_app_starts_no_engine():
    """The builder runs wherever `serve run` runs (no GPU there): engines start in the replicas."""
    built: list[AppConfig] = []
    build_pipeline(AppConfig.model_validate(app_args("config.yaml")), built.append)
    assert built == []


def test_build_app_validates_its_args():
    args = app_args("config.yaml")
    args["ingress"]["max_request_byte"] = 1
    with pytest.raises(ValidationError, match="ingress.max_request_byte"):
        build_app(args)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_configs_never_serve_open_on_a_reachable_listener(name, monkeypatch):
    """config.cpu.yaml (127.0.0.1) runs key-less; the 0.0.0.0 configs refuse to start without keys."""
    monkeypatch.delenv("PIXTRAL_SERVE_API_KEYS", raising=False)
    host = yaml.safe_load((REPO / name).read_text())["http_options"]["host"]
    ingress = AppConfig.model_validate(app_args(name)).ingress
    if is_loopback_host(host):
        assert keys_required(ingress, ingress.resolved_api_keys(), host) is False
    else:
        assert ingress.auth == "required"
        with pytest.raises(RuntimeError, match="no API key"):
            keys_required(ingress, ingress.resolved_api_keys(), host)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_configs_read_no_s3_bucket_unless_told(name):
    fetch = AppConfig.model_validate(app_args(name)).image_pool.fetch
    assert fetch.s3_allowed_buckets == []
    assert fetch.s3_allowed_buckets_env == "PIXTRAL_SERVE_S3_ALLOWED_BUCKETS"


def test_default_max_tokens_must_fit_the_server_cap():
    args = app_args("config.cpu.yaml")
    with pytest.raises(ValidationError, match="max_tokens_limit"):
        AppConfig.model_validate({**args, "default_max_tokens": 5000, "max_tokens_limit": 4096})
    assert AppConfig.model_validate(args).max_tokens_limit == 4096


def test_large_config_serves_pixtral_large():
    config = AppConfig.model_validate(app_args("config.pixtral-large.yaml"))
    assert config.served_model_name == config.engine.model == "mistralai/Pixtral-Large-Instruct-2411"
    assert config.engine.tokenizer == "mistral_common:mistral_instruct_tokenizer_241114.model.v7m1"
    assert (config.engine.tensor_parallel_size, config.engine.max_images_per_prompt) == (8, 10)
    assert config.engine.max_model_len == 65536


def test_tokenizer_found_in_the_model_folder(tmp_path):
    (tmp_path / "tekken.json").write_text("{}")
    config = AppConfig.model_validate({"served_model_name": "m", "engine": {"model": str(tmp_path)}})
    assert config.tokenizer_path() == str(tmp_path / "tekken.json")
    empty = AppConfig.model_validate({"served_model_name": "m", "engine": {"model": str(tmp_path / "none")}})
    with pytest.raises(ValueError, match="engine.tokenizer"):
        empty.tokenizer_path()


def test_engine_extra_keys_are_checked_against_vllm():
    from serve_app.config import EngineConfig
    from serve_app.engine.vllm_engine import engine_kwargs

    good = engine_kwargs(EngineConfig(model="m", extra={"mm_processor_cache_gb": 0}))
    assert good["mm_processor_cache_gb"] == 0
    assert good["limit_mm_per_prompt"] == {"image": 4}
    with pytest.raises(ValueError, match="mm_procesor_cache_gb"):
        engine_kwargs(EngineConfig(model="m", extra={"mm_procesor_cache_gb": 0}))
    with pytest.raises(ValueError, match="max_model_len"):
        engine_kwargs(EngineConfig(model="m", extra={"max_model_len": 10}))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_deployment_has_a_bounded_queue_that_answers_429(name):
    from ray.serve.config import BackpressureConfig

    ingress = build_app(app_args(name))._bound_deployment
    _, pool, llm = ingress.init_args
    deployments = [ingress, pool._bound_deployment, llm._bound_deployment]
    assert [d.name for d in deployments] == ["OpenAIIngress", "ImagePool", "PixtralServer"]
    for deployment in deployments:
        assert deployment.max_queued_requests > 0
        assert deployment.backpressure_config == BackpressureConfig(status_code=429, retry_after_s=1.0)
        assert deployment._deployment_config.graceful_shutdown_timeout_s >= 60


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_admission_sees_every_request_the_ingress_holds(name):
    """Serve's queue in front of the LLM holds a request until Serve assigns it to a replica, and a
    burst arrives faster than assignment: that queue must hold all an ingress replica accepts, and
    the replicas room for all the ingress replicas accept, or requests are refused (or held) where
    cost-aware admission never sees them. On one H200, 64 / 256 against 512 per ingress replica
    refused 42 of a 256-request burst with the engine half idle."""
    config = AppConfig.model_validate(app_args(name))
    ingress, llm = config.ingress, config.llm
    assert llm.max_queued_requests == -1 or llm.max_queued_requests >= ingress.max_ongoing_requests
    accepted = ingress.max_ongoing_requests * max(1, ingress.autoscaling.min_replicas)
    assert llm.max_ongoing_requests * max(1, llm.autoscaling.min_replicas) >= accepted


def test_llm_options_come_from_config():
    args = app_args("config.cpu.yaml")
    args["llm"].update(max_queued_requests=3, graceful_shutdown_timeout_s=42, health_check_period_s=2)
    options = llm_options(AppConfig.model_validate(args))
    assert options["max_queued_requests"] == 3
    assert options["graceful_shutdown_timeout_s"] == 42
    assert options["health_check_period_s"] == 2


def test_llm_replicas_use_the_cache_affinity_router_by_default():
    from serve_app.routing.request_router import CacheAffinityRouter

    args = app_args("config.yaml")
    config = AppConfig.model_validate(args)
    router = llm_options(config)["request_router_config"]
    assert router["request_router_class"] is CacheAffinityRouter
    # Busy at the autoscaling target unless set.
    assert router["request_router_kwargs"] == {"deployment": "PixtralServer", "busy_at": 64}
    args["llm"]["routing"] = {"busy_ongoing_requests": 96}
    assert llm_options(AppConfig.model_validate(args))["request_router_config"]["request_router_kwargs"] == {
        "deployment": "PixtralServer", "busy_at": 96
    }


def test_pow2_routing_keeps_our_router_which_reports_replicas():
    """pow2 sends no affinity key; the router stays, since the ingress learns the routable
    replicas from it (serve_app/routing/replica_set.py)."""
    from serve_app.routing.request_router import CacheAffinityRouter

    args = app_args("config.yaml")
    args["llm"]["routing"] = {"policy": "pow2"}
    router = llm_options(AppConfig.model_validate(args))["request_router_config"]
    assert router["request_router_class"] is CacheAffinityRouter


def test_the_routing_policy_gives_the_key_its_router_expects():
    from serve_app.routing import affinity_key
    from serve_app.routing.policy import RoutingPolicy

    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]
    args = app_args("config.yaml")
    affinity = RoutingPolicy.of(AppConfig.model_validate(args).llm)
    assert affinity.key(messages, ["img-1"]) == affinity_key(messages, ["img-1"], prefix_chars=2048) != ""
    assert affinity.key(messages, ["img-1"]) != affinity.key(messages, ["img-2"])
    args["llm"]["routing"] = {"policy": "pow2", "prefix_chars": 10}
    pow2 = RoutingPolicy.of(AppConfig.model_validate(args).llm)
    assert pow2.key(messages, ["img-1"]) == ""  # load alone
    assert pow2.router_config("PixtralServer")["request_router_kwargs"]["busy_at"] == pow2.busy_at == 64


def test_llm_autoscaling_scales_on_pending_work_unless_turned_off():
    args = app_args("config.yaml")
    policy = llm_options(AppConfig.model_validate(args))["autoscaling_config"]["policy"]
    assert policy == {
        "policy_function": "serve_app.autoscaling:PendingWorkPolicy",
        "policy_kwargs": {"target_pending_s": 10.0},
    }
    args["llm"]["target_pending_s"] = None
    assert "policy" not in llm_options(AppConfig.model_validate(args))["autoscaling_config"]


def test_unknown_routing_policy_is_an_error():
    args = app_args("config.yaml")
    args["llm"]["routing"] = {"policy": "round_robin"}
    with pytest.raises(ValidationError, match="llm.routing.policy"):
        AppConfig.model_validate(args)


def test_the_built_app_carries_the_router_to_serve():
    from serve_app.routing.request_router import CacheAffinityRouter

    ingress = build_app(app_args("config.yaml"))._bound_deployment
    llm = ingress.init_args[2]._bound_deployment
    assert llm.name == "PixtralServer"
    router = llm._deployment_config.request_router_config
    assert router.get_request_router_class() is CacheAffinityRouter
    assert router.request_router_kwargs == {"deployment": "PixtralServer", "busy_at": 64}
    pool = ingress.init_args[1]._bound_deployment
    assert pool._deployment_config.request_router_config.request_router_kwargs == {"deployment": "ImagePool"}
    policy = llm._deployment_config.autoscaling_config.policy
    assert policy.policy_function == "serve_app.autoscaling:PendingWorkPolicy"


@pytest.mark.parametrize(
    ("cluster", "overrides", "fit"),
    [
        ({"CPU": 16, "GPU": 1}, {}, 1),  # one GPU: the shipped max_replicas 4 cannot be placed
        ({"CPU": 16, "GPU": 1}, {"gpus_per_replica": 0.5}, 2),
        ({"CPU": 64, "GPU": 4}, {}, 4),
        ({"CPU": 6, "GPU": 4}, {}, 2),  # each bundle takes cpus_per_gpu_worker + num_cpus (3)
        ({"CPU": 16}, {}, 0),
    ],
)
def test_a_max_replicas_the_cluster_cannot_place_is_warned_with_what_fits(cluster, overrides, fit):
    args = app_args("config.yaml")
    args["llm"].update(overrides)
    args["engine"]["gpu_memory_utilization"] = min(0.9, 0.84 * args["llm"].get("gpus_per_replica", 1))
    warning = replicas_beyond_cluster(AppConfig.model_validate(args), cluster)
    if fit >= args["llm"]["autoscaling"]["max_replicas"]:
        assert warning is None
    else:
        assert f"hold {fit} LLM replica(s)" in warning and f"set max_replicas to at most {fit}" in warning


def test_tensor_parallel_replicas_fit_by_whole_placement_groups():
    args = app_args("config.pixtral-large.yaml")
    config = AppConfig.model_validate(args)
    tp = config.engine.tensor_parallel_size
    cpus = sum(bundle["CPU"] for bundle in llm_bundles(config))
    assert replicas_that_fit({"CPU": 2 * cpus, "GPU": 2 * tp + tp - 1}, llm_bundles(config)) == 2


@pytest.mark.parametrize("haproxy", [False, True])
def test_a_colocated_api_is_routed_by_our_router_wherever_it_can_be(caplog, monkeypatch, haproxy):
    """``ingress.colocated``: the LLM deployment is the app's ingress. Behind HAProxy with several
    replicas, a ReplicaPicker tells HAProxy which replica takes each POST (our router's pick); with
    one, HAProxy forwards to it (Serve refuses a custom router on an ingress it fronts alone); behind
    Serve's Python proxy, the proxy routes with our router itself."""
    import serve_app.app

    monkeypatch.setattr(serve_app.app, "haproxy_enabled", lambda: haproxy)
    args = app_args("config.cpu.yaml")
    args["ingress"] = {"colocated": True, "retry_after_s": 2}  # the body budget's 429s still use retry_after_s
    for replicas in (1, 2):
        args["llm"]["autoscaling"] = {"min_replicas": 1, "max_replicas": replicas}
        app = build_pipeline(AppConfig.model_validate(args))
        ingress = app._bound_deployment
        # The LLM deployment is the app's ingress (its pool handle its one argument besides the config).
        assert ingress.name == "PixtralServer" and ingress.init_args[1]._bound_deployment.name == "ImagePool"
        router = ingress._deployment_config.request_router_config.request_router_class
        ours = not haproxy or replicas > 1
        assert router.endswith("CacheAffinityRouter" if ours else "PowerOfTwoChoicesRequestRouter"), router
        picker = app._ingress_request_router
        if haproxy and replicas > 1:
            assert picker._bound_deployment.name == "ReplicaPicker"
            assert picker._bound_deployment.init_args[0] is app  # it picks among this app's replicas
        else:
            assert picker is None
    # The ingress deployment's own resources and scaling no longer apply: said once, at build.
    assert "do(es) not apply" not in caplog.text
    args["ingress"]["num_cpus"], args["ingress"]["autoscaling"] = 0.5, {"min_replicas": 2, "max_replicas": 2}
    build_pipeline(AppConfig.model_validate(args))
    assert "ingress.autoscaling, ingress.num_cpus do(es) not apply" in caplog.text
