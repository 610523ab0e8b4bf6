"""Serve's proxy's own plain-text refusals become OpenAI bodies (serve_app.api.proxy_errors), no Ray."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.middleware import Middleware

from serve_app.api.proxy_errors import OpenAIErrorBodies, openai_error_bodies


def run(messages: list[dict]) -> list[dict]:
    async def app(scope, receive, send):
        for message in messages:
            await send(message)

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(OpenAIErrorBodies(app)({"type": "http"}, None, send))
    return sent


def refusal(status: int, *extra: tuple[bytes, bytes]) -> list[dict]:
    """What Ray Serve's proxy sends (http_util.convert_object_to_asgi_messages of its message)."""
    headers = [[b"content-type", b"text/plain; charset=utf-8"], *[list(h) for h in extra]]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": b"Request dropped due to backpressure (num_queued_requests=4)."},
    ]


@pytest.mark.parametrize(
    "status, extra, code, retry_after",
    [
        (429, [(b"retry-after", b"2")], "server_overloaded", b"2"),
        (429, [], "server_overloaded", b"1"),
        (503, [], "service_unavailable", b"5"),
    ],
)
def test_the_proxys_plain_text_refusals_become_openai_bodies(status, extra, code, retry_after):
    start, body = run(refusal(status, *extra))
    assert start["status"] == status
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"retry-after"] == retry_after
    assert int(headers[b"content-length"]) == len(body["body"])
    error = json.loads(body["body"])["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    assert "backpressure" not in error["message"]


def test_the_apps_own_responses_pass_untouched():
    ours = [
        {"type": "http.response.start", "status": 429, "headers": [[b"content-type", b"application/json"]]},
        {"type": "http.response.body", "body": b'{"error": {}}'},
    ]
    stream = [
        {"type": "http.response.start", "status": 200, "headers": [[b"content-type", b"text/plain"]]},
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"b"},
    ]
    assert run(ours) == ours
    assert run(stream) == stream


def test_the_callback_returns_starlette_middleware_as_serve_checks():
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert validate_http_proxy_callback_return(openai_error_bodies())[0].cls is OpenAIErrorBodies
    assert isinstance(openai_error_bodies()[0], Middleware)


def test_serve_installs_the_middleware_from_the_environment_as_its_proxy_does():
    """The steps Serve's proxy actor takes at start (read the env at import, call the callback,
    wrap its ASGI app), in a fresh interpreter with the variable our launch paths set."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import asyncio, json
from ray.serve.config import HTTPOptions
from ray.serve._private.http_util import _apply_middlewares, configure_http_middlewares

async def proxy(scope, receive, send):
    await send({"type": "http.response.start", "status": 429,
                "headers": [[b"content-type", b"text/plain; charset=utf-8"], [b"retry-after", b"3"]]})
    await send({"type": "http.response.body", "body": b"Request dropped due to backpressure."})

sent = []
async def send(message):
    sent.append(message)

async def receive():
    return {"type": "http.request", "body": b""}

app = _apply_middlewares(proxy, configure_http_middlewares(HTTPOptions()).middlewares)
asyncio.run(app({"type": "http", "headers": [], "path": "/", "method": "POST"}, receive, send))
print(json.dumps({"status": sent[0]["status"], "body": json.loads(sent[1]["body"])}))
"""
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.api.proxy_errors:openai_error_bodies",
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 429
    assert result["body"]["error"]["code"] == "server_overloaded"
