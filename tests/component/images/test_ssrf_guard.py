"""SSRF guard with block_private_addresses=True: refused before any connection."""

from __future__ import annotations

import asyncio
import socket

import httpcore
import pytest

import serve_app.images.http_fetch as http_fetch
import serve_app.images.ssrf as ssrf
from serve_app.config import DecodeConfig, FetchConfig
from serve_app.errors import ImageFetchTimeoutError, ImageForbiddenError, ImageHostNotFoundError
from serve_app.images import ImageGrid, ImageLoader

GUARDED = dict(allow_http=True, block_private_addresses=True, total_timeout_s=5.0, retries=0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture
def connects(monkeypatch):
    """Every address the fetcher really opened a TCP connection to."""
    seen: list[str] = []
    real = httpcore.AnyIOBackend.connect_tcp

    async def spy(self, host, port, *args, **kwargs):
        seen.append(host)
        return await real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    return seen


@pytest.fixture
def exempt_test_server(monkeypatch):
    """Treat 127.0.0.1 (our image server) as public; every other rule still applies."""
    real = ssrf.blocked_reason

    def reason(ip: str):
        return None if ip == "127.0.0.1" else real(ip)

    monkeypatch.setattr(ssrf, "blocked_reason", reason)
    monkeypatch.setattr(http_fetch, "blocked_reason", reason)


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


async def load(url: str, resolver=None, **fetch_kw):
    loader = ImageLoader(FetchConfig(**{**GUARDED, **fetch_kw}), DecodeConfig(), ImageGrid(), _resolver=resolver)
    try:
        return await loader.load(url)
    finally:
        await loader.aclose()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]", "0.0.0.0",
     "10.1.2.3", "192.168.0.1", "172.16.5.5", "100.64.0.1", "224.0.0.1", "240.0.0.1", "[fe80::1]", "[fc00::1]"],
)
def test_literal_private_addresses_refused_without_connecting(image_server, connects, host):
    image_server.reset()
    port = image_server.server_address[1]
    with pytest.raises(ImageForbiddenError, match="refusing to fetch") as info:
        run(load(f"http://{host}:{port}/img.jpg"))
    assert info.value.status_code == 403
    assert connects == []
    assert image_server.count("/img.jpg") == 0


async def load_logged(url: str, resolver, request_id: str, **fetch_kw):
    loader = ImageLoader(FetchConfig(**{**GUARDED, **fetch_kw}), DecodeConfig(), ImageGrid(), _resolver=resolver)
    try:
        return await loader.load(url, request_id)
    finally:
        await loader.aclose()


def test_name_resolving_to_private_is_refused_after_dns_naming_no_address(connects, caplog):
    """The client learns nothing it did not send; the operator's log has the address and the request."""
    calls: list[str] = []
    dns = fake_dns({"internal.test": ["10.0.0.7"]}, calls)
    with caplog.at_level("WARNING", logger="serve_app.images.ssrf"):
        with pytest.raises(ImageForbiddenError) as info:
            run(load_logged("http://internal.test/img.jpg", dns, "chatcmpl-abc"))
    assert info.value.message == ssrf.NOT_PUBLIC
    assert "10.0.0.7" not in info.value.message and "private" not in info.value.message
    assert calls == ["internal.test"]
    assert connects == []
    assert any(
        "chatcmpl-abc" in r.getMessage() and "10.0.0.7" in r.getMessage() and "internal.test" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_any_private_answer_refuses_the_host(connects):
    dns = fake_dns({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(ImageForbiddenError) as info:
        run(load("http://mixed.test/img.jpg", resolver=dns))
    assert "127.0.0.1" not in info.value.message
    assert connects == []


def test_localhost_through_system_resolver_is_refused(image_server, connects):
    port = image_server.server_address[1]
    with pytest.raises(ImageForbiddenError) as info:
        run(load(f"http://localhost:{port}/img.jpg"))
    assert info.value.message == ssrf.NOT_PUBLIC
    assert connects == []


def test_unresolvable_and_private_names_get_the_same_answer(connects):
    """With the guard on, "no such name" and "a name inside the network" cannot be told apart."""
    dns = fake_dns({"db.internal.test": ["10.1.2.3"]})
    answers = []
    for host in ("db.internal.test", "nothing.internal.test"):
        with pytest.raises(ImageForbiddenError) as info:
            run(load(f"http://{host}/img.jpg", resolver=dns))
        error = info.value
        answers.append((type(error), error.status_code, error.code, error.message, error.headers()))
    assert answers[0] == answers[1]
    assert connects == []


def test_connection_is_pinned_to_the_checked_address(image_server, connects, exempt_test_server):
    calls: list[str] = []
    port = image_server.server_address[1]
    image = run(load(f"http://img.test:{port}/img.jpg", resolver=fake_dns({"img.test": ["127.0.0.1"]}, calls)))
    assert image.pixels.shape == (240, 320, 3)
    assert calls == ["img.test"]
    assert connects == ["127.0.0.1"]  # the checked IP, never the name re-resolved


def test_redirect_to_metadata_address_refused(image_server, connects, exempt_test_server):
    image_server.reset()
    port = image_server.server_address[1]
    with pytest.raises(ImageForbiddenError, match="redirect's target host is a link-local address") as info:
        run(load(f"http://img.test:{port}/redirect-metadata", resolver=fake_dns({"img.test": ["127.0.0.1"]})))
    assert "169.254" not in info.value.message
    assert image_server.count("/redirect-metadata") == 1
    assert connects == ["127.0.0.1"]


def test_redirect_to_name_resolving_private_refused(image_server, connects, exempt_test_server):
    port = image_server.server_address[1]
    dns = fake_dns({"img.test": ["127.0.0.1"], "other.test": ["192.168.1.1"]})
    with pytest.raises(ImageForbiddenError) as info:
        run(load(f"http://img.test:{port}/redirect-elsewhere", resolver=dns))
    assert info.value.message == ssrf.NOT_PUBLIC  # neither the redirect's host nor its address
    assert connects == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("ip", "blocked"),
    [
        ("8.8.8.8", False),
        ("93.184.216.34", False),
        ("2001:4860:4860::8888", False),
        ("127.0.0.53", True),
        ("169.254.169.254", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:8.8.8.8", False),
        ("2002:7f00:1::", True),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a00:1", True),
        ("ff02::1", True),
        ("::", True),
        ("fd12:3456::1", True),
        ("198.18.0.1", True),
    ],
)
def test_address_classification(ip, blocked):
    assert (ssrf.blocked_reason(ip) is not None) is blocked


def test_host_that_does_not_resolve_is_refused_once_without_retries(connects):
    calls: list[str] = []
    with pytest.raises(ImageForbiddenError) as info:
        run(load("http://typo.test/img.jpg", resolver=fake_dns({}, calls), retries=3))
    assert (info.value.status_code, info.value.code) == (403, "image_forbidden")
    assert calls == ["typo.test"]  # asked once: a missing name is not an outage to retry
    assert connects == []


def test_without_the_guard_a_host_that_does_not_resolve_is_a_400_image_host_not_found(connects):
    """Nothing to hide when private addresses may be fetched anyway: the client hears the mistake."""
    with pytest.raises(ImageHostNotFoundError, match="does not resolve") as info:
        run(load("http://typo.test/img.jpg", resolver=fake_dns({}), retries=3, block_private_addresses=False))
    assert (info.value.status_code, info.value.code) == (400, "image_host_not_found")
    assert connects == []


def test_reserved_invalid_tld_through_the_system_resolver():
    """RFC 6761: .invalid never resolves, with or without a network."""
    with pytest.raises(ImageForbiddenError, match="does not resolve to a public address"):
        run(load("https://no-such-host.invalid/img.jpg"))


def test_temporary_dns_failure_is_retried_then_a_timeout_class_error(connects):
    calls: list[str] = []

    async def flaky(host: str, port: int) -> list[str]:
        calls.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with pytest.raises(ImageFetchTimeoutError):
        run(load("http://flaky.test/img.jpg", resolver=flaky, retries=2, retry_backoff_s=0.01))
    assert calls == ["flaky.test"] * 3


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, image_server_class):
    """An https image host on 127.0.0.1 with a certificate for img.test from a throwaway CA."""
    import ssl
    import subprocess
    import threading

    ImageServer = image_server_class
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=pixtral-serve test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=img.test")
    (d / "san.ext").write_text("subjectAltName=DNS:img.test\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "1", "-extfile", "san.ext")

    server = ImageServer()  # the plain image host's routes, behind TLS
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "leaf.pem", d / "leaf.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.ca = str(d / "ca.pem")
    yield server
    server.shutdown()
    server.server_close()


def test_https_is_pinned_and_still_verifies_the_certificate_for_the_name(tls_server, connects):
    """The TCP connection goes to the checked IP; TLS (SNI, hostname check) still uses the URL's name."""
    import ssl

    import httpx
    from payloads import JPEG

    port = tls_server.server_address[1]
    dns = fake_dns({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})

    async def get(host: str) -> httpx.Response:
        backend = ssrf.PinnedBackend(block_private=False, resolver=dns)
        transport = ssrf.PinnedTransport(backend, ssl_context=ssl.create_default_context(cafile=tls_server.ca))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(f"https://{host}:{port}/img.jpg")

    response = run(get("img.test"))
    assert (response.status_code, response.content) == (200, JPEG)
    assert connects == ["127.0.0.1"]
    with pytest.raises(httpx.ConnectError, match="certificate"):
        run(get("other.test"))  # same IP, but the certificate is not for this name
