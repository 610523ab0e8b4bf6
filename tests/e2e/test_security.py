"""Secure defaults in the real app: who may call it, what /health and /ready touch, and how
Ray's own exception classes come out of a real DeploymentHandle.

Stand-in engines (tests/e2e/fake_engine.py) only where the engine is not what is tested: an
engine still loading, and apps that must fail to start. Everything else is the real app in the
session's Ray.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from serve_support import cpu_app_args, deploy, separate_ingress_only

from serve_app.errors import ImageNotFoundError


def start_in_background(app, name: str, route_prefix: str) -> None:
    """Deploys and returns at once: the test watches serve.status() under its own deadline. (Not
    serve.run in a thread: a thread still waiting for its app outlives the test, and once the
    session's Ray is shut down it blocked the test process's exit behind HAProxy.)"""
    from ray import serve

    serve.run_many(
        [serve.RunTarget(app, name=name, route_prefix=route_prefix)],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )


def stand_in_app(engine_name: str, served_model_name: str, **overrides):
    import fake_engine
    import ray.cloudpickle

    from serve_app.app import build_pipeline
    from serve_app.config import AppConfig

    ray.cloudpickle.register_pickle_by_value(fake_engine)
    overrides["llm"] = {"num_cpus": 0.1, **overrides.get("llm", {})}
    args = cpu_app_args(served_model_name=served_model_name, **overrides)
    return build_pipeline(AppConfig.model_validate(args), getattr(fake_engine, engine_name))


def test_the_listener_host_is_read_from_serve(served):
    """serve_http_host() uses a Ray Serve internal (no public API in 2.60): fail loudly if it moves."""
    from serve_app.compat.ray_serve import serve_http_host

    assert serve_http_host() == "127.0.0.1"


def test_keyless_app_on_loopback_is_open_like_make_run(served, monkeypatch):
    monkeypatch.delenv("PIXTRAL_SERVE_API_KEYS", raising=False)
    url = deploy(stand_in_app("FakeFailingEngine", "open"), name="open", base=served, route_prefix="/open")
    try:
        response = httpx.get(url + "/v1/models", timeout=30)
        assert response.status_code == 200
        assert response.json()["data"][0]["id"] == "open"
    finally:
        from ray import serve

        serve.delete("open")


@pytest.mark.parametrize("colocated", [False, True], ids=["ingress", "colocated"])
def test_app_requiring_keys_without_any_refuses_to_start(served, monkeypatch, colocated):
    """Whichever replica serves the API refuses to start, and does so before its engine loads
    (a stand-in engine whose start takes 300 s: a refusal after it would miss the 90 s deadline)."""
    from ray import serve

    monkeypatch.delenv("PIXTRAL_SERVE_API_KEYS", raising=False)
    app = stand_in_app(
        "FakeSlowStartEngine",
        "nokeys",
        ingress={"auth": "required", "colocated": colocated},
        llm={"engine_start_timeout_s": 300},
    )
    start_in_background(app, "nokeys", "/nokeys")
    deadline = time.monotonic() + 90
    message = ""
    try:
        while time.monotonic() < deadline:
            status = serve.status().applications.get("nokeys")
            message = " ".join(d.message for d in status.deployments.values()) if status else ""
            if status is not None and status.status == "DEPLOY_FAILED":
                break
            time.sleep(1)
        assert "no API key is configured" in message
        assert httpx.get(served + "/nokeys/v1/models", timeout=10).status_code != 200
    finally:
        serve.delete("nokeys")


@separate_ingress_only
def test_while_the_engine_loads_health_answers_ready_waits_and_chat_is_refused_at_once(served, api_key):
    """While the engine is still loading, /health answers (it never calls the engine), /ready
    says what it waits for, and a chat request gets 503 + Retry-After at once instead of
    waiting in Serve's queue for the engine's start."""
    from ray import serve

    start_in_background(
        stand_in_app("FakeSlowStartEngine", "loading", llm={"engine_start_timeout_s": 300}),
        "loading",
        "/loading",
    )
    base = served + "/loading"
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(base + "/health", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is not None and health.json() == {"status": "ok"}
        started = time.monotonic()
        ready = httpx.get(base + "/ready", timeout=30)
        assert ready.status_code == 503
        assert ready.json() == {"status": "not_ready", "reason": "no running PixtralServer replica"}
        assert time.monotonic() - started < 5  # answered from the routers' lists: no controller call

        started = time.monotonic()
        chat = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "loading", "messages": [{"role": "user", "content": "hello"}]},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
        )
        assert chat.status_code == 503, chat.text
        assert chat.json()["error"]["code"] == "engine_unavailable"
        assert int(chat.headers["retry-after"]) >= 1
        assert time.monotonic() - started < 5  # refused at the door, not queued behind the start
    finally:
        serve.delete("loading")


@pytest.fixture(scope="module")
def caller_loop():
    """One event loop for the module's handle calls, kept running for the process's lifetime:
    Serve's throughput mode binds the handle's router to the loop that first uses it."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return loop


@pytest.fixture(scope="module")
def raiser(served):
    """A deployment raising our typed error and a plain one, behind a real DeploymentHandle."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.05})
    class Raiser:
        async def typed(self) -> None:
            raise ImageNotFoundError("image not found: s3://b/k.jpg", param="messages[0].content[1].image_url.url")

        async def plain(self) -> None:
            raise RuntimeError("secret internal detail")

    serve.run(Raiser.bind(), name="raiser", route_prefix=None)
    yield "raiser"
    serve.delete("raiser")


def call(loop, app: str, method: str) -> BaseException:
    """What awaiting a handle call raises, inside an event loop as in a deployment (the handle
    is made on that loop: throughput mode binds its router to the loop that makes it)."""
    from ray import serve

    async def main() -> BaseException:
        handle = serve.get_app_handle(app)
        try:
            await getattr(handle, method).remote()
        except Exception as exc:  # the point: whatever Ray raises
            return exc
        raise AssertionError("the call did not fail")

    return asyncio.run_coroutine_threadsafe(main(), loop).result(timeout=60)


def test_typed_errors_survive_a_real_handle_hop(raiser, caller_loop):
    from serve_app.api.errors import as_service_error

    raised = call(caller_loop, raiser, "typed")
    error = as_service_error(raised, "chatcmpl-1")
    assert type(error) is ImageNotFoundError
    assert (error.status_code, error.code, error.param) == (400, "image_not_found", "messages[0].content[1].image_url.url")


def test_plain_errors_through_a_real_handle_are_500s_without_text(raiser, caller_loop, caplog):
    from serve_app.api.errors import as_service_error

    raised = call(caller_loop, raiser, "plain")
    assert isinstance(raised, RuntimeError)  # as Ray raises it (its RayTaskError subclasses it)
    with caplog.at_level("ERROR", logger="serve_app.api.errors"):
        error = as_service_error(raised, "chatcmpl-2")
    assert error.status_code == 500
    assert "secret" not in error.message and "RuntimeError" not in error.message
    assert "chatcmpl-2" in error.message and "secret internal detail" in caplog.text
