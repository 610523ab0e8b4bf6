"""The s3://bucket/key image source: strict parsing, the bucket allow-list, and reads through
boto3 run in threads (boto3 blocks)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from serve_app.config import S3SourceConfig
from serve_app.errors import (
    ImageError,
    ImageFetchError,
    ImageFetchTimeoutError,
    ImageNotFoundError,
    ImageSourceUnavailableError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images.sources import ImageSource, register_source, short

logger = logging.getLogger(__name__)

# Missing, denied and (before any request) not allowed get one answer, so that an API key
# holder cannot map which objects exist.
_NOT_FOUND = {
    "NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchVersion",
    "AccessDenied", "403", "Forbidden", "AllAccessDisabled",
}
# Our credentials or configuration are broken: the operator must hear about it, not the client.
_OUR_SIDE = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "TokenRefreshRequired",
    "AccountProblem",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "InvalidRegion",
}
_CHUNK = 1 << 20


C = TypeVar("C", bound=S3SourceConfig)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str


def s3_policy_at_start(config: C) -> C:
    """The fetch config a pool replica runs with: the S3 bucket allow-list from the environment
    when it is set there, and a warning when every bucket is open."""
    config = config.with_environment()
    if "*" in config.s3_allowed_buckets:
        logger.warning(
            "s3_allowed_buckets is ['*']: clients may read every S3 object this replica's credentials "
            "can read; list the buckets instead (image_pool.fetch.s3_allowed_buckets or %s)",
            config.s3_allowed_buckets_env,
        )
    return config


def s3_not_found(url: str) -> ImageNotFoundError:
    """The one answer for a missing, unreadable or not-allowed S3 object, so none can be told apart."""
    return ImageNotFoundError(f"image not found: {short(url)}")


# S3's rules for general purpose bucket names
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_MAX_KEY_BYTES = 1024


def s3_bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name, or None."""
    if not _BUCKET.fullmatch(bucket):
        return "3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
    if ".." in bucket:
        return "no two adjacent dots"
    try:
        ipaddress.IPv4Address(bucket)
        return "not an IP address"
    except ValueError:
        pass
    if bucket.startswith(_BUCKET_PREFIXES) or bucket.endswith(_BUCKET_SUFFIXES):
        return "no prefix or suffix S3 reserves"
    return None


def s3_key_problem(key: str) -> str | None:
    """Why ``key`` may not be fetched: a path-style endpoint or a normalising proxy in front of
    S3 (MinIO, Ceph) could resolve ``.``/``..``/empty segments into another bucket's object."""
    if not key:
        return "the key is empty"
    if len(key.encode("utf-8", "surrogatepass")) > _MAX_KEY_BYTES:
        return f"the key is longer than {_MAX_KEY_BYTES} bytes"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in key):
        return "the key has control characters"
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        return "the key has an empty, '.' or '..' segment"
    return None


def parse_s3_url(url: str, config: S3SourceConfig) -> S3Location:
    """``s3://bucket/key``, strictly, with the bucket allow-list applied (empty list: no bucket at all)."""
    if url[:5].lower() != "s3://":
        raise UnsupportedImageSourceError(f"S3 URL must start with s3://: {short(url)}")
    bucket, slash, key = url[5:].partition("/")
    if not bucket or not slash:
        raise UnsupportedImageSourceError(f"S3 URL must be s3://bucket/key: {short(url)}")
    problem = s3_bucket_problem(bucket)
    if problem is not None:
        raise UnsupportedImageSourceError(f"S3 URL has an invalid bucket name ({problem}): {short(url)}")
    problem = s3_key_problem(key)
    if problem is not None:
        raise UnsupportedImageSourceError(f"S3 URL is not s3://bucket/key ({problem}): {short(url)}")
    if not config.s3_bucket_allowed(bucket):
        raise s3_not_found(url)
    return S3Location(bucket, key)


@register_source
class S3Source(ImageSource):
    """One boto3 client per source, created on first use unless injected (``s3_client``).

    The URL is parsed and the bucket allow-list applied before any request. boto3
    blocks, so reads run on a bounded thread pool of their own
    (``fetch.s3_read_threads``): a read abandoned after its deadline keeps its
    thread while boto retries, and on the loop's default executor it would
    starve the DNS lookups of https fetches.
    """

    schemes = ("s3",)
    hint = "s3://"
    config_section = S3SourceConfig
    clients = ("s3_client",)

    def __init__(self, config: S3SourceConfig, *, s3_client: Any = None):
        self._config = config
        self._client = s3_client
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=config.s3_read_threads, thread_name_prefix="s3-read")

    @classmethod
    def at_start(cls, config: C) -> C:
        return s3_policy_at_start(config)

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                cfg = self._config
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=cfg.s3_endpoint_url,
                    region_name=cfg.s3_region,
                    config=Config(
                        connect_timeout=cfg.connect_timeout_s,
                        read_timeout=cfg.total_timeout_s,
                        retries={"max_attempts": cfg.retries + 1, "mode": "standard"},
                    ),
                )
            return self._client

    async def fetch(self, url: str) -> bytes:
        loc = parse_s3_url(url, self._config)
        cfg = self._config
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._threads, self._fetch_blocking, url, loc)
        try:
            return await asyncio.wait_for(future, cfg.total_timeout_s)
        except TimeoutError:
            raise ImageFetchTimeoutError(f"fetching {short(url)} took longer than {cfg.total_timeout_s}s") from None

    def _fetch_blocking(self, url: str, loc: S3Location) -> bytes:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        try:
            from botocore.exceptions import CredentialRetrievalError
        except ImportError:  # pragma: no cover - every botocore we support has it
            CredentialRetrievalError = NoCredentialsError

        cap = self._config.max_image_bytes
        try:
            resp = self._get_client().get_object(Bucket=loc.bucket, Key=loc.key)
            body = resp["Body"]
            try:
                length = resp.get("ContentLength")
                if length is not None and int(length) > cap:
                    raise ImageTooLargeError(f"image exceeds {cap} bytes (S3 object {short(url)} is {length} bytes)")
                chunks: list[bytes] = []
                total = 0
                while chunk := body.read(_CHUNK):
                    total += len(chunk)
                    if total > cap:
                        raise ImageTooLargeError(f"image exceeds {cap} bytes")
                    chunks.append(chunk)
            finally:
                body.close()
            return b"".join(chunks)
        except ImageError:
            raise
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _OUR_SIDE:
                raise _unavailable(url, exc) from None
            if code in _NOT_FOUND or status in (403, 404):
                raise s3_not_found(url) from None
            if code in ("SlowDown", "RequestTimeout", "ServiceUnavailable") or (status is not None and status >= 500):
                raise ImageFetchError(f"S3 kept failing for {short(url)} ({code or status})") from None
            raise _unavailable(url, exc) from None
        except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, NoRegionError) as exc:
            raise _unavailable(url, exc) from None
        except (ConnectTimeoutError, ReadTimeoutError, EndpointConnectionError) as exc:
            raise ImageFetchTimeoutError(f"S3 unreachable or slow for {short(url)}: {type(exc).__name__}") from None
        except BotoCoreError as exc:
            raise _unavailable(url, exc) from None
        except OSError as exc:
            raise ImageFetchTimeoutError(f"S3 connection failed for {short(url)}: {type(exc).__name__}") from None


def _unavailable(url: str, exc: BaseException) -> ImageSourceUnavailableError:
    """Logged with the real cause for the operator; the client learns only that S3 is unavailable."""
    logger.error("S3 is unavailable for %s: %s: %s", short(url), type(exc).__name__, exc)
    return ImageSourceUnavailableError(
        f"the S3 image source is unavailable on the server side; reading {short(url)} failed"
    )
