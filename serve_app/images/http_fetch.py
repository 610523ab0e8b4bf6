"""The https:// (and opt-in http://) image source, with every limit of ``HttpSourceConfig``.

Policy lives here, decoding does not: scheme, domain allow-list and SSRF are
re-checked on every redirect hop; the byte cap is enforced from
Content-Length and again while streaming. Fetches ask for ``identity`` encoding; a
body that still arrives gzip- or deflate-encoded is decoded here a piece at a time,
never producing more than the cap allows, and both its encoded and decoded bytes count
against the cap (httpx's own decoding would inflate a whole network read at once, past
the cap before it is checked). 5xx, 408, 429 and connection
errors are retried with exponential backoff inside one total deadline; other
4xx are permanent.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from serve_app.config import HttpSourceConfig
from serve_app.errors import (
    ImageError,
    ImageFetchError,
    ImageFetchTimeoutError,
    ImageForbiddenError,
    ImageNotFoundError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images.sources import ImageSource, register_source, short
from serve_app.images.ssrf import PinnedBackend, PinnedTransport, Resolver, blocked_reason, literal_ip

_REDIRECTS = {301, 302, 303, 307, 308}
_TRANSIENT_STATUS = {408, 429}
_TRANSIENT_ERRORS = (httpx.TransportError,)  # connect/read/write/protocol errors and their timeouts


class _Retryable(Exception):
    def __init__(self, final: ImageError):
        self.final = final


@register_source
class HttpSource(ImageSource):
    """Fetches image bytes over HTTP(S); one connection pool per instance.

    ``_resolver`` replaces DNS (tests, or a caching resolver); the SSRF guard
    applies to whatever it returns.
    """

    schemes = ("https", "http")
    hint = "https://"
    config_section = HttpSourceConfig
    clients = ("_resolver",)

    def __init__(self, config: HttpSourceConfig, *, _resolver: Resolver | None = None):
        self._config = config
        transport = PinnedTransport(PinnedBackend(block_private=config.block_private_addresses, resolver=_resolver))
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(config.total_timeout_s, connect=config.connect_timeout_s),
            headers={"User-Agent": "pixtral-serve-image-fetch/1", "Accept": "image/*", "Accept-Encoding": "identity"},
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
        decoder = _decoder(resp.headers.get("content-encoding", ""))
        chunks: list[bytes] = []
        total = 0
        async for chunk in _capped_raw(resp.aiter_raw(), cap):
            for piece in decoder.feed(chunk, cap - total + 1):
                total += len(piece)
                if total > cap:
                    raise ImageTooLargeError(f"image exceeds {cap} bytes")
                chunks.append(piece)
        tail = decoder.finish()
        if total + len(tail) > cap:
            raise ImageTooLargeError(f"image exceeds {cap} bytes")
        chunks.append(tail)
        return b"".join(chunks)


async def _capped_raw(raw: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    """The body as it arrives, refused once more than ``cap`` bytes came (encoded or not)."""
    total = 0
    async for chunk in raw:
        total += len(chunk)
        if total > cap:
            raise ImageTooLargeError(f"image exceeds {cap} bytes")
        yield chunk


class _Identity:
    def feed(self, data: bytes, limit: int) -> list[bytes]:
        return [data]

    def finish(self) -> bytes:
        return b""


class _Inflate:
    """gzip or deflate undone a piece at a time: no call produces more than ``limit`` bytes."""

    def __init__(self, encoding: str):
        self._encoding = encoding
        self._gzip = encoding in ("gzip", "x-gzip")
        self._zlib: Any = None  # deflate: zlib-wrapped or raw, told by the first byte

    def feed(self, data: bytes, limit: int) -> list[bytes]:
        if self._zlib is None:
            if not data:
                return []
            if self._gzip:
                wbits = 16 + zlib.MAX_WBITS
            else:  # RFC 9110 says zlib-wrapped; some servers send raw deflate
                wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(wbits)
        pieces = []
        try:
            while data:
                piece = self._zlib.decompress(data, max(1, limit))
                data = self._zlib.unconsumed_tail
                limit -= len(piece)
                pieces.append(piece)
                if limit <= 0:
                    break  # the caller refuses the body now: the rest is never decoded
        except zlib.error:
            raise ImageFetchError(f"image host sent a body that is not valid {self._encoding}") from None
        return pieces

    def finish(self) -> bytes:
        if self._zlib is None:
            return b""
        try:
            tail = self._zlib.flush()
        except zlib.error:
            tail = None
        if tail is None or not self._zlib.eof:  # corrupt, or cut short
            raise ImageFetchError(f"image host sent a body that is not valid {self._encoding}")
        return tail


def _decoder(content_encoding: str) -> _Identity | _Inflate:
    """The decoder for a Content-Encoding header; one gzip or deflate layer at most."""
    encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip().lower() not in ("", "identity")]
    if not encodings:
        return _Identity()
    if len(encodings) == 1 and encodings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflate(encodings[0])
    raise ImageFetchError(f"image host sent an unsupported Content-Encoding ({', '.join(encodings)[:40]})")
