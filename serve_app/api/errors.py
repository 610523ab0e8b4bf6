"""The one place where exceptions become OpenAI error bodies and HTTP statuses."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from serve_app.compat.ray_serve import REPLICA_GONE, BackPressureError
from serve_app.errors import (
    EngineOverloadedError,
    InvalidRequestError,
    PixtralServeError,
    ServerOverloadedError,
)

logger = logging.getLogger(__name__)


def unwrap_cause(exc: BaseException) -> BaseException:
    """The innermost ``cause`` of Ray's wrappers (RayTaskError and friends), as raised."""
    seen = 0
    while seen < 5:
        cause = getattr(exc, "cause", None)
        if cause is None or not isinstance(cause, BaseException):
            break
        exc = cause
        seen += 1
    return exc


def unwrap(exc: BaseException) -> BaseException:
    """The exception a replica raised, out of Ray's wrappers around a DeploymentHandle call.

    Ray Serve's own refusals become ours: ``BackPressureError`` (a deployment's
    ``max_queued_requests`` is reached) is a 429 with the deployment's configured
    ``backpressure_config.retry_after_s``; a dead or unreachable replica is a 503.
    """
    exc = unwrap_cause(exc)
    if isinstance(exc, BackPressureError):
        return ServerOverloadedError(
            "the server is at capacity (a queue inside is full); retry the request later",
            retry_after_s=getattr(exc, "retry_after_s", None),
        )
    if isinstance(exc, REPLICA_GONE):
        return EngineOverloadedError("a replica is unavailable; retry the request")
    return exc


def as_service_error(exc: BaseException, request_id: str | None = None) -> PixtralServeError:
    """Our typed errors as they are; pydantic validation as a 400; anything else is a bug or an
    outage: logged with the request id, and a 500 that carries no internal text."""
    exc = unwrap(exc)
    if isinstance(exc, PixtralServeError):
        return exc
    if isinstance(exc, ValidationError):
        return InvalidRequestError(_describe_validation(exc), param=_first_param(exc))
    logger.error("unexpected error in request %s", request_id or "-", exc_info=exc)
    where = f" (request id {request_id})" if request_id else ""
    return PixtralServeError(f"internal server error{where}")


def error_response(exc: BaseException, request_id: str | None = None) -> JSONResponse:
    error = as_service_error(exc, request_id)
    return JSONResponse(error.to_body(), status_code=error.status_code, headers=error.headers())


def sse_error_event(exc: BaseException, request_id: str | None = None) -> str:
    """A failure after the first streamed byte: one SSE event carrying the error body."""
    return f"data: {json.dumps(as_service_error(exc, request_id).to_body())}\n\n"


def _loc(error: dict[str, Any]) -> str:
    parts: list[str] = []
    for item in error.get("loc", ()):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _first_param(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return _loc(errors[0]) or None if errors else None


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = _loc(error)
        message = error.get("msg", "invalid")
        if error.get("type") == "extra_forbidden":
            message = "unknown or unsupported field"
        parts.append(f"{where}: {message}" if where else message)
    return "invalid request: " + "; ".join(parts)
