"""Strict s3://bucket/key parsing: what reaches botocore is exactly one bucket and one plain key."""

from __future__ import annotations

import pytest

from serve_app.config import FetchConfig
from serve_app.errors import ImageNotFoundError, UnsupportedImageSourceError
from serve_app.images.s3_fetch import S3Location, parse_s3_url

OPEN = FetchConfig(s3_allowed_buckets=["*"])


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("s3://images/cat.jpg", "images", "cat.jpg"),
        ("S3://images/cat.jpg", "images", "cat.jpg"),  # schemes are case-insensitive
        ("s3://my.dotted-bucket.1/a/b/c.jpg", "my.dotted-bucket.1", "a/b/c.jpg"),
        ("s3://abc/" + "k" * 1024, "abc", "k" * 1024),
        ("s3://images/a..b/c.d.jpg", "images", "a..b/c.d.jpg"),  # dots inside a segment are a name
        ("s3://images/photos/ünï cödé?x#y.jpg", "images", "photos/ünï cödé?x#y.jpg"),
    ],
)
def test_valid_urls(url, bucket, key):
    assert parse_s3_url(url, OPEN) == S3Location(bucket, key)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("s3:/images/cat.jpg", "must start with s3://"),
        ("s3:images/cat.jpg", "must start with s3://"),
        ("s3:///images/cat.jpg", "must be s3://bucket/key"),
        ("s3://images", "must be s3://bucket/key"),
        ("s3://ab/cat.jpg", "invalid bucket name"),
        ("s3://" + "a" * 64 + "/cat.jpg", "invalid bucket name"),
        ("s3://Images/cat.jpg", "invalid bucket name"),
        ("s3://images_1/cat.jpg", "invalid bucket name"),
        ("s3://-images/cat.jpg", "invalid bucket name"),
        ("s3://images-/cat.jpg", "invalid bucket name"),
        ("s3://my..bucket/cat.jpg", "adjacent dots"),
        ("s3://192.168.1.1/cat.jpg", "IP address"),
        ("s3://xn--bucket/cat.jpg", "reserves"),
        ("s3://bucket-s3alias/cat.jpg", "reserves"),
        ("s3://user:pw@images/cat.jpg", "invalid bucket name"),
        ("s3://images:9000/cat.jpg", "invalid bucket name"),
        ("s3://images/", "key is empty"),
        ("s3://images//cat.jpg", "segment"),
        ("s3://images/a//cat.jpg", "segment"),
        ("s3://images/photos/", "segment"),
        ("s3://images/./cat.jpg", "segment"),
        ("s3://images/../other-bucket/cat.jpg", "segment"),
        ("s3://images/photos/../../other-bucket/cat.jpg", "segment"),
        ("s3://images/..", "segment"),
        ("s3://images/cat.jpg\n", "control characters"),
        ("s3://images/cat\x00.jpg", "control characters"),
        ("s3://images/cat\x7f.jpg", "control characters"),
        ("s3://images/cat\r\nHost: evil/x.jpg", "control characters"),
        ("s3://images/" + "k" * 1025, "longer than 1024 bytes"),
        ("s3://images/" + "é" * 513, "longer than 1024 bytes"),  # bytes, not characters
    ],
)
def test_hostile_shapes_are_refused_before_any_request(url, words):
    with pytest.raises(UnsupportedImageSourceError, match=words) as info:
        parse_s3_url(url, OPEN)
    assert (info.value.status_code, info.value.code) == (400, "unsupported_image_url")


def test_shape_is_checked_before_the_allow_list_and_the_allow_list_still_applies():
    closed = FetchConfig(s3_allowed_buckets=["images"])
    with pytest.raises(ImageNotFoundError):
        parse_s3_url("s3://other-bucket/cat.jpg", closed)
    with pytest.raises(UnsupportedImageSourceError):
        parse_s3_url("s3://images/../other-bucket/cat.jpg", closed)
    assert parse_s3_url("s3://images/cat.jpg", closed) == S3Location("images", "cat.jpg")
