"""ImageLoader against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
import tracemalloc

import numpy as np
import pytest
from payloads import ALPHA_PNG, BIG, GZIP_BOMB, GZIP_BOMB_BYTES, JPEG

from serve_app.config import DecodeConfig, FetchConfig
from serve_app.errors import (
    ImageDecodeError,
    ImageError,
    ImageFetchError,
    ImageFetchTimeoutError,
    ImageForbiddenError,
    ImageNotFoundError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images import ImageGrid, ImageLoader

LOOPBACK = dict(allow_http=True, block_private_addresses=False, retry_backoff_s=0.01, total_timeout_s=5.0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def load(url: str, **fetch_kw):
    loader = ImageLoader(FetchConfig(**{**LOOPBACK, **fetch_kw}), DecodeConfig(), ImageGrid())
    try:
        return await loader.load(url)
    finally:
        await loader.aclose()


def test_jpeg_over_http(image_server):
    image = run(load(image_server.base + "/img.jpg"))
    assert image.pixels.shape == (240, 320, 3)
    assert image.pixels.dtype == np.uint8 and image.pixels.flags.c_contiguous
    assert image.sha256 == hashlib.sha256(JPEG).hexdigest()
    assert image.source_bytes == len(JPEG)
    assert set(image.timings) == {"fetch_s", "decode_s"}
    assert image.cache_hit is False


def test_png_alpha_over_http_is_white_composited(image_server):
    image = run(load(image_server.base + "/alpha.png"))
    assert image.pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(image.pixels[-1, -1], [255, 255, 255])
    np.testing.assert_array_equal(image.pixels[0, 0], [200, 0, 0])
    assert image.sha256 == hashlib.sha256(ALPHA_PNG).hexdigest()


def test_exif_rotated_jpeg_is_upright(image_server):
    image = run(load(image_server.base + "/rotated.jpg"))
    # stored 300x200 with orientation 6 → upright 200x300 → grid 208x304
    assert (image.source_width, image.source_height) == (200, 300)
    assert image.pixels.shape == (304, 208, 3)


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("/404", ImageNotFoundError, "not found"),
        ("/410", ImageNotFoundError, "not found"),
        ("/403", ImageForbiddenError, "refused access"),
        ("/401", ImageForbiddenError, "refused access"),
        ("/418", ImageError, "418"),
        ("/notimage", ImageDecodeError, "not a decodable image"),
        ("/truncated.jpg", ImageDecodeError, "not a decodable image"),
        ("/bomb.png", ImageTooLargeError, "pixels"),
        ("/redirect-loop", ImageError, "redirected more than"),
        ("/redirect-ftp", UnsupportedImageSourceError, "scheme"),
    ],
)
def test_typed_failures(image_server, path, error, words):
    with pytest.raises(error, match=words) as info:
        run(load(image_server.base + path))
    assert info.value.param is None


def test_4xx_is_not_retried(image_server):
    image_server.reset()
    with pytest.raises(ImageNotFoundError):
        run(load(image_server.base + "/404", retries=3))
    assert image_server.count("/404") == 1


def test_500_then_200_is_retried(image_server):
    image_server.reset()
    image = run(load(image_server.base + "/flaky", retries=2))
    assert image.pixels.shape == (240, 320, 3)
    assert image_server.count("/flaky") == 2


def test_500_forever_gives_fetch_error_after_retries(image_server):
    image_server.reset()
    with pytest.raises(ImageFetchError, match="500") as info:
        run(load(image_server.base + "/always500", retries=2))
    assert info.value.status_code == 502
    assert image_server.count("/always500") == 3


def test_redirect_to_allowed_is_followed(image_server):
    image_server.reset()
    image = run(load(image_server.base + "/redirect-chain-2"))
    assert image.pixels.shape == (240, 320, 3)
    assert image_server.count("/img.jpg") == 1


def test_redirect_limit(image_server):
    with pytest.raises(ImageError, match="redirected more than 1 times"):
        run(load(image_server.base + "/redirect-chain-2", max_redirects=1))


def test_redirect_to_host_outside_allow_list(image_server):
    image_server.reset()
    with pytest.raises(ImageForbiddenError, match="allowed domains"):
        run(load(image_server.base + "/redirect-elsewhere", allowed_domains=["127.0.0.1"]))
    assert image_server.count("/img.jpg") == 0


def test_allow_list_refuses_first_hop(image_server):
    image_server.reset()
    with pytest.raises(ImageForbiddenError, match="allowed domains"):
        run(load(image_server.base + "/img.jpg", allowed_domains=["example.com"]))
    assert image_server.count("/img.jpg") == 0


def test_http_refused_unless_allowed(image_server):
    with pytest.raises(UnsupportedImageSourceError, match="http://"):
        run(load(image_server.base + "/img.jpg", allow_http=False))


def test_byte_cap_from_content_length_refuses_before_reading(image_server):
    """The refusal comes from the declared length (it names it), not from counting the body."""
    with pytest.raises(ImageTooLargeError, match=rf"exceeds 100000 bytes \(Content-Length {len(BIG)}\)") as info:
        run(load(image_server.base + "/big-with-length", max_image_bytes=100_000))
    assert info.value.status_code == 413


def test_byte_cap_while_streaming_without_content_length(image_server):
    with pytest.raises(ImageTooLargeError, match="exceeds 100000 bytes$"):
        run(load(image_server.base + "/big-chunked", max_image_bytes=100_000))


def test_fetches_ask_for_identity_encoding(image_server):
    image = run(load(image_server.base + "/negotiated.jpg"))
    assert image_server.accept_encoding["/negotiated.jpg"] == "identity"
    assert image.sha256 == hashlib.sha256(JPEG).hexdigest()


@pytest.mark.parametrize("path", ["/gzip.jpg", "/deflate.jpg", "/raw-deflate.jpg"])
def test_an_encoded_body_sent_anyway_is_decoded(image_server, path):
    image = run(load(image_server.base + path))
    assert image.sha256 == hashlib.sha256(JPEG).hexdigest()  # the image, not its encoding
    assert image.source_bytes == len(JPEG)


def test_decoded_bytes_count_against_the_cap(image_server):
    """A gzip body under the cap that inflates past it is refused: the cap is on decoded bytes."""
    gzipped = len(gzip.compress(JPEG))
    assert gzipped < len(JPEG) - 1000
    with pytest.raises(ImageTooLargeError, match=f"exceeds {len(JPEG) - 1} bytes$"):
        run(load(image_server.base + "/gzip.jpg", max_image_bytes=len(JPEG) - 1))


def test_a_gzip_bomb_stops_at_the_cap(image_server):
    """~64 KiB of gzip that inflate to 64 MiB: decoding stops at the cap, memory stays near it."""
    cap = 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=f"exceeds {cap} bytes"):
            run(load(image_server.base + "/gzip-bomb", max_image_bytes=cap))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(GZIP_BOMB) < cap < GZIP_BOMB_BYTES
    assert peak < 4 * cap, f"peak {peak} bytes while refusing a {GZIP_BOMB_BYTES}-byte bomb at a {cap}-byte cap"


@pytest.mark.parametrize(("path", "words"), [("/gzip-broken", "not valid gzip"), ("/br.jpg", "unsupported")])
def test_encodings_we_cannot_read_are_the_hosts_fault(image_server, path, words):
    with pytest.raises(ImageFetchError, match=words) as info:
        run(load(image_server.base + path, retries=0))
    assert (info.value.status_code, info.value.code) == (502, "image_fetch_failed")


def test_slow_forever_stream_times_out_within_bound(image_server):
    start = time.monotonic()
    with pytest.raises(ImageFetchTimeoutError, match="longer than 1.0s") as info:
        run(load(image_server.base + "/slow-forever", total_timeout_s=1.0, max_image_bytes=10**8))
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3.0
    assert info.value.status_code == 504


def test_unreachable_host_is_a_timeout_class_error():
    # a closed loopback port: connection refused, retried, then reported
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageFetchTimeoutError, match="unreachable"):
        run(load(f"http://127.0.0.1:{port}/x.jpg", retries=1))


def test_concurrent_loads_of_one_url_fetch_once(image_server):
    image_server.reset()

    async def main():
        loader = ImageLoader(FetchConfig(**LOOPBACK), DecodeConfig(), ImageGrid())
        try:
            return await asyncio.gather(*(loader.load(image_server.base + "/slow-jpg") for _ in range(8)))
        finally:
            await loader.aclose()

    images = run(main())
    assert image_server.count("/slow-jpg") == 1
    assert len({im.sha256 for im in images}) == 1
    assert sum(not im.cache_hit for im in images) == 1


def test_remote_url_is_refetched_but_decode_is_cached(image_server):
    image_server.reset()

    async def main():
        loader = ImageLoader(FetchConfig(**LOOPBACK), DecodeConfig(), ImageGrid())
        try:
            first = await loader.load(image_server.base + "/img.jpg")
            second = await loader.load(image_server.base + "/img.jpg")
            return first, second
        finally:
            await loader.aclose()

    first, second = run(main())
    assert image_server.count("/img.jpg") == 2
    assert (first.cache_hit, second.cache_hit) == (False, True)
    np.testing.assert_array_equal(first.pixels, second.pixels)


def test_cancelled_load_stops_its_fetch(image_server):
    """A request that failed on another image cancels this one: the download stops, not only the wait."""
    image_server.reset()
    image_server.aborted.clear()

    async def main():
        loader = ImageLoader(FetchConfig(**{**LOOPBACK, "total_timeout_s": 20.0, "max_image_bytes": 10**8}),
                             DecodeConfig(), ImageGrid())
        try:
            load = asyncio.ensure_future(loader.load(image_server.base + "/slow-forever"))
            await asyncio.sleep(0.5)
            load.cancel()
            with pytest.raises(asyncio.CancelledError):
                await load
            deadline = time.monotonic() + 3
            while not image_server.aborted["/slow-forever"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await loader.aclose()

    run(main())
    assert image_server.count("/slow-forever") == 1
    assert image_server.aborted["/slow-forever"] == 1


def test_cancelling_one_of_two_callers_keeps_the_shared_fetch(image_server):
    image_server.reset()

    async def main():
        loader = ImageLoader(FetchConfig(**LOOPBACK), DecodeConfig(), ImageGrid())
        try:
            first = asyncio.ensure_future(loader.load(image_server.base + "/slow-jpg"))
            second = asyncio.ensure_future(loader.load(image_server.base + "/slow-jpg"))
            await asyncio.sleep(0.2)
            first.cancel()
            return await second
        finally:
            await loader.aclose()

    assert run(main()).source_bytes == len(JPEG)
    assert image_server.count("/slow-jpg") == 1
