"""SSRF guard: which addresses an image fetch may connect to, enforced at connect time.

The check runs on the addresses DNS actually returned, and the TCP connection
is opened to the address that was checked (not re-resolved), so a DNS answer
that changes between check and connect (rebinding) cannot slip through.
httpcore hands TLS the URL's host name for SNI and certificate checks, so
pinning the IP does not weaken TLS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore

from serve_app.errors import ImageFetchTimeoutError, ImageForbiddenError

Resolver = Callable[[str, int], Awaitable[list[str]]]

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


def check_addresses(host: str, addresses: Iterable[str]) -> None:
    """Raise ImageForbiddenError if any address of ``host`` is not public."""
    for ip in addresses:
        reason = blocked_reason(ip)
        if reason is not None:
            raise ImageForbiddenError(f"image host {host!r} resolves to {ip}, {reason}; refusing to fetch")


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
                raise ImageFetchTimeoutError(f"DNS lookup of {host!r} timed out") from None
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
