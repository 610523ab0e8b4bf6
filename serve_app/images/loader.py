"""``ImageLoader``: URL in, ``PreparedImage`` out, without blocking the event loop.

Remote fetches are de-duplicated while in flight by URL; decodes are
de-duplicated in flight and cached (LRU) by the sha256 of the source bytes.
A URL is never cached as standing for its content: https and S3 objects
change, so every load of a remote URL fetches again, and only the decode of
identical bytes is reused. For data: URLs the content is the URL, so the
sha256 cache covers them without a fetch at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from serve_app.config import DecodeConfig, FetchConfig
from serve_app.errors import ImageError
from serve_app.images.decode import decode_and_resize
from serve_app.images.grid import ImageGrid
from serve_app.images.prepared import PreparedImage
from serve_app.images.sources import REQUEST_ID, ImageSource, open_source, scheme_of, sources_for

T = TypeVar("T")


class _SingleFlight:
    """At most one running task per key; later callers await the same task.

    The work runs as its own task so that one caller being cancelled does
    not cancel it for the others; when the last caller is gone (its request
    failed on another image, or the client left) the work is cancelled too.
    """

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Task[Any]] = {}
        self._callers: dict[asyncio.Task[Any], int] = {}

    async def run(self, key: Any, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, joined): joined is True when another caller's task did the work."""
        task = self._tasks.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.get_running_loop().create_task(work())
            self._tasks[key] = task
            task.add_done_callback(lambda t, k=key: self._tasks.pop(k, None) if self._tasks.get(k) is t else None)
        self._callers[task] = self._callers.get(task, 0) + 1
        try:
            return await asyncio.shield(task), joined
        finally:
            self._callers[task] -= 1
            if not self._callers[task]:
                del self._callers[task]
                if not task.done():
                    task.cancel()


class ImageLoader:
    """Fetches, decodes and resizes images for Pixtral.

    Accepts the URLs of every registered image source whose config section
    ``fetch`` has (serve_app/images/sources.py): as shipped, ``data:image/...;base64,``
    URLs, ``https://`` (``http://`` only with ``fetch.allow_http``) and
    ``s3://bucket/key``. ``clients`` are handed to the sources that name them
    (``s3_client``: a boto3 S3 client; ``_resolver``: DNS for https fetches, tests only).
    Every failure is a typed ``ImageError`` with ``param`` left for the caller to
    fill in. ``pixels`` of a returned image are read-only, as they may be shared
    with the cache.
    """

    def __init__(self, fetch: FetchConfig, decode: DecodeConfig, grid: ImageGrid, **clients: Any):
        self._fetch_cfg = fetch
        self._decode_cfg = decode
        self._grid = grid
        self._offered = sources_for(fetch)
        taken = {name for source in self._offered.values() for name in source.clients}
        unknown = sorted(set(clients) - taken)
        if unknown:
            raise TypeError(f"ImageLoader got keyword arguments no image source takes: {unknown}")
        self._clients = clients
        self._open: dict[type[ImageSource], ImageSource] = {}
        self._pool = ThreadPoolExecutor(max_workers=decode.decode_threads, thread_name_prefix="image-decode")
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()
        self._fetches = _SingleFlight()
        self._decodes = _SingleFlight()

    async def load(self, url: str, request_id: str | None = None) -> PreparedImage:
        """``request_id`` labels the log lines of this load's refusals (the SSRF guard's)."""
        if not isinstance(url, str):
            raise ImageError("image URL must be a string")
        token = REQUEST_ID.set(request_id)
        try:
            return await self._load(url)
        finally:
            REQUEST_ID.reset(token)

    async def _load(self, url: str) -> PreparedImage:
        source = self._source(scheme_of(url, self._offered))
        t0 = time.perf_counter()
        if source.remote:
            data, _ = await self._fetches.run(url, lambda: source.fetch(url))
        else:
            data = await source.fetch(url)
        fetch_s = time.perf_counter() - t0
        return await self._prepare(data, fetch_s)

    async def aclose(self) -> None:
        opened, self._open = list(self._open.values()), {}
        for source in opened:
            await source.aclose()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _source(self, scheme: str) -> ImageSource:
        """The source of ``scheme``, opened on first use (one instance serves all its schemes)."""
        cls = self._offered[scheme]
        source = self._open.get(cls)
        if source is None:
            source = self._open[cls] = open_source(cls, self._fetch_cfg, self._clients)
        return source

    async def _prepare(self, data: bytes, fetch_s: float) -> PreparedImage:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        digest = await loop.run_in_executor(self._pool, _sha256, data) if len(data) > 1 << 20 else _sha256(data)
        cached = self._cache_get(digest)
        if cached is not None:
            return dataclasses.replace(cached, cache_hit=True, timings={"fetch_s": fetch_s, "decode_s": 0.0})

        async def work() -> PreparedImage:
            pixels, w, h = await loop.run_in_executor(
                self._pool, decode_and_resize, data, self._grid, self._decode_cfg.max_pixels
            )
            pixels.setflags(write=False)
            image = PreparedImage(
                pixels=pixels, sha256=digest, source_width=w, source_height=h, source_bytes=len(data)
            )
            self._cache_put(digest, image)
            return image

        # decode_and_resize raises typed ImageErrors for every bad image it knows; anything else
        # is a bug or a Pillow surprise, and goes up as it is: a logged 500 at the ingress.
        image, joined = await self._decodes.run(digest, work)
        decode_s = time.perf_counter() - t0
        return dataclasses.replace(image, cache_hit=joined, timings={"fetch_s": fetch_s, "decode_s": decode_s})

    def _cache_get(self, digest: str) -> PreparedImage | None:
        image = self._cache.get(digest)
        if image is not None:
            self._cache.move_to_end(digest)
        return image

    def _cache_put(self, digest: str, image: PreparedImage) -> None:
        size = self._decode_cfg.cache_entries
        if size <= 0:
            return
        self._cache[digest] = image
        self._cache.move_to_end(digest)
        while len(self._cache) > size:
            self._cache.popitem(last=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
