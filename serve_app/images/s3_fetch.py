"""s3://bucket/key image fetches through boto3, run in threads (boto3 blocks)."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serve_app.config import FetchConfig
from serve_app.errors import (
    ImageError,
    ImageFetchError,
    ImageFetchTimeoutError,
    ImageSourceUnavailableError,
    ImageTooLargeError,
)
from serve_app.images.sources import S3Location, s3_not_found, short

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


class S3Fetcher:
    """One boto3 client per fetcher, created on first use unless injected.

    boto3 blocks, so reads run on a bounded thread pool of their own
    (``fetch.s3_read_threads``): a read abandoned after its deadline keeps its
    thread while boto retries, and on the loop's default executor it would
    starve the DNS lookups of https fetches.
    """

    def __init__(self, config: FetchConfig, *, client: Any = None):
        self._config = config
        self._client = client
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=config.s3_read_threads, thread_name_prefix="s3-read")

    def close(self) -> None:
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

    async def fetch(self, url: str, loc: S3Location) -> bytes:
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
