"""The image-source seam: a source registered from a test is served like the shipped ones.

``MemorySource`` is what a new source (``gs://``, say) amounts to: one class with its
schemes, its config section and its fetch, registered by scheme; the config section joins
``FetchConfig``'s bases (here in ``MemoryFetchConfig``, as serve_app/config.py would).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from typing import Any

import numpy as np
import pytest
from pydantic import Field
from synthetic import jpeg

from serve_app.config import DecodeConfig, FetchConfig, FetchLimits
from serve_app.errors import ImageNotFoundError, ImageTooLargeError, UnsupportedImageSourceError
from serve_app.images import (
    ImageGrid,
    ImageLoader,
    ImageSource,
    register_source,
    sources_at_start,
    unregister_source,
)

JPEG = jpeg(320, 200, seed=3)


class MemorySourceConfig(FetchLimits):
    """``mem://name`` URLs: images held in the config (a test-only source)."""

    mem_objects: dict[str, bytes] = Field(default_factory=dict, description="name -> image bytes.")
    mem_started: bool = Field(False, description="Set by the source's start-up policy.")


class MemoryFetchConfig(FetchConfig, MemorySourceConfig):
    """FetchConfig with the memory source's section among its bases."""


class MemorySource(ImageSource):
    schemes = ("mem",)
    hint = "mem://"
    config_section = MemorySourceConfig
    clients = ("mem_calls",)

    def __init__(self, config: MemorySourceConfig, *, mem_calls: list[str] | None = None):
        self._config = config
        self._calls = mem_calls if mem_calls is not None else []

    @classmethod
    def at_start(cls, config: Any) -> Any:
        return config.model_copy(update={"mem_started": True})

    async def fetch(self, url: str) -> bytes:
        self._calls.append(url)
        await asyncio.sleep(0.05)  # long enough for concurrent loads of one URL to meet
        data = self._config.mem_objects.get(url[len("mem://"):])
        if data is None:
            raise ImageNotFoundError(f"no image at {url}")
        if len(data) > self._config.max_image_bytes:
            raise ImageTooLargeError(f"image exceeds {self._config.max_image_bytes} bytes")
        return data

    async def aclose(self) -> None:
        self._calls.append("closed")


@pytest.fixture
def memory_source():
    register_source(MemorySource)
    yield MemorySource
    unregister_source(MemorySource)


def run(fetch: FetchConfig, work, **clients):
    async def main():
        loader = ImageLoader(fetch, DecodeConfig(), ImageGrid(), **clients)
        try:
            return await work(loader)
        finally:
            await loader.aclose()

    return asyncio.run(asyncio.wait_for(main(), 30))


def test_a_registered_source_serves_its_scheme_through_the_loader(memory_source):
    calls: list[str] = []
    config = MemoryFetchConfig(mem_objects={"cat.jpg": JPEG})

    async def work(loader):
        return await asyncio.gather(*(loader.load("mem://cat.jpg") for _ in range(3)))

    images = run(config, work, mem_calls=calls)
    assert calls == ["mem://cat.jpg", "closed"]  # three loads in flight, one fetch; closed with the loader
    same_bytes = run(config, lambda loader: loader.load("data:image/jpeg;base64," + base64.b64encode(JPEG).decode()))
    for image in images:
        assert (image.source_width, image.source_height, image.source_bytes) == (320, 200, len(JPEG))
        assert image.sha256 == hashlib.sha256(JPEG).hexdigest()
        np.testing.assert_array_equal(image.pixels, same_bytes.pixels)


def test_a_registered_source_errors_stay_typed(memory_source):
    config = MemoryFetchConfig(mem_objects={"cat.jpg": JPEG}, max_image_bytes=len(JPEG) - 1)
    with pytest.raises(ImageNotFoundError) as missing:
        run(config, lambda loader: loader.load("mem://dog.jpg"))
    assert (missing.value.status_code, missing.value.code) == (400, "image_not_found")
    with pytest.raises(ImageTooLargeError) as large:
        run(config, lambda loader: loader.load("mem://cat.jpg"))
    assert large.value.status_code == 413


def test_the_unsupported_url_message_names_the_offered_sources(memory_source):
    with pytest.raises(UnsupportedImageSourceError) as offered:
        run(MemoryFetchConfig(), lambda loader: loader.load("ftp://example.com/a.jpg"))
    assert offered.value.message.endswith("use https://, s3://, a data:image/...;base64 URL or mem://")
    # A config without the source's section does not offer it.
    with pytest.raises(UnsupportedImageSourceError) as not_offered:
        run(FetchConfig(), lambda loader: loader.load("mem://cat.jpg"))
    assert not_offered.value.message.endswith("use https://, s3:// or a data:image/...;base64 URL")


def test_an_unregistered_source_is_no_longer_offered():
    register_source(MemorySource)
    unregister_source(MemorySource)
    with pytest.raises(UnsupportedImageSourceError):
        run(MemoryFetchConfig(mem_objects={"cat.jpg": JPEG}), lambda loader: loader.load("mem://cat.jpg"))


def test_start_up_policy_runs_for_every_offered_source(memory_source, monkeypatch, caplog):
    monkeypatch.setenv("PIXTRAL_SERVE_S3_ALLOWED_BUCKETS", "*")
    with caplog.at_level(logging.WARNING):
        started = sources_at_start(MemoryFetchConfig())
    assert isinstance(started, MemoryFetchConfig) and started.mem_started
    assert started.s3_allowed_buckets == ["*"]  # the S3 source's policy too
    assert "s3_allowed_buckets is ['*']" in caplog.text
    assert not hasattr(sources_at_start(FetchConfig()), "mem_started")


def test_a_taken_scheme_cannot_be_registered_twice(memory_source):
    class OtherS3(MemorySource):
        schemes = ("s3",)

    with pytest.raises(ValueError, match="already served by S3Source"):
        register_source(OtherS3)
    register_source(MemorySource)  # the same class again is not a conflict


def test_clients_no_source_takes_are_refused(memory_source):
    with pytest.raises(TypeError, match="mem_calls"):
        ImageLoader(FetchConfig(), DecodeConfig(), ImageGrid(), mem_calls=[])
    with pytest.raises(TypeError, match="s3_clinet"):
        ImageLoader(MemoryFetchConfig(), DecodeConfig(), ImageGrid(), s3_clinet=None)
