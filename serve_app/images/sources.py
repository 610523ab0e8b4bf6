"""Which image URLs we accept, and the cheap checks that need no network."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import unicodedata
from dataclasses import dataclass

from serve_app.config import FetchConfig
from serve_app.errors import (
    ImageDecodeError,
    ImageNotFoundError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)

logger = logging.getLogger(__name__)

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str


def short(url: str, limit: int = 80) -> str:
    """A URL cut for error messages (data: URLs can be megabytes)."""
    return url if len(url) <= limit else url[: limit - 3] + "..."


def decode_data_url(url: str, config: FetchConfig) -> bytes:
    """The payload of a ``data:image/...;base64,`` URL, size-checked before decoding."""
    match = _DATA_URL.match(url)
    if match is None:
        raise UnsupportedImageSourceError(f"data URL is malformed: {short(url)}")
    mime = match["mime"].strip().lower()
    params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
    if not mime.startswith("image/"):
        raise UnsupportedImageSourceError(
            f"data URL has media type {mime or 'none'!r}; only image/* is accepted"
        )
    if "base64" not in params:
        raise UnsupportedImageSourceError("data URL must be base64-encoded (data:image/...;base64,...)")
    payload = url[match.end():]
    # 4 base64 characters carry 3 bytes; check before spending memory on decoding.
    if len(payload) > (config.max_data_url_bytes + 2) // 3 * 4 + 4:
        raise ImageTooLargeError(f"image exceeds {config.max_data_url_bytes} bytes (data URL)")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("data URL payload is not valid base64") from None
    if len(data) > config.max_data_url_bytes:
        raise ImageTooLargeError(f"image exceeds {config.max_data_url_bytes} bytes (data URL)")
    if not data:
        raise ImageDecodeError("data URL payload is empty; image is not a decodable image")
    return data


def s3_policy_at_start(config: FetchConfig) -> FetchConfig:
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


def parse_s3_url(url: str, config: FetchConfig) -> S3Location:
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


def scheme_of(url: str) -> str:
    """Lower-cased scheme, or raise UnsupportedImageSourceError for anything we do not fetch."""
    head, sep, _ = url.partition(":")
    scheme = head.lower() if sep else ""
    if scheme in ("data", "https", "http", "s3"):
        return scheme
    raise UnsupportedImageSourceError(
        f"unsupported image URL {short(url, 40)!r}: use https://, s3:// or a data:image/...;base64 URL"
    )
