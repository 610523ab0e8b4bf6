"""https:// (and opt-in http://) image fetches with every limit of ``FetchConfig``.

Policy lives here, decoding does not: scheme, domain allow-list and SSRF are
re-checked on every redirect hop; the byte cap is enforced from
Content-Length and again while streaming; 5xx, 408, 429 and connection
errors are retried with exponential backoff inside one total deadline; other
4xx are permanent.
"""

from __future__ import annotations

import asyncio

import httpx

from serve_app.config import FetchConfig
from serve_app.errors import (
    ImageError,
    ImageFetchError,
    ImageFetchTimeoutError,
    ImageForbiddenError,
    ImageNotFoundError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images.sources import short
from serve_app.images.ssrf import PinnedBackend, PinnedTransport, Resolver, blocked_reason, literal_ip

_REDIRECTS = {301, 302, 303, 307, 308}
_TRANSIENT_STATUS = {408, 429}
_TRANSIENT_ERRORS = (httpx.TransportError,)  # connect/read/write/protocol errors and their timeouts


class _Retryable(Exception):
    def __init__(self, final: ImageError):
        self.final = final


class HttpFetcher:
    """Fetches image bytes over HTTP(S); one connection pool per instance.

    ``resolver`` replaces DNS (tests, or a caching resolver); the SSRF guard
    applies to whatever it returns.
    """

    def __init__(self, config: FetchConfig, *, resolver: Resolver | None = None):
        self._config = config
        transport = PinnedTransport(PinnedBackend(block_private=config.block_private_addresses, resolver=resolver))
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(config.total_timeout_s, connect=config.connect_timeout_s),
            headers={"User-Agent": "pixtral-serve-image-fetch/1", "Accept": "image/*"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def check_url(self, url: httpx.URL, original: str, *, redirected: bool = False) -> None:
        """Scheme, allow-list and literal-IP SSRF checks that need no network.

        Refusals name the host only when the client sent it; a redirect's target is not named."""
        cfg = self._config
        if url.scheme == "http" and not cfg.allow_http:
            raise UnsupportedImageSourceError(f"plain http:// image URLs are not allowed: {short(original)}")
        if url.scheme not in ("http", "https"):
            raise UnsupportedImageSourceError(f"unsupported image URL scheme {url.scheme!r} in {short(original)}")
        host = url.host.lower().rstrip(".")
        if not host:
            raise UnsupportedImageSourceError(f"image URL has no host: {short(original)}")
        named = "a redirect's target host" if redirected else f"image host {host!r}"
        if cfg.allowed_domains and not any(
            host == d.lower().rstrip(".") or host.endswith("." + d.lower().strip(".")) for d in cfg.allowed_domains
        ):
            raise ImageForbiddenError(f"{named} is not in the allowed domains")
        ip = literal_ip(host)
        if cfg.block_private_addresses and ip is not None:
            reason = blocked_reason(ip)
            if reason is not None:
                raise ImageForbiddenError(f"{named} is {reason}; refusing to fetch")

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` after redirects, or a typed ImageError."""
        cfg = self._config
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise UnsupportedImageSourceError(f"image URL is malformed: {short(url)}") from None
        try:
            async with asyncio.timeout(cfg.total_timeout_s):
                for hop in range(cfg.max_redirects + 1):
                    self.check_url(current, url, redirected=hop > 0)
                    result = await self._get_with_retries(current, url)
                    if isinstance(result, bytes):
                        return result
                    current = result
        except TimeoutError:
            raise ImageFetchTimeoutError(
                f"fetching image {short(url)} took longer than {cfg.total_timeout_s}s"
            ) from None
        raise ImageError(f"image URL redirected more than {cfg.max_redirects} times: {short(url)}")

    async def _get_with_retries(self, current: httpx.URL, original: str) -> bytes | httpx.URL:
        cfg = self._config
        backoff = cfg.retry_backoff_s
        for attempt in range(cfg.retries + 1):
            try:
                return await self._get_once(current, original)
            except _Retryable as exc:
                if attempt == cfg.retries:
                    raise exc.final from None
            await asyncio.sleep(backoff)
            backoff *= 2
        raise AssertionError("unreachable")

    async def _get_once(self, current: httpx.URL, original: str) -> bytes | httpx.URL:
        cfg = self._config
        try:
            async with self._client.stream("GET", current) as resp:
                status = resp.status_code
                if status in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise ImageFetchError(f"image host answered {status} without a Location: {short(original)}")
                    try:
                        return current.join(location)
                    except (httpx.InvalidURL, ValueError):
                        raise ImageFetchError(f"image host redirected to a malformed URL: {short(location)}") from None
                if status >= 500 or status in _TRANSIENT_STATUS:
                    raise _Retryable(ImageFetchError(f"image host answered {status} for {short(original)}"))
                if status in (404, 410):
                    raise ImageNotFoundError(f"image not found ({status}) at {short(original)}")
                if status in (401, 403):
                    raise ImageForbiddenError(f"image host refused access ({status}) to {short(original)}")
                if status >= 400 or status < 200 or status >= 300:
                    raise ImageError(f"image host answered {status} for {short(original)}")
                return await self._read_capped(resp)
        except httpx.TimeoutException:
            raise _Retryable(ImageFetchTimeoutError(f"image host timed out: {short(original)}")) from None
        except _TRANSIENT_ERRORS as exc:
            raise _Retryable(
                ImageFetchTimeoutError(f"image host unreachable ({type(exc).__name__}): {short(original)}")
            ) from None
        except httpx.HTTPError as exc:
            raise ImageFetchError(f"fetching image failed ({type(exc).__name__}): {short(original)}") from None

    async def _read_capped(self, resp: httpx.Response) -> bytes:
        cap = self._config.max_image_bytes
        length = resp.headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            raise ImageTooLargeError(f"image exceeds {cap} bytes (Content-Length {int(length)})")
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.aiter_bytes():
            total += len(chunk)
            if total > cap:
                raise ImageTooLargeError(f"image exceeds {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
