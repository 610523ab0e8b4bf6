"""ImagePool: the autoscaled CPU deployment that turns image URLs into pixels."""

from __future__ import annotations

import time

import cv2

from ray import serve
from ray.serve.metrics import Counter, Histogram

from serve_app.config import ImagePoolConfig
from serve_app.deployments import IMAGE_POOL
from serve_app.errors import ImageError
from serve_app.images import ImageGrid, ImageLoader, PreparedImage, sources_at_start

_SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


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

    async def prepare(self, url: str, request_id: str | None = None) -> PreparedImage:
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
        return image

    async def __del__(self) -> None:
        await self._loader.aclose()
