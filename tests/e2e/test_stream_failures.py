"""A failure after the first streamed byte: one SSE error event, then [DONE]; never a hang.

The real engine runs everywhere else; here the engine is a stand-in because the failure
(an engine crash mid-stream) has to be injected. Everything around it is the real app in
the session's Ray.
"""

from __future__ import annotations

import json

import httpx
import pytest

from chat_payloads import data_url, jpeg_bytes, user_message


@pytest.fixture(scope="module")
def failing_app(served, tiny_model, api_key):
    import fake_engine
    import ray.cloudpickle

    from serve_support import cpu_app_args, deploy

    from serve_app.app import build_pipeline
    from serve_app.config import AppConfig

    ray.cloudpickle.register_pickle_by_value(fake_engine)
    config = AppConfig.model_validate(
        cpu_app_args(served_model_name="failing", ingress={"api_keys": [api_key]}, llm={"num_cpus": 0.1})
    )
    app = build_pipeline(config, fake_engine.FakeFailingEngine)
    return deploy(app, name="failing", base=served, route_prefix="/failing")


def post(url, api_key, **body):
    return httpx.post(
        url + "/v1/chat/completions",
        json={"model": "failing", "messages": [user_message(data_url(jpeg_bytes(1)))], **body},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=60,
    )


def test_stream_ends_with_one_error_event(failing_app, api_key):
    response = post(failing_app, api_key, stream=True)
    assert response.status_code == 200
    events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    bodies = [json.loads(e) for e in events[:-1]]
    contents = [b["choices"][0]["delta"].get("content") for b in bodies if b.get("choices")]
    assert "part0 " in contents and "part1 " in contents
    errors = [b for b in bodies if "error" in b]
    assert len(errors) == 1
    assert errors[0]["error"]["type"] == "server_error"
    assert_no_internals(errors[0]["error"], bodies[0]["id"])


def test_non_streaming_request_gets_a_500_body_without_internals(failing_app, api_key):
    response = post(failing_app, api_key)
    assert response.status_code == 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert_no_internals(error)


def assert_no_internals(error: dict, request_id: str | None = None) -> None:
    """The client learns that the server failed and which request, never how."""
    for internal in ("injected", "crashed", "RuntimeError", "Traceback", "fake_engine", ".py"):
        assert internal not in error["message"]
    assert "request id chatcmpl-" in error["message"]
    if request_id is not None:
        assert request_id in error["message"]
