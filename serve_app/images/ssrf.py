"""SSRF guard: which addresses an image fetch may connect to, enforced at connect time.

The check runs on the addresses DNS actually returned, and the TCP connection
is opened to the address that was checked (not re-resolved), so a DNS answer
that changes between check and connect (rebinding) cannot slip through.
httpcore hands TLS the URL's host name for SNI and certificate checks, so
pinning the IP does not weaken TLS.

Only public extension points are used: ``PinnedBackend`` is an httpcore
network backend, given to a public ``httpcore.AsyncConnectionPool``, which
``PinnedTransport`` (an httpx custom transport) puts under an ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import httpcore
import httpx

from serve_app.errors import ImageFetchTimeoutError, ImageForbiddenError, ImageHostNotFoundError
from serve_app.images.sources import REQUEST_ID

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> addresses; raises ``socket.gaierror`` as getaddrinfo does."""

_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}

_EXTRA_BLOCKED = [
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT, not is_private in every Python
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64 can reach private IPv4 space
]


def blocked_reason(ip: str) -> str | None:
    """Why ``ip`` may not be fetched from, or None if it is a public unicast address."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped or addr.sixtofour
        if mapped is not None:
            return blocked_reason(str(mapped))
        if addr.teredo is not None:
            return "a Teredo tunnel address"
    for label, flag in (
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("unspecified", addr.is_unspecified),
        ("reserved", addr.is_reserved),
        ("private", addr.is_private),
        ("not globally routable", not addr.is_global),
    ):
        if flag:
            return f"a {label} address"
    if any(addr in net for net in _EXTRA_BLOCKED if net.version == addr.version):
        return "a non-public address"
    return None


def literal_ip(host: str) -> str | None:
    """The IP if ``host`` is an IP literal (``[::1]`` included), else None."""
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


NOT_PUBLIC = "the image host does not resolve to a public address; refusing to fetch"
"""One answer for a name that resolves to a non-public address and, with the guard on, for one
that does not resolve: told apart, they would map the cluster's internal names for any key holder."""


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raise ImageForbiddenError if any address of ``host`` is not public.

    The refusal names neither the address nor why it is blocked; both go to the log with the
    request id."""
    for ip in addresses:
        reason = blocked_reason(ip)
        if reason is not None:
            logger.warning(
                "request %s: image host %r resolves to %s, %s; refused", REQUEST_ID.get() or "-", host, ip, reason
            )
            raise ImageForbiddenError(NOT_PUBLIC)


async def system_resolver(host: str, port: int) -> list[str]:
    """getaddrinfo in a thread (it blocks), unique addresses in answer order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves, checks, and connects to the checked IP."""

    def __init__(self, *, block_private: bool, resolver: Resolver | None = None):
        self._inner = httpcore.AnyIOBackend()
        self._block_private = block_private
        self._resolver = resolver or system_resolver

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        ip = literal_ip(host)
        if ip is not None:
            addresses = [ip]
        else:
            try:
                addresses = await asyncio.wait_for(self._resolver(host, port), timeout)
            except asyncio.TimeoutError:
                raise ImageFetchTimeoutError("the DNS lookup of the image host timed out") from None
            except socket.gaierror as exc:
                if exc.errno in _NO_SUCH_NAME:
                    # Permanent: a mistyped host is the client's mistake, not an outage to retry.
                    if self._block_private:
                        logger.warning("request %s: image host %r does not resolve; refused", REQUEST_ID.get() or "-", host)
                        raise ImageForbiddenError(NOT_PUBLIC) from None
                    raise ImageHostNotFoundError("the image host does not resolve") from None
                raise httpcore.ConnectError(f"DNS lookup of {host!r} failed: {exc}") from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"DNS lookup of {host!r} failed: {exc}") from exc
            if not addresses:
                raise httpcore.ConnectError(f"DNS lookup of {host!r} returned no address")
        if self._block_private:
            check_addresses(host, addresses)
        last: Exception | None = None
        for addr in addresses:
            try:
                return await self._inner.connect_tcp(
                    addr, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise ImageForbiddenError("unix sockets are never used for image fetches")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# Most specific first: httpx has an exception of the same meaning for each of httpcore's.
_HTTPX_ERRORS: list[tuple[type[Exception], type[httpx.TransportError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
]


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc), request=request) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterator[bytes], request: httpx.Request):
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go through ``PinnedBackend``.

    httpx's own ``AsyncHTTPTransport`` takes no network backend, so this is
    its request/response translation over a public ``httpcore.AsyncConnectionPool``.
    """

    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
    ):
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
