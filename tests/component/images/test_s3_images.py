"""s3:// images from a moto_server subprocess with IAM enforced."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time

import pytest
from payloads import JPEG

READABLE_PREFIX = "public/"  # must match conftest.READABLE_PREFIX

from serve_app.config import DecodeConfig, FetchConfig
from serve_app.errors import (
    ImageDecodeError,
    ImageFetchTimeoutError,
    ImageForbiddenError,
    ImageNotFoundError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images import ImageGrid, ImageLoader


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
    return FetchConfig(s3_endpoint_url=moto.endpoint, s3_region="us-east-1", total_timeout_s=10, **kw)


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
    with pytest.raises(ImageNotFoundError, match="NoSuchBucket"):
        run(load("s3://nobucket-here/x.jpg", cfg(objects)))


def test_unknown_access_key_is_forbidden(objects, env_creds):
    env_creds(("AKIAUNKNOWN0000", "secret"))
    with pytest.raises(ImageForbiddenError, match="InvalidAccessKeyId") as info:
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects)))
    assert info.value.status_code == 403


def test_wrong_secret_is_forbidden(objects, env_creds):
    env_creds((objects.admin[0], "not-the-secret"))
    with pytest.raises(ImageForbiddenError, match="SignatureDoesNotMatch"):
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects)))


def test_iam_policy_denies_key_outside_prefix(objects, env_creds):
    env_creds(objects.reader)
    ok = run(load(f"s3://{objects.bucket}/{READABLE_PREFIX}cat.jpg", cfg(objects)))
    assert ok.pixels.shape == (240, 320, 3)
    with pytest.raises(ImageForbiddenError, match="AccessDenied"):
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects)))


def test_bucket_allow_list(objects, env_creds):
    env_creds(objects.admin)
    with pytest.raises(ImageForbiddenError, match="not in the allowed buckets"):
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects, s3_allowed_buckets=["other"])))
    image = run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects, s3_allowed_buckets=[objects.bucket])))
    assert image.source_bytes == len(JPEG)


def test_byte_cap_from_content_length(objects, env_creds):
    env_creds(objects.admin)
    with pytest.raises(ImageTooLargeError, match=f"exceeds {len(JPEG) - 1} bytes"):
        run(load(f"s3://{objects.bucket}/cat.jpg", cfg(objects, max_image_bytes=len(JPEG) - 1)))


def test_non_image_object(objects, env_creds):
    env_creds(objects.admin)
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        run(load(f"s3://{objects.bucket}/notimage.txt", cfg(objects)))


def test_malformed_s3_url():
    with pytest.raises(UnsupportedImageSourceError, match="s3://bucket/key"):
        run(load("s3://just-a-bucket", FetchConfig()))


def test_unreachable_endpoint_times_out(env_creds):
    env_creds(("AKIAX", "y"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fetch = FetchConfig(s3_endpoint_url=f"http://127.0.0.1:{port}", s3_region="us-east-1",
                        connect_timeout_s=0.5, total_timeout_s=3, retries=0)
    start = time.monotonic()
    with pytest.raises(ImageFetchTimeoutError):
        run(load("s3://bucket/key.jpg", fetch))
    assert time.monotonic() - start < 5
