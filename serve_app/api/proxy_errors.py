"""Serve's proxy answers some requests itself; this makes those answers OpenAI error bodies too.

When every ingress replica is at ``max_ongoing_requests`` and the proxy's queue for them
(``ingress.max_queued_requests``) is full, Ray Serve's HTTP proxy refuses the request with
429 + ``Retry-After`` and a plain-text body, and it answers 503 in plain text while the
application has no ingress replica at all. ``OpenAIErrorBodies`` is an ASGI middleware for
that proxy: those two plain-text answers become the same ``{"error": {...}}`` bodies the
ingress sends (``serve_app.api.errors``), with their status and ``Retry-After`` kept.

Serve installs proxy middlewares from the import path in the environment variable
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` of the Ray processes
(``serve_app.api.proxy_errors:openai_error_bodies``), set wherever Ray is started.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.middleware import Middleware

from serve_app.errors import PixtralServeError, ServerOverloadedError, ServiceUnavailableError

_PROXY_STATUSES = {429, 503}


def proxy_error(status: int, retry_after: str | None) -> PixtralServeError:
    """Our error for one of the proxy's own refusals."""
    seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
    if status == 429:
        return ServerOverloadedError(
            "the server is at capacity (every ingress replica is busy); retry the request later", retry_after_s=seconds
        )
    # Serve's proxy answers 503 itself only for DeploymentUnavailableError: no ingress replica.
    return ServiceUnavailableError(
        "no ingress replica is running (the service is starting or being replaced); retry the request",
        retry_after_s=seconds,
    )


class OpenAIErrorBodies:
    """Rewrites the proxy's plain-text 429/503 answers; every other response passes untouched."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict | None = None

        async def rewrite(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in _PROXY_STATUSES:
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    held = message
                    return
            if held is not None and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the proxy's refusals are one short body; drop its pieces
                status = held["status"]
                retry_after = dict(held.get("headers") or []).get(b"retry-after")
                error = proxy_error(status, retry_after.decode() if retry_after else None)
                body = json.dumps(error.to_body()).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
                held = None
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def openai_error_bodies() -> list[Middleware]:
    """The callback Serve's proxy calls (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(OpenAIErrorBodies)]
