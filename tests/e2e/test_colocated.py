"""``ingress.colocated``: the OpenAI API served by the LLM replicas themselves, beside the session's app.

A stand-in engine (tests/e2e/fake_engine.py) keeps these apps' LLM replicas to a sliver of a CPU,
as the session runs one real engine; what is tested is the wiring: the app has no ingress
deployment, its replica answers the SDK (with the pool's images), checks keys, refuses on
admission with 429 + Retry-After, and a client that goes away aborts the engine's request. With
two replicas, a request one replica's admission refuses is answered by the other, and 429 comes
only once both have refused.
"""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from chat_payloads import data_url, jpeg_bytes, user_message
from serve_support import cpu_app_args, deploy, llm_load

from serve_app.compat.ray_serve import haproxy_enabled

MODEL = "tiny-colocated"
BOUND_S = 60

# Only HAProxy asks a ReplicaPicker; behind Serve's Python proxy nothing keys the route (load alone).
haproxy_only = pytest.mark.skipif(not haproxy_enabled(), reason="behind HAProxy only (make test-haproxy runs it)")


def _config(api_key: str, replicas: int = 1):
    from serve_app.config import AppConfig

    return AppConfig.model_validate(
        cpu_app_args(
            served_model_name=MODEL,
            ingress={"api_keys": [api_key], "colocated": True, "replica_header": True},
            image_pool={"num_cpus": 0.05, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
            llm={
                "num_cpus": 0.05,
                "autoscaling": {"min_replicas": replicas, "max_replicas": replicas},
                # 100 output tokens/s: a 2000-token answer alone is 20 s of work, past the 5 s limit.
                "admission": {"max_pending_s": 5, "prefill_tokens_per_s": 100000, "decode_tokens_per_s": 100,
                              "output_tokens_estimate": 4096},
            },
        )
    )


def _deploy(served: str, api_key: str, name: str, replicas: int) -> str:
    import fake_engine
    import ray.cloudpickle

    from serve_app.app import build_pipeline

    ray.cloudpickle.register_pickle_by_value(fake_engine)
    return deploy(build_pipeline(_config(api_key, replicas), fake_engine.FakeSlowEngine), name=name,
                  base=served, route_prefix=f"/{name}")


@pytest.fixture(scope="module")
def colocated_app(served, api_key):
    return _deploy(served, api_key, "colocated", replicas=1)


@pytest.fixture(scope="module")
def colocated_pair(served, api_key):
    return _deploy(served, api_key, "colocated-pair", replicas=2)


def _engine_requests() -> int:
    return llm_load("colocated")["engine_requests"]


def test_the_app_is_the_llm_deployment_and_the_pool_only(colocated_app):
    from ray import serve

    deployments = serve.status().applications["colocated"].deployments
    assert set(deployments) == {"PixtralServer", "ImagePool"}
    assert httpx.get(colocated_app + "/ready", timeout=10).json() == {"status": "ready"}


def test_the_llm_replica_answers_the_sdk_with_the_pools_images(colocated_app, api_key):
    client = OpenAI(base_url=colocated_app + "/v1", api_key=api_key, timeout=BOUND_S, max_retries=0)
    messages = [user_message(data_url(jpeg_bytes(5, (64, 48))))]
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert sum(":" in piece for piece in pieces) == 16  # the engine's 16 chunks, in order
    assert [int(piece.split(":")[1]) for piece in pieces if ":" in piece] == list(range(16))
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 16


def test_keys_and_admission_are_checked_by_the_llm_replica(colocated_app, api_key):
    url = colocated_app + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000}
    refused = httpx.post(url, json=body, timeout=BOUND_S)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    headers = {"Authorization": f"Bearer {api_key}"}
    # The first request holds an estimated 20 s of work (past the 5 s limit): the next one is refused.
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=BOUND_S) as first:
        assert first.status_code == 200
        busy = httpx.post(url, json=body, headers=headers, timeout=BOUND_S)
    assert busy.status_code == 429, busy.text
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["error"]["code"] == "server_overloaded"
    # The first stream's client has gone: its work leaves the replica (behind HAProxy, a moment later).
    left = time.monotonic()
    while _engine_requests() != 0:
        assert time.monotonic() - left < 10, "the engine still holds a request whose client went away"
        time.sleep(0.2)


def test_a_client_that_goes_away_aborts_the_engines_request(colocated_app, api_key):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": True}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.stream("POST", colocated_app + "/v1/chat/completions", json=body, headers=headers,
                      timeout=BOUND_S) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        assert _engine_requests() == 1
    left = time.monotonic()
    # The stream had ~7 s to go (16 chunks 0.5 s apart); its end must come from the disconnect.
    while _engine_requests() != 0:
        assert time.monotonic() - left < 4, "the engine still runs the request of a client that went away"
        time.sleep(0.2)


def test_a_request_one_replica_refuses_is_answered_by_the_other(colocated_pair, api_key):
    from ray import serve

    deployments = set(serve.status().applications["colocated-pair"].deployments)
    # Behind HAProxy, the ReplicaPicker tells it which replica takes each POST.
    assert deployments == {"PixtralServer", "ImagePool"} | ({"ReplicaPicker"} if haproxy_enabled() else set())
    url = colocated_pair + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000, "stream": True}
    # The same conversation (and, behind Serve's proxy, the same routing key: RoutingTag's format
    # in x-session-id) goes to the same replica first; each request holds an estimated 20 s of work,
    # past the 5 s limit, so that replica refuses the second and hands it on.
    headers = {"Authorization": f"Bearer {api_key}", "x-session-id": "|one-conversation|"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=BOUND_S) as first:
        assert first.status_code == 200
        with httpx.stream("POST", url, json=body, headers=headers, timeout=BOUND_S) as second:
            assert second.status_code == 200, second.read()
            assert first.headers["x-pixtral-replica"] != second.headers["x-pixtral-replica"]
            third = httpx.post(url, json=body, headers=headers, timeout=BOUND_S)
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "server_overloaded"
    assert int(third.headers["retry-after"]) >= 1


@haproxy_only
def test_behind_haproxy_every_turn_of_a_conversation_reaches_one_replica(colocated_pair, api_key):
    headers = {"Authorization": f"Bearer {api_key}"}
    seen = {}
    for conversation in range(6):
        messages = [user_message(data_url(jpeg_bytes(conversation, (64, 48))), text=f"conversation {conversation}")]
        for turn in range(3):
            body = {"model": MODEL, "messages": messages, "max_tokens": 16, "stream": True}
            # The replica is named in the headers, before the first chunk: the stream is left there.
            with httpx.stream("POST", colocated_pair + "/v1/chat/completions", json=body, headers=headers,
                              timeout=BOUND_S) as response:
                assert response.status_code == 200, response.read()
                seen.setdefault(conversation, set()).add(response.headers["x-pixtral-replica"])
            messages += [{"role": "assistant", "content": f"answer {turn}"},
                         {"role": "user", "content": f"and turn {turn + 1}?"}]
    assert all(len(replicas) == 1 for replicas in seen.values()), seen


@haproxy_only
def test_behind_haproxy_a_picker_that_dies_is_covered_by_the_other(colocated_pair, api_key):
    import ray
    from ray import serve

    # Two per HAProxy node (RAY_SERVE_INGRESS_ROUTER_REPLICAS_PER_NODE, as the image sets it).
    pickers = serve.status().applications["colocated-pair"].deployments["ReplicaPicker"]
    assert pickers.replica_states.get("RUNNING") == 2, pickers
    names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
             if "colocated-pair#ReplicaPicker#" in actor["name"]]
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=False)
    headers = {"Authorization": f"Bearer {api_key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 16, "stream": True}
    for _ in range(6):  # HAProxy takes the pickers in turn: half of these go to the dead one first
        with httpx.stream("POST", colocated_pair + "/v1/chat/completions", json=body, headers=headers,
                          timeout=BOUND_S) as response:
            assert response.status_code == 200, response.read()


@haproxy_only
@pytest.mark.parametrize("megabytes", [10, 20])
def test_behind_haproxy_a_body_too_big_for_the_picker_still_gets_the_apps_answer(colocated_pair, api_key, megabytes):
    """HAProxy hands the picker at most 8 MiB of a body (it routes a longer one by load); the replica still
    reads the whole body and answers: 400 for a prompt past the context (10 MB), 400 request_too_large past
    ingress.max_request_bytes (20 MB), each an OpenAI error body, never HAProxy's own 503."""
    text = "word " * (megabytes * 200_000)
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    response = httpx.post(colocated_pair + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {api_key}"}, timeout=BOUND_S)
    assert response.status_code == 400, response.text[:300]
    expected = "request_too_large" if megabytes > 16 else "context_length_exceeded"
    assert response.json()["error"]["code"] == expected
