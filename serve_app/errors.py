"""The one error family of pixtral-serve.

Every failure a client can cause, or that a client must be told about, is a
``PixtralServeError``. Only the ingress turns these into OpenAI error bodies
(``serve_app.api.errors``); every other stage raises them and nothing else
decides an HTTP status.

    PixtralServeError                      500 server_error
    ├── InvalidRequestError                400 invalid_request_error
    │   ├── UnknownModelError              400 model_not_found
    │   ├── ImageError                     400 (names the image index)
    │   │   ├── UnsupportedImageSourceError  400 (file://, ftp://, bare paths)
    │   │   ├── ImageDecodeError           400 (not an image, truncated, bomb)
    │   │   ├── ImageTooLargeError         413 (bytes or pixels past a cap)
    │   │   ├── ImageNotFoundError         400 (404 from the host; S3 key missing, denied
    │   │   │                                   or bucket not allowed: one answer for all three)
    │   │   ├── ImageHostNotFoundError     400 (the image host does not resolve; not retried)
    │   │   ├── ImageForbiddenError        403 (host not allowed, SSRF guard, host's 401/403)
    │   │   ├── ImageFetchTimeoutError     504 (slow or unreachable source)
    │   │   ├── ImageFetchError            502 (host kept failing: 5xx after retries)
    │   │   └── ImageSourceUnavailableError 502 (our S3 credentials/config fail; logged)
    │   └── TooManyImagesError             400
    ├── AuthenticationError                401
    ├── ServerOverloadedError              429 server_overloaded (a queue is full, or the
    │   │                                      engine holds more work than admission allows)
    │   └── AdmissionRefusedError          429 (one LLM replica's admission: the ingress first
    │                                          tries the replicas that have not refused)
    ├── ServiceUnavailableError            503 service_unavailable (no ingress replica runs:
    │                                          Serve's proxy answers for the app)
    └── EngineError                        500 (the engine failed this request)
        ├── EngineOverloadedError          503 (engine restarting, replica unavailable)
        └── ImagesLostError                503 images_lost (Ray no longer has the request's pixels;
                                               the ingress prepares them once more, by value)

429s and 503s carry ``retry_after_s``; the ingress sends it as ``Retry-After``.
The classes pickle by their keyword arguments so that they survive a Ray
DeploymentHandle hop with their status, param, code and retry-after intact.
"""

from __future__ import annotations

import math
from typing import Any


class PixtralServeError(Exception):
    """Base of every error this service raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = "internal_error"
    default_retry_after_s: float | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s if retry_after_s is not None else self.default_retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.param, self.code, self.retry_after_s))

    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds, rounded up (RFC 9110 delay-seconds), when set."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


def _rebuild(
    cls: type[PixtralServeError],
    message: str,
    param: str | None,
    code: str | None,
    retry_after_s: float | None = None,
):
    return cls(message, param=param, code=code, retry_after_s=retry_after_s)


class InvalidRequestError(PixtralServeError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class UnknownModelError(InvalidRequestError):
    default_code = "model_not_found"


class TooManyImagesError(InvalidRequestError):
    default_code = "too_many_images"


class ImageError(InvalidRequestError):
    """A problem with one image of the request; ``param`` names which one."""

    default_code = "invalid_image"


class UnsupportedImageSourceError(ImageError):
    default_code = "unsupported_image_url"


class ImageDecodeError(ImageError):
    default_code = "invalid_image"


class ImageTooLargeError(ImageError):
    status_code = 413
    default_code = "image_too_large"


class ImageNotFoundError(ImageError):
    default_code = "image_not_found"


class ImageHostNotFoundError(ImageError):
    default_code = "image_host_not_found"


class ImageForbiddenError(ImageError):
    status_code = 403
    error_type = "permission_error"
    default_code = "image_forbidden"


class ImageFetchTimeoutError(ImageError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "image_fetch_timeout"


class ImageFetchError(ImageError):
    """The image host failed in a way that is not the client's fault (5xx after retries)."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "image_fetch_failed"


class ImageSourceUnavailableError(ImageError):
    """Our side of an image source is broken (S3 credentials or configuration): not the client's fault."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "image_source_unavailable"


class AuthenticationError(PixtralServeError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ServerOverloadedError(PixtralServeError):
    """Refused before any work: a bounded queue is full or admission control says no.

    429 is what OpenAI's SDK (and most clients) back off and retry on.
    """

    status_code = 429
    error_type = "server_error"
    default_code = "server_overloaded"
    default_retry_after_s = 1.0


class AdmissionRefusedError(ServerOverloadedError):
    """One LLM replica's admission refused the request; another replica may still take it."""


class ServiceUnavailableError(PixtralServeError):
    """No ingress replica is running (the application is starting, updating or being replaced):
    nothing of ours saw the request, so it says nothing about the engine."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    default_retry_after_s = 5.0


class EngineError(PixtralServeError):
    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"


class EngineOverloadedError(EngineError):
    """The engine or its replica is unavailable for now (restarting, replaced); retry later."""

    status_code = 503
    default_code = "engine_overloaded"
    default_retry_after_s = 5.0


class ImagesLostError(EngineError):
    """The pixels an image pool replica prepared for this request are gone before the LLM replica
    read them (that pool replica ended, or Ray's reference counting freed them early); the ingress
    prepares them once more and sends them by value, and a client's own retry prepares them anew."""

    status_code = 503
    default_code = "images_lost"
    default_retry_after_s = 1.0


__all__ = [
    "AdmissionRefusedError",
    "AuthenticationError",
    "EngineError",
    "EngineOverloadedError",
    "ImageDecodeError",
    "ImageError",
    "ImageFetchError",
    "ImageFetchTimeoutError",
    "ImageForbiddenError",
    "ImageHostNotFoundError",
    "ImageNotFoundError",
    "ImageSourceUnavailableError",
    "ImageTooLargeError",
    "ImagesLostError",
    "InvalidRequestError",
    "PixtralServeError",
    "ServerOverloadedError",
    "ServiceUnavailableError",
    "TooManyImagesError",
    "UnknownModelError",
    "UnsupportedImageSourceError",
]
