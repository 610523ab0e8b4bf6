"""s3://bucket/key image fetches through boto3, run in threads (boto3 blocks)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from serve_app.config import FetchConfig
from serve_app.errors import (
    ImageError,
    ImageFetchError,
    ImageFetchTimeoutError,
    ImageForbiddenError,
    ImageNotFoundError,
    ImageTooLargeError,
)
from serve_app.images.sources import S3Location

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "NoSuchVersion"}
_FORBIDDEN = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
}
_CHUNK = 1 << 20


class S3Fetcher:
    """One boto3 client per fetcher, created on first use unless injected."""

    def __init__(self, config: FetchConfig, *, client: Any = None):
        self._config = config
        self._client = client
        self._lock = threading.Lock()

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
        future = loop.run_in_executor(None, self._fetch_blocking, url, loc)
        try:
            return await asyncio.wait_for(future, cfg.total_timeout_s)
        except TimeoutError:
            raise ImageFetchTimeoutError(f"fetching {url} took longer than {cfg.total_timeout_s}s") from None

    def _fetch_blocking(self, url: str, loc: S3Location) -> bytes:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        cap = self._config.max_image_bytes
        try:
            resp = self._get_client().get_object(Bucket=loc.bucket, Key=loc.key)
            body = resp["Body"]
            try:
                length = resp.get("ContentLength")
                if length is not None and int(length) > cap:
                    raise ImageTooLargeError(f"image exceeds {cap} bytes (S3 object {url} is {length} bytes)")
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
            if code in _NOT_FOUND or status == 404:
                raise ImageNotFoundError(f"image not found: {url} ({code or status})") from None
            if code in _FORBIDDEN or status in (401, 403):
                raise ImageForbiddenError(f"access to {url} denied ({code or status})") from None
            if code in ("SlowDown", "RequestTimeout") or (status is not None and status >= 500):
                raise ImageFetchError(f"S3 failed for {url}: {code or status}") from None
            raise ImageError(f"S3 refused {url}: {code or status}") from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ImageForbiddenError(f"no usable S3 credentials to read {url}: {exc}") from None
        except (ConnectTimeoutError, ReadTimeoutError, EndpointConnectionError) as exc:
            raise ImageFetchTimeoutError(f"S3 unreachable or slow for {url}: {type(exc).__name__}") from None
        except BotoCoreError as exc:
            raise ImageFetchError(f"S3 fetch of {url} failed: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise ImageFetchTimeoutError(f"S3 connection failed for {url}: {type(exc).__name__}") from None
