"""Overload and faults with the real tiny engine in the session's Ray: every request ends, in time.

One more application ("faults") with a deliberately small capacity runs beside the
session's app, so that its engine can be overloaded and killed without touching the
other tests: 8 requests in the ingress and 4 queued by Serve's proxy, 2 requests in the
LLM replica and 2 more queued by the ingress, two pool replicas, and an admission limit
of 5 s of estimated work, and a hung engine is given up after 5 s without progress.
A refusal at either queue is the same OpenAI 429.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from chat_payloads import data_url, jpeg_bytes, long_image_stream, user_message
import serve_support
from serve_support import cpu_app_args, deploy, deploy_args, separate_ingress_only

MODEL = "tiny-faults"
CAPACITY = 4  # llm.max_ongoing_requests + llm.max_queued_requests below
REQUEST_BOUND_S = 120  # no request may take longer than this, whatever happens
RECOVERY_BOUND_S = 300
STALL_S = 5  # llm.engine_stall_s of the faults app


@pytest.fixture(scope="module")
def faults_app(served, api_key):
    args = cpu_app_args(
        served_model_name=MODEL,
        # 8 requests in the ingress and 4 queued by the proxy: past that Serve's proxy refuses.
        ingress={"api_keys": [api_key], "num_cpus": 0.1, "max_ongoing_requests": 8, "max_queued_requests": 4},
        image_pool={"num_cpus": 0.1, "autoscaling": {"min_replicas": 2, "max_replicas": 2}},
        llm={
            "num_cpus": 0.1,
            "max_ongoing_requests": 2,
            "max_queued_requests": 2,
            "health_check_period_s": 2,
            "engine_stall_s": STALL_S,
            # 100 output tokens/s: a 2000-token answer alone is 20 s of work, past the 5 s limit.
            "admission": {
                "max_pending_s": 5,
                "prefill_tokens_per_s": 100000,
                "decode_tokens_per_s": 100,
                "output_tokens_estimate": 4096,
            },
        },
    )
    return deploy_args(args, name="faults", base=served, route_prefix="/faults")


def chat(base: str, api_key: str, *, seed: int = 1, timeout: float = REQUEST_BOUND_S, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": [user_message(data_url(jpeg_bytes(seed, (64, 48))))], "max_tokens": 4}
    return httpx.post(
        base + "/v1/chat/completions",
        json={**payload, **body},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=timeout,
    )


def llm_load(app_name: str = "faults") -> dict:
    return serve_support.llm_load(app_name)


def wait_until_idle(app_name: str = "faults", bound_s: float = 60) -> dict:
    deadline = time.monotonic() + bound_s
    while True:
        load = llm_load(app_name)
        if load["engine_requests"] == 0 and load["admitted_requests"] == 0:
            return load
        assert time.monotonic() < deadline, f"engine still holds requests after {bound_s} s: {load}"
        time.sleep(0.5)


def assert_retryable(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code


def test_burst_8x_capacity_ends_in_200_or_429_within_the_bound(faults_app, api_key):
    burst = 8 * CAPACITY
    started = time.monotonic()
    with ThreadPoolExecutor(burst) as pool:
        responses = list(pool.map(lambda i: chat(faults_app, api_key, seed=i), range(burst)))
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= CAPACITY
    assert statuses.count(429) >= 1
    for response in responses:
        if response.status_code == 429:
            assert_retryable(response, 429, "server_overloaded")
        else:
            assert response.json()["usage"]["completion_tokens"] == 4
    assert elapsed < REQUEST_BOUND_S
    wait_until_idle()
    assert chat(faults_app, api_key).status_code == 200  # and it serves normally afterwards


def test_admission_refuses_while_the_engine_holds_too_much_work_and_a_disconnect_frees_it(faults_app, api_key):
    body = {
        "model": MODEL,
        "messages": [user_message(data_url(jpeg_bytes(7, (64, 48))))],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.Client(timeout=REQUEST_BOUND_S) as client:
        with client.stream(
            "POST", faults_app + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {api_key}"}
        ) as stream:
            assert stream.status_code == 200
            events = stream.iter_lines()
            assert next(line for line in events if line.startswith("data: ")).startswith("data: {")
            assert llm_load()["pending_s"] > 5  # 2000 output tokens at 100/s are held

            refused = chat(faults_app, api_key)
            assert_retryable(refused, 429, "server_overloaded")
            assert "queued work" in refused.json()["error"]["message"]
        # Leaving the block closes the connection mid-answer: the engine must drop the request.
    idle = wait_until_idle(bound_s=30)
    assert idle["pending_s"] == 0
    assert chat(faults_app, api_key).status_code == 200


def test_disconnected_streams_leave_the_engine_with_nothing_running(faults_app, api_key):
    def stream_then_hang_up(seed: int) -> None:
        body = long_image_stream(MODEL, seed, 300)
        with httpx.stream(
            "POST",
            faults_app + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=REQUEST_BOUND_S,
        ) as response:
            assert response.status_code == 200
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: {")
                if received >= 3:
                    return

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(stream_then_hang_up, [11, 12]))
    wait_until_idle(bound_s=30)


def _replica_actors(deployment: str, app_name: str = "faults") -> list[str]:
    import ray

    return sorted(
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app_name}#{deployment}#")
    )


def test_killing_a_pool_replica_under_steady_load_fails_nothing(faults_app, api_key):
    import ray

    replicas = _replica_actors("ImagePool")
    assert len(replicas) == 2
    results: list[int] = []
    stop = threading.Event()

    def steady(worker: int) -> None:
        seed = 1000 * (worker + 1)
        while not stop.is_set():
            seed += 1
            results.append(chat(faults_app, api_key, seed=seed, max_tokens=1).status_code)

    workers = [threading.Thread(target=steady, args=(w,), daemon=True) for w in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(3)
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    time.sleep(8)
    stop.set()
    for worker in workers:
        worker.join(timeout=REQUEST_BOUND_S)
    assert len(results) >= 10
    assert results.count(200) == len(results), results


def _engine_core_of(deployment: str = "PixtralServer", app_name: str = "faults"):
    import psutil

    marker = f"ServeReplica:{app_name}:{deployment}"
    replicas = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert len(replicas) == 1, [p.info["cmdline"] for p in replicas]
    cores = [c for c in replicas[0].children(recursive=True) if "EngineCore" in c.name() + " ".join(c.cmdline())]
    assert len(cores) == 1
    return replicas[0], cores[0]


@separate_ingress_only
def test_killing_the_engine_core_gives_503_with_retry_after_then_recovers(faults_app, api_key):
    replica, core = _engine_core_of()
    long_answer: dict[str, httpx.Response] = {}
    in_flight = threading.Thread(
        target=lambda: long_answer.update(r=chat(faults_app, api_key, max_tokens=2000, ignore_eos=True)),
        daemon=True,
    )
    in_flight.start()
    deadline = time.monotonic() + 30
    while llm_load()["engine_requests"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    killed_at = time.monotonic()
    os.kill(core.pid, signal.SIGKILL)
    in_flight.join(timeout=REQUEST_BOUND_S)
    assert_retryable(long_answer["r"], 503, "engine_overloaded")
    replica.wait(timeout=5)  # ends itself at once, not after three failed health checks (6 s+)

    # A request sent at once, before Serve's controller has seen the replica go, waits in
    # Serve's queue only until the ingress learns that no engine replica runs: then it is
    # withdrawn with 503 + Retry-After, well before the new engine is up (~20 s here).
    sent = time.monotonic()
    early = chat(faults_app, api_key, timeout=REQUEST_BOUND_S)
    assert early.status_code == 503, (early.status_code, time.monotonic() - sent)
    assert int(early.headers["retry-after"]) >= 1
    assert time.monotonic() - sent < 10

    # While the replacement's engine starts, new requests are refused at the door with
    # 503 + Retry-After at once, not held in Serve's queue for the whole start.
    deadline = time.monotonic() + 30
    while httpx.get(faults_app + "/ready", timeout=10).json().get("reason") != "no running PixtralServer replica":
        assert time.monotonic() < deadline, "the controller never showed the engine replica gone"
        time.sleep(0.2)
    asked = time.monotonic()
    refused = chat(faults_app, api_key, timeout=30)
    assert_retryable(refused, 503, "engine_unavailable")
    assert time.monotonic() - asked < 5

    statuses, recovered_s = recover(faults_app, api_key, killed_at)
    print(f"recovered {recovered_s:.1f} s after the engine core was killed; statuses {statuses}")
    assert _engine_core_of()[0].pid != replica.pid


def test_a_stopped_engine_core_gives_503_within_engine_stall_s_then_recovers(faults_app, api_key):
    """A hung engine (alive, no progress): SIGSTOP of ``VLLM::EngineCore`` under load."""
    import psutil

    recover(faults_app, api_key, time.monotonic())  # whatever an earlier test did, serving again
    replica, core = _engine_core_of()
    answers: list[tuple[float, httpx.Response]] = []

    def long_request(seed: int) -> None:  # admission lets in one such answer at a time (5 s limit)
        response = chat(faults_app, api_key, seed=seed, max_tokens=4000, ignore_eos=True)
        answers.append((time.monotonic(), response))

    in_flight = [threading.Thread(target=long_request, args=(21,), daemon=True)]
    for thread in in_flight:
        thread.start()
    deadline = time.monotonic() + 30
    while llm_load()["engine_requests"] < 1:
        assert not answers, [(r.status_code, r.text[:300]) for _, r in answers]
        assert time.monotonic() < deadline, llm_load()
        time.sleep(0.2)

    stopped_at = time.monotonic()
    core.send_signal(signal.SIGSTOP)
    try:
        for thread in in_flight:
            thread.join(timeout=STALL_S + 60)
            assert not thread.is_alive(), "a request in flight on the stopped engine never ended"
        for _, response in answers:
            assert_retryable(response, 503, "engine_overloaded")
            assert "unavailable" in response.json()["error"]["message"]
        first_503_s = min(at for at, _ in answers) - stopped_at
        last_503_s = max(at for at, _ in answers) - stopped_at
        assert STALL_S - 1 < first_503_s and last_503_s < STALL_S + 10, (first_503_s, last_503_s)
        replica.wait(timeout=30)  # the replica ended itself, so Serve replaces it
        statuses, recovered_s = recover(faults_app, api_key, stopped_at)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # nothing is left stopped
            core.send_signal(signal.SIGCONT)
            core.kill()
    print(
        f"engine core stopped: first 503 after {first_503_s:.1f} s, last after {last_503_s:.1f} s, "
        f"served again after {recovered_s:.1f} s; statuses meanwhile {statuses}"
    )
    assert _engine_core_of()[0].pid != replica.pid


def recover(base: str, api_key: str, since: float) -> tuple[list[int], float]:
    """Requests until one succeeds; every refusal meanwhile is 429/503 + Retry-After, bounded."""
    statuses = []
    while True:
        response = chat(base, api_key, timeout=REQUEST_BOUND_S)
        statuses.append(response.status_code)
        if response.status_code == 200:
            return statuses, time.monotonic() - since
        assert response.status_code in (429, 503), response.text
        assert int(response.headers["retry-after"]) >= 1
        assert time.monotonic() - since < RECOVERY_BOUND_S, statuses
        time.sleep(1)


@pytest.fixture(scope="module")
def draining_app(served, api_key):
    import fake_engine
    import ray.cloudpickle

    from serve_app.app import build_pipeline
    from serve_app.config import AppConfig

    ray.cloudpickle.register_pickle_by_value(fake_engine)

    def build(llm_cpus: float):
        config = AppConfig.model_validate(
            cpu_app_args(
                served_model_name="draining",
                ingress={"api_keys": [api_key], "num_cpus": 0.05, "graceful_shutdown_timeout_s": 30},
                image_pool={"num_cpus": 0.05},
                llm={"num_cpus": llm_cpus, "graceful_shutdown_timeout_s": 30},
            )
        )
        return build_pipeline(config, fake_engine.FakeSlowEngine)

    url = deploy(build(0.05), name="draining", base=served, route_prefix="/draining")
    return url, build


def test_redeploy_lets_in_flight_streams_finish_while_new_requests_go_to_the_new_replica(draining_app, api_key):
    from ray import serve

    url, build = draining_app
    body = {"model": "draining", "messages": [user_message(data_url(jpeg_bytes(3, (64, 48))))], "stream": True}
    headers = {"Authorization": f"Bearer {api_key}"}
    texts: list[str] = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200
        redeploy = None
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                texts.append("[DONE]")
                break
            event = json.loads(line[len("data: "):])
            assert "error" not in event, event
            texts.append(event["choices"][0]["delta"].get("content") or "")
            if redeploy is None and len(texts) >= 3:
                redeploy = threading.Thread(
                    target=serve.run,
                    args=(build(0.06),),
                    kwargs={"name": "draining", "route_prefix": "/draining"},
                    daemon=True,
                )
                redeploy.start()
    old = {t.split(":")[0] for t in texts if ":" in t}
    assert len(old) == 1 and texts[-1] == "[DONE]"
    assert sum(":" in t for t in texts) == 16  # every piece of the answer arrived
    redeploy.join(timeout=120)
    assert not redeploy.is_alive()
    after = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers, timeout=60)
    assert after.status_code == 200
    assert after.json()["choices"][0]["message"]["content"].split(":")[0] not in old  # a new replica answered
