"""One guard per private-API use in ``serve_app/compat``: each fails naming the attribute that moved.

They look at the installed versions' classes and signatures, without starting Ray or an engine,
so that an upgrade breaks here first, with a readable message, and not in production.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from serve_app.compat import mistral_common as mc_compat
from serve_app.compat import ray_serve as serve_compat
from serve_app.compat import vllm as vllm_compat


def moved(what: str) -> str:
    return f"{what} moved or changed: update serve_app/compat and the versions it lists"


def test_checked_ranges_cover_the_installed_versions():
    import mistral_common
    import ray
    import vllm

    assert Version(ray.__version__) in SpecifierSet(serve_compat.CHECKED), ray.__version__
    assert Version(vllm.__version__) in SpecifierSet(vllm_compat.CHECKED), vllm.__version__
    assert Version(mistral_common.__version__) in SpecifierSet(mc_compat.CHECKED), mistral_common.__version__


# --- Ray Serve ---------------------------------------------------------------------------------


def test_serve_http_host_reaches_the_controller_clients_http_config():
    from ray.serve import context
    from ray.serve._private.client import ServeControllerClient

    assert callable(getattr(context, "_get_global_client", None)), moved("ray.serve.context._get_global_client")
    assert isinstance(inspect.getattr_static(ServeControllerClient, "http_config", None), property), moved(
        "ServeControllerClient.http_config"
    )
    from ray.serve.config import HTTPOptions

    assert "host" in HTTPOptions.model_fields, moved("HTTPOptions.host")


def test_probe_queue_lens_is_a_router_coroutine_taking_replicas_and_a_backoff_index():
    from ray.serve.request_router import RequestRouter

    probe = getattr(RequestRouter, "_probe_queue_lens", None)
    assert probe is not None and inspect.iscoroutinefunction(probe), moved("RequestRouter._probe_queue_lens")
    assert list(inspect.signature(probe).parameters)[1:3] == ["replicas", "backoff_index"], moved(
        "RequestRouter._probe_queue_lens(replicas, backoff_index)"
    )


def test_back_off_between_rounds_sets_the_routing_contexts_flag():
    from ray.serve.request_router import PendingRequest

    fields = {f.name: f for f in dataclasses.fields(PendingRequest)}
    assert "routing_context" in fields, moved("PendingRequest.routing_context")
    context = fields["routing_context"].default_factory()
    assert hasattr(context, "should_backoff"), moved("RequestRoutingContext.should_backoff")

    class Pending:
        routing_context = context

    serve_compat.back_off_between_rounds(Pending)
    assert context.should_backoff is True


def test_end_this_replica_kills_without_restart():
    import ray

    assert "no_restart" in inspect.signature(ray.kill).parameters, moved("ray.kill(..., no_restart=)")
    from ray.runtime_context import RuntimeContext

    assert isinstance(inspect.getattr_static(RuntimeContext, "current_actor", None), property), moved(
        "RuntimeContext.current_actor"
    )


def test_by_reference_is_a_handle_option_that_reaches_the_request_metadata():
    from ray.serve.handle import DeploymentHandle

    assert "_by_reference" in inspect.signature(DeploymentHandle.options).parameters, moved(
        "DeploymentHandle.options(_by_reference=)"
    )
    from ray.serve._private.handle_options import DynamicHandleOptions

    options = DynamicHandleOptions().copy_and_update(_by_reference=True)
    assert options._by_reference is True, moved("DynamicHandleOptions._by_reference")

    class FakeHandle:
        def options(self, **kwargs):
            return kwargs

    assert serve_compat.by_reference(FakeHandle()) == {"_by_reference": True}


def test_the_ingress_router_hook_and_haproxy_switch_exist():
    from ray.serve import Application
    from ray.serve._private import constants

    assert callable(getattr(Application, "_with_ingress_request_router", None)), moved(
        "Application._with_ingress_request_router"
    )
    assert isinstance(getattr(constants, "RAY_SERVE_ENABLE_HA_PROXY", None), bool), moved(
        "ray.serve._private.constants.RAY_SERVE_ENABLE_HA_PROXY"
    )
    assert serve_compat.haproxy_enabled() is constants.RAY_SERVE_ENABLE_HA_PROXY

    class App:
        def _with_ingress_request_router(self, router):
            return ("app with", router)

    assert serve_compat.with_ingress_router(App(), "picker") == ("app with", "picker")


def test_chosen_replica_picks_without_reserving_and_names_the_replica_actor():
    import asyncio
    from contextlib import asynccontextmanager

    from ray.serve._private import router
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve._private.request_router.replica_wrapper import ReplicaSelection
    from ray.serve.handle import DeploymentHandle

    assert callable(getattr(DeploymentHandle, "choose_replica", None)), moved("DeploymentHandle.choose_replica")
    source = inspect.getsource(router)
    assert 'request_kwargs.pop("_reserve", True)' in source, moved("the router's choose_replica(_reserve=)")
    assert "_replica" in ReplicaSelection.__annotations__, moved("ReplicaSelection._replica")
    replica_id = ReplicaID("abc123", DeploymentID(name="PixtralServer", app_name="pixtral"))
    assert replica_id.to_full_id_str().endswith("PixtralServer#abc123"), moved("ReplicaID.to_full_id_str")

    class Handle:
        @asynccontextmanager
        async def choose_replica(self, *args, **kwargs):
            assert args == ("pick-only",) and kwargs == {"_reserve": False}

            class Selection:
                class _replica:
                    pass

            Selection._replica.replica_id = replica_id
            yield Selection

    assert asyncio.run(serve_compat.chosen_replica(Handle(), "pick-only")) == replica_id.to_full_id_str()


def test_replica_gone_and_back_pressure_are_classes_ray_raises():
    for cls in (*serve_compat.REPLICA_GONE, serve_compat.BackPressureError):
        assert inspect.isclass(cls) and issubclass(cls, BaseException), cls


# --- vLLM --------------------------------------------------------------------------------------


def test_build_async_llm_takes_a_config_log_stats_and_stat_loggers():
    from vllm.v1.engine.async_llm import AsyncLLM

    build = getattr(AsyncLLM, "from_vllm_config", None)
    assert build is not None, moved("AsyncLLM.from_vllm_config")
    params = inspect.signature(build).parameters
    assert {"vllm_config", "disable_log_stats", "stat_loggers"} <= set(params), moved(
        "AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=, stat_loggers=)"
    )


def test_use_placement_group_sets_a_parallel_config_field():
    from vllm.config import ParallelConfig

    assert "placement_group" in {f.name for f in dataclasses.fields(ParallelConfig)}, moved(
        "ParallelConfig.placement_group"
    )


def test_render_tokens_prompt_finds_the_renderer_and_its_method():
    from vllm.v1.engine.async_llm import AsyncLLM

    assert "self.renderer =" in inspect.getsource(AsyncLLM.__init__) or isinstance(
        inspect.getattr_static(AsyncLLM, "renderer", None), property
    ), moved("AsyncLLM.renderer")
    import vllm

    renderers = []
    for module_name in ("vllm.renderers", "vllm.entrypoints.renderer"):
        try:
            module = __import__(module_name, fromlist=["*"])
        except ImportError:
            continue
        renderers += [obj for obj in vars(module).values() if inspect.isclass(obj)]
    assert any(hasattr(cls, "render_cmpl_async") for cls in renderers), moved(
        f"the renderer's render_cmpl_async (vLLM {vllm.__version__})"
    )


def test_client_error_names_are_vllm_classes():
    import vllm.exceptions

    names = {name for name, obj in vars(vllm.exceptions).items() if inspect.isclass(obj)}
    assert vllm_compat.CLIENT_ERROR_NAMES <= names, moved(f"vllm.exceptions {sorted(vllm_compat.CLIENT_ERROR_NAMES)}")
    error = vllm.exceptions.VLLMValidationError("bad", parameter="temperature")
    assert vllm_compat.is_client_error(error)
    assert not vllm_compat.is_client_error(RuntimeError("x"))


def test_engine_dead_error_and_ray_stat_logger_import():
    assert issubclass(vllm_compat.engine_dead_error(), BaseException), moved("EngineDeadError")
    assert inspect.isclass(vllm_compat.ray_stat_logger()), moved("RayPrometheusStatLogger")


def test_stat_logger_base_has_the_hooks_the_step_heartbeat_overrides():
    base = vllm_compat.stat_logger_base()
    for hook in ("record", "log_engine_initialized"):
        assert callable(getattr(base, hook, None)), moved(f"StatLoggerBase.{hook}")


# --- mistral_common ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (1024, 512), (2000, 3000), (33, 17)])
def test_image_to_num_tokens_agrees_with_the_public_encoder(size):
    """The private count equals what the public ``ImageEncoder.__call__`` puts in the prompt."""
    from mistral_common.protocol.instruct.messages import ImageChunk
    from mistral_common.tokens.tokenizers.image import ImageConfig, ImageEncoder, SpecialImageIDs
    from PIL import Image

    encoder = ImageEncoder(ImageConfig(16, 1024, 2), SpecialImageIDs(img=1, img_break=2, img_end=3))
    assert hasattr(encoder, "_image_to_num_tokens"), moved("ImageEncoder._image_to_num_tokens")
    image = Image.new("RGB", size)
    cols, rows = mc_compat.image_to_num_tokens(encoder, image)
    tokens = encoder(ImageChunk(image=image)).tokens
    assert (cols, rows) == (tokens.index(2) if 2 in tokens else tokens.index(3), tokens.count(2) + 1)
