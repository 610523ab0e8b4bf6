"""s3:// images from a moto_server subprocess with IAM enforced."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time

import pytest
from payloads import JPEG

READABLE_PREFIX = "public/"  # must match conftest.READABLE_PREFIX

from serve_app.config import DecodeConfig, FetchConfig
from serve_app.errors import (
    ImageDecodeError,
    ImageFetchTimeoutError,
    ImageNotFoundError,
    ImageSourceUnavailableError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images import ImageGrid, ImageLoader, s3_policy_at_start


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(scope="module")
def objects(moto_server):
    admin = moto_server.client(moto_server.admin)
    admin.put_object(Bucket=moto_server.bucket, Key="cat.jpg", Body=JPEG)
    admin.put_object(Bucket=moto_server.bucket, Key=f"{READABLE_PREFIX}cat.jpg", Body=JPEG)
    admin.put_object(Bucket=moto_server.bucket, Key="notimage.txt", Body=b"hello")
    return moto_server


@pytest.fixture
def env_creds(monkeypatch, tmp_path):
    """Make boto3's default chain see exactly the credentials a test sets."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)

    def use(creds):
        if creds is None:
            monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
            monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
            return
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds[1])

    return use


async def load(url, fetch: FetchConfig, **kw):
    loader = ImageLoader(fetch, DecodeConfig(), ImageGrid(), **kw)
    try:
        return await loader.load(url)
    finally:
        await loader.aclose()


def cfg(moto, **kw) -> FetchConfig:
    kw.setdefault("s3_allowed_buckets", [moto.bucket, "nobucket-here"])
    return FetchConfig(s3_endpoint_url=moto.endpoint, s3_region="us-east-1", total_timeout_s=10, **kw)


def body_without_url(error, url: str) -> dict:
    """The error body a client sees, with the URL it sent taken out."""
    body = error.to_body()["error"]
    return {**body, "message": body["message"].replace(url, "<url>")}


def test_s3_object_through_default_chain_and_endpoint_override(objects, env_creds):
    env_creds(objects.admin)
    image = run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects)))
    assert image.pixels.shape == (240, 320, 3)
    assert image.sha256 == hashlib.sha256(JPEG).hexdigest()


def test_injected_client_is_used(objects, env_creds):
    env_creds(("AKIANOTUSED", "wrong"))  # would be refused if the loader built its own client
    image = run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects), s3_client=objects.client(objects.admin)))
    assert image.source_bytes == len(JPEG)


def test_missing_key_names_the_url(objects, env_creds):
    env_creds(objects.admin)
    url = f"s3://{objects.bucket}/no/such.jpg"
    with pytest.raises(ImageNotFoundError, match=url):
        run(load(url, cfg(objects)))


def test_missing_bucket(objects, env_creds):
    env_creds(objects.admin)
    with pytest.raises(ImageNotFoundError, match="s3://nobucket-here/x.jpg"):
        run(load("s3://nobucket-here/x.jpg", cfg(objects)))


@pytest.mark.parametrize("creds", ["unknown-key", "wrong-secret", "none"])
def test_broken_server_credentials_are_a_logged_502_without_botocore_text(objects, env_creds, caplog, creds):
    env_creds({"unknown-key": ("AKIAUNKNOWN0000", "secret"), "wrong-secret": (objects.admin[0], "not-the-secret"),
               "none": None}[creds])
    url = f"s3://{objects.bucket}/cat.jpg"
    with caplog.at_level(logging.ERROR, logger="serve_app.images.s3_fetch"):
        with pytest.raises(ImageSourceUnavailableError) as info:
            run(load(url, cfg(objects)))
    assert (info.value.status_code, info.value.code) == (502, "image_source_unavailable")
    for internal in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "credentials", "botocore", "AKIA"):
        assert internal not in info.value.message
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert {"unknown-key": "InvalidAccessKeyId", "wrong-secret": "SignatureDoesNotMatch",
            "none": "NoCredentialsError"}[creds] in logged


def test_denied_missing_and_not_allowed_objects_look_the_same(objects, env_creds):
    """An API key holder cannot tell which objects exist from the answers."""
    env_creds(objects.reader)
    ok = run(load(f"s3://{objects.bucket}/{READABLE_PREFIX}cat.jpg", cfg(objects)))
    assert ok.pixels.shape == (240, 320, 3)
    bodies = []
    for url, config in [
        (f"s3://{objects.bucket}/cat.jpg", cfg(objects)),  # exists, IAM denies it
        (f"s3://{objects.bucket}/{READABLE_PREFIX}missing.jpg", cfg(objects)),  # readable prefix, missing
        (f"s3://{objects.bucket}/cat.jpg", cfg(objects, s3_allowed_buckets=["other"])),  # bucket not allowed
    ]:
        with pytest.raises(ImageNotFoundError) as info:
            run(load(url, config))
        assert info.value.status_code == 400
        bodies.append(body_without_url(info.value, url))
    assert bodies[0] == bodies[1] == bodies[2]


def test_s3_is_closed_by_default_and_star_opens_it(objects, env_creds):
    env_creds(objects.admin)
    url = f"s3://{objects.bucket}/cat.jpg"
    with pytest.raises(ImageNotFoundError):
        run(load(url, FetchConfig(s3_endpoint_url=objects.endpoint, s3_region="us-east-1")))
    assert run(load(url, cfg(objects, s3_allowed_buckets=["*"]))).source_bytes == len(JPEG)
    assert run(load(url, cfg(objects, s3_allowed_buckets=[objects.bucket]))).source_bytes == len(JPEG)


def test_environment_allow_list_wins_and_star_is_logged(monkeypatch, caplog):
    config = FetchConfig(s3_allowed_buckets=["from-config"])
    monkeypatch.delenv("PIXTRAL_SERVE_S3_ALLOWED_BUCKETS", raising=False)
    assert s3_policy_at_start(config).s3_allowed_buckets == ["from-config"]
    monkeypatch.setenv("PIXTRAL_SERVE_S3_ALLOWED_BUCKETS", " a, b ,")
    resolved = s3_policy_at_start(config)
    assert resolved.s3_allowed_buckets == ["a", "b"]
    assert resolved.s3_bucket_allowed("a") and not resolved.s3_bucket_allowed("from-config")
    assert not caplog.records
    monkeypatch.setenv("PIXTRAL_SERVE_S3_ALLOWED_BUCKETS", "*")
    with caplog.at_level(logging.WARNING, logger="serve_app.images.sources"):
        assert s3_policy_at_start(config).s3_bucket_allowed("anything")
    assert any("every S3 object" in record.getMessage() for record in caplog.records)


class _Observed:
    """The real moto client, counting the body bytes read; ``keep_length=False`` takes
    ContentLength out of get_object's answer, so that only the cap while reading can stop it."""

    def __init__(self, client, *, keep_length: bool = True):
        self._client = client
        self._keep_length = keep_length
        self.read = 0

    def get_object(self, **kwargs):
        response = self._client.get_object(**kwargs)
        if not self._keep_length:
            del response["ContentLength"]
        body, observer = response["Body"], self

        class Counted:
            def read(self, n):
                chunk = body.read(n)
                observer.read += len(chunk)
                return chunk

            def close(self):
                body.close()

        response["Body"] = Counted()
        return response


def test_byte_cap_from_content_length_refuses_before_reading(objects, env_creds):
    env_creds(objects.admin)
    client = _Observed(objects.client(objects.admin))
    with pytest.raises(ImageTooLargeError, match=rf"exceeds {len(JPEG) - 1} bytes \(S3 object .* is {len(JPEG)} bytes\)"):
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects, max_image_bytes=len(JPEG) - 1), s3_client=client))
    assert client.read == 0


def test_byte_cap_while_reading_stops_at_the_cap(objects, env_creds):
    env_creds(objects.admin)
    cap = len(JPEG) // 4
    client = _Observed(objects.client(objects.admin), keep_length=False)
    with pytest.raises(ImageTooLargeError, match=rf"exceeds {cap} bytes$"):
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects, max_image_bytes=cap), s3_client=client))
    assert cap < client.read <= cap + (1 << 20)  # stopped within one read of the cap


def test_non_image_object(objects, env_creds):
    env_creds(objects.admin)
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        run(load(f"s3://{objects.bucket}/notimage.txt", cfg(objects)))


@pytest.mark.parametrize("url", ["s3://just-a-bucket", "s3:/images/cat.jpg", "s3://images/../images/cat.jpg"])
def test_malformed_s3_url_is_refused_without_a_request(objects, env_creds, url):
    env_creds(objects.admin)
    client = objects.client(objects.admin)
    calls = []
    client.meta.events.register("before-call.s3.GetObject", lambda **kw: calls.append(kw))
    with pytest.raises(UnsupportedImageSourceError):
        run(load(url, cfg(objects, s3_allowed_buckets=["*"]), s3_client=client))
    assert calls == []


def test_unreachable_endpoint_times_out(env_creds):
    env_creds(("AKIAX", "y"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetch = FetchConfig(s3_endpoint_url=f"http://127.0.0.1:{port}", s3_region="us-east-1", s3_allowed_buckets=["*"],
                        connect_timeout_s=0.5, total_timeout_s=3, retries=0)
    start = time.monotonic()
    with pytest.raises(ImageFetchTimeoutError):
        run(load("s3://bucket/key.jpg", fetch))
    assert time.monotonic() - start < 5


@pytest.fixture
def silent_endpoint():
    """A TCP endpoint that accepts connections and never answers: a stuck S3."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def test_stuck_s3_reads_do_not_starve_the_default_executor(silent_endpoint, env_creds):
    """S3 reads run on their own bounded pool; DNS (the loop's default executor) stays free."""
    env_creds(("AKIAX", "y"))
    fetch = FetchConfig(s3_endpoint_url=silent_endpoint, s3_region="us-east-1", s3_allowed_buckets=["*"],
                        s3_read_threads=2, connect_timeout_s=1, total_timeout_s=30, retries=0)

    async def scenario() -> tuple[float, int]:
        from concurrent.futures import ThreadPoolExecutor

        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        loader = ImageLoader(fetch, DecodeConfig(), ImageGrid())
        reads = [asyncio.ensure_future(loader.load(f"s3://stuck-bucket/{i}.jpg")) for i in range(6)]
        await asyncio.sleep(0.5)  # every read is in flight or queued behind the 2 S3 threads
        s3_threads = sum(t.name.startswith("s3-read") for t in threading.enumerate())
        started = time.monotonic()
        await loop.getaddrinfo("localhost", 80)  # what an https fetch's DNS lookup needs
        waited = time.monotonic() - started
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        await loader.aclose()
        return waited, s3_threads

    waited, s3_threads = run(scenario())
    assert waited < 2.0
    assert s3_threads == 2
