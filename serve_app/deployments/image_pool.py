"""ImagePool: the autoscaled CPU deployment that turns image URLs into pixels.

Under load its pixels go to the LLM replica by reference (``PooledImage``): the ingress gets the
facts it routes on and a reference, never the arrays; with few requests in flight, by value
(``PixelPassing``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2

import ray
from ray import serve
from ray.exceptions import ObjectLostError
from ray.serve.metrics import Counter, Histogram

from serve_app.config import ImagePoolConfig
from serve_app.deployments import IMAGE_POOL
from serve_app.errors import ImageError, ImagesLostError
from serve_app.images import ImageGrid, ImageLoader, PreparedImage, sources_at_start

_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


@dataclass(frozen=True)
class PooledImage:
    """What ``ImagePool.prepare`` returns: what the ingress needs (the content id it routes on,
    the size) and the ``PreparedImage`` by reference.

    ``ray.put`` in the pool replica, which owns the object: its bytes stay in the object store
    of the pool's node until the LLM replica resolves them (``resolve_pooled``), and are freed
    once the request's last holder lets go of the record. A reference nested in a value is
    counted only on Ray's own task path, so the record travels through by-reference handles
    (``serve_app.compat.ray_serve.by_reference``), never through Serve's gRPC transport.
    """

    content_id: str
    width: int
    height: int
    prepared: ray.ObjectRef

    @classmethod
    def put(cls, image: PreparedImage) -> PooledImage:
        return cls(image.content_id, image.width, image.height, ray.put(image))


class PixelPassing:
    """How one ingress replica sends a request's pixels on: by value (``PreparedImage``, over Serve's own
    transport) while it holds few requests with images, by reference (``PooledImage``) above that
    (``ImagePoolConfig.pixels_by_value_up_to``), or always by value without ``pixels_by_reference``."""

    def __init__(self, config: ImagePoolConfig):
        self._by_value_up_to = config.pixels_by_value_up_to if config.pixels_by_reference else None
        self._in_flight = 0

    @contextmanager
    def request(self, has_images: bool) -> Iterator[bool]:
        """Counts a request with images while the block lasts; whether its pixels go by value."""
        if not has_images:
            yield False
            return
        self._in_flight += 1
        try:
            yield self._by_value_up_to is None or self._in_flight <= self._by_value_up_to
        finally:
            self._in_flight -= 1


async def resolve_pooled(images: list[PooledImage | PreparedImage], timeout_s: float) -> list[PreparedImage]:
    """The prepared images behind the records (images sent by value pass as they are);
    ``ImagesLostError`` (503; the ingress retries once, by value) when Ray no longer has them
    (the pool replica ended: scale-down, crash; or its reference counting freed them early) or
    they do not arrive within ``timeout_s``."""
    refs = [image.prepared for image in images if isinstance(image, PooledImage)]
    if not refs:
        return list(images)
    try:
        resolved = iter(await asyncio.wait_for(asyncio.gather(*refs), timeout_s))
    except (ObjectLostError, asyncio.TimeoutError) as exc:
        raise ImagesLostError(
            f"the image pool replica that prepared this request's images is gone ({type(exc).__name__}); "
            "retry the request"
        ) from None
    return [next(resolved) if isinstance(image, PooledImage) else image for image in images]


@serve.deployment(name=IMAGE_POOL)
class ImagePool:
    def __init__(self, config: ImagePoolConfig, grid: ImageGrid):
        # Parallelism comes from decode threads and replicas; OpenCV's own threads
        # would oversubscribe the replica's CPUs.
        cv2.setNumThreads(1)
        self._loader = ImageLoader(sources_at_start(config.fetch), config.decode, grid)
        self._fetch_s = Histogram(
            "pixtral_image_fetch_seconds", description="Time to get an image's bytes.", boundaries=_SECONDS
        )
        self._decode_s = Histogram(
            "pixtral_image_decode_seconds", description="Time to decode and resize an image.", boundaries=_SECONDS
        )
        self._bytes = Counter("pixtral_image_source_bytes", description="Source bytes of prepared images.")
        self._images = Counter(
            "pixtral_images", description="Images handled, by outcome.", tag_keys=("outcome",)
        )

    async def prepare(
        self, url: str, request_id: str | None = None, by_value: bool = False
    ) -> PooledImage | PreparedImage:
        """The image of ``url`` decoded and resized: a record of its pixels in this replica's object
        store, or (``by_value``, the ingress's retry after ``ImagesLostError``) the pixels themselves."""
        started = time.perf_counter()
        try:
            image = await self._loader.load(url, request_id)
        except ImageError as exc:
            self._images.inc(tags={"outcome": exc.code or "error"})
            raise
        if image.cache_hit:
            self._images.inc(tags={"outcome": "cache_hit"})
        else:
            self._images.inc(tags={"outcome": "prepared"})
            self._bytes.inc(image.source_bytes)
            self._fetch_s.observe(image.timings.get("fetch_s", 0.0))
            self._decode_s.observe(image.timings.get("decode_s", time.perf_counter() - started))
        return image if by_value else PooledImage.put(image)

    async def __del__(self) -> None:
        await self._loader.aclose()
