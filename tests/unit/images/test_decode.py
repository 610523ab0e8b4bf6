"""decode_and_resize and data: URLs through ImageLoader (no network)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import cv2
import numpy as np
import pytest
from synthetic import encode, jpeg, photo_like, png
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mistral_common.tokens.tokenizers.image import _convert_to_rgb
from PIL import Image

from serve_app.config import DecodeConfig, FetchConfig
from serve_app.errors import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageSourceError,
)
from serve_app.images import ImageGrid, ImageLoader
from serve_app.images.decode import decode_and_resize

GRID = ImageGrid()
CAP = 50_000_000


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def load(url: str, fetch: FetchConfig | None = None, decode: DecodeConfig | None = None):
    async def main():
        loader = ImageLoader(fetch or FetchConfig(), decode or DecodeConfig(), GRID)
        try:
            return await loader.load(url)
        finally:
            await loader.aclose()

    return asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "CMYK", "I;16"])
def test_modes_convert_like_mistral_common(mode):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0
    rgba[10:20, :, 3] = 128
    source = Image.fromarray(rgba, "RGBA").convert(mode)
    if mode == "P":
        source.info["transparency"] = 0
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    buf = io.BytesIO()
    source.save(buf, fmt)
    data = buf.getvalue()
    pixels, w, h = decode_and_resize(data, GRID, CAP)
    assert (w, h) == (48, 40) and pixels.shape == (48, 48, 3)
    expected = np.asarray(_convert_to_rgb(Image.open(io.BytesIO(data))))
    expected = cv2.resize(expected, (48, 48), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(pixels, expected)


def test_png_alpha_is_composited_on_white_exactly():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :16, 3] = 0
    rgba[:, 16:, 3] = 64
    data = encode(rgba, "PNG")
    pixels, _, _ = decode_and_resize(data, GRID, CAP)
    expected = np.asarray(_convert_to_rgb(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])


@pytest.mark.parametrize(("orientation", "upright"), [(1, (300, 200)), (3, (300, 200)), (6, (200, 300)), (8, (200, 300))])
def test_exif_orientation_sets_upright_size(orientation, upright):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo_like(300, 200), "JPEG", exif=exif)
    pixels, w, h = decode_and_resize(data, GRID, CAP)
    assert (w, h) == upright
    assert (pixels.shape[1], pixels.shape[0]) == GRID.target_size(*upright)


def test_exif_rotated_large_jpeg_uses_rotated_grid():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo_like(4032, 3024), "JPEG", quality=85, exif=exif)
    pixels, w, h = decode_and_resize(data, GRID, CAP)
    assert (w, h) == (3024, 4032)
    assert pixels.shape == (1024, 768, 3)


def test_truncated_jpeg_is_a_decode_error():
    data = jpeg(640, 480)
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_and_resize(data[: len(data) // 2], GRID, CAP)


def test_truncated_png_is_a_decode_error():
    data = png(300, 200)
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_and_resize(data[: len(data) - 200], GRID, CAP)


def test_decompression_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # 144 MP in ~20 KB
    with pytest.raises(ImageTooLargeError, match="pixels, more than the 50000000 allowed") as info:
        decode_and_resize(buf.getvalue(), GRID, CAP)
    assert info.value.status_code == 413


def test_pixel_cap_is_configurable():
    with pytest.raises(ImageTooLargeError, match="more than the 1000 allowed"):
        decode_and_resize(png(40, 30), GRID, 1000)


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff" + b"\x00" * 100, b"GIF89a"])
def test_non_image_bytes(data):
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        decode_and_resize(data, GRID, CAP)


def test_output_is_contiguous_uint8():
    pixels, _, _ = decode_and_resize(jpeg(1000, 700), GRID, CAP)
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous and pixels.shape == (704, 1008, 3)


# data: URLs through the loader -------------------------------------------------------


def test_data_url_png():
    data = png(100, 50)
    image = load(data_url(data))
    assert image.pixels.shape == (64, 112, 3)
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert (image.source_width, image.source_height, image.source_bytes) == (100, 50, len(data))
    assert not image.pixels.flags.writeable


@pytest.mark.parametrize(
    "url",
    [
        "data:image/jpeg;base64,",  # empty
        "data:image/png;base64,@@@@",
        "data:image/png;base64,aGVsbG8=",  # "hello"
    ],
)
def test_bad_data_urls_are_decode_errors(url):
    with pytest.raises(ImageDecodeError):
        load(url)


@pytest.mark.parametrize(
    "url",
    [
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:;base64,aGVsbG8=",
        "data:image/png;base64",  # no comma
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "/tmp/a.png",
        "a.png",
        "",
        "gopher://x",
        "javascript:alert(1)",
    ],
)
def test_unsupported_sources(url):
    with pytest.raises(UnsupportedImageSourceError) as info:
        load(url)
    assert info.value.param is None


def test_data_url_with_params_and_uppercase():
    data = png(20, 20)
    image = load("DATA:IMAGE/PNG;charset=binary;BASE64," + base64.b64encode(data).decode())
    assert image.pixels.shape == (32, 32, 3)


def test_data_url_cap_is_checked_before_decoding():
    fetch = FetchConfig(max_data_url_bytes=1000)
    with pytest.raises(ImageTooLargeError, match="exceeds 1000 bytes"):
        load("data:image/png;base64," + "!" * 5000, fetch)  # not base64 either: only the length check says "too large"


def test_data_url_cache_and_concurrent_dedup():
    url = data_url(jpeg(800, 600))

    async def main():
        loader = ImageLoader(FetchConfig(), DecodeConfig(cache_entries=2), GRID)
        try:
            burst = await asyncio.gather(*(loader.load(url) for _ in range(8)))
            again = await loader.load(url)
            return burst, again
        finally:
            await loader.aclose()

    burst, again = asyncio.run(asyncio.wait_for(main(), 30))
    assert sum(not im.cache_hit for im in burst) == 1
    assert again.cache_hit and again.timings["decode_s"] == 0.0
    np.testing.assert_array_equal(again.pixels, burst[0].pixels)


def test_lru_evicts_oldest():
    urls = [data_url(png(16, 16, seed=i)) for i in range(3)]

    async def main():
        loader = ImageLoader(FetchConfig(), DecodeConfig(cache_entries=2), GRID)
        try:
            for u in urls:
                await loader.load(u)
            return [(await loader.load(u)).cache_hit for u in (urls[2], urls[1], urls[0])]
        finally:
            await loader.aclose()

    assert asyncio.run(main()) == [True, True, False]


# never crash: anything gives an image or a typed error -------------------------------

_SEEDS = [png(8, 8), jpeg(16, 16)]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=512), st.builds(lambda b, i: _SEEDS[i][: len(b)] + b, st.binary(max_size=64),
                                                     st.integers(0, 1))))
def test_random_bytes_never_crash(data):
    try:
        pixels, _, _ = decode_and_resize(data, GRID, CAP)
    except ImageError:
        return
    assert pixels.ndim == 3 and pixels.dtype == np.uint8


_loop_policy_urls = st.one_of(
    st.text(max_size=80),
    st.builds(lambda m, p: f"data:{m};base64,{p}", st.sampled_from(["image/png", "image/jpeg", "text/html", ""]),
              st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=80)),
    st.builds(lambda b: data_url(b), st.binary(max_size=200)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_loop_policy_urls)
def test_random_urls_never_crash(url):
    async def main():
        loader = ImageLoader(FetchConfig(), DecodeConfig(), GRID)
        try:
            return await loader.load(url)
        except ImageError:
            return None
        finally:
            await loader.aclose()

    # block_private_addresses stays on and no allowed host exists, so nothing here reaches the network
    if url.lower().startswith(("http", "s3")):
        return
    result = asyncio.run(main())
    assert result is None or result.pixels.dtype == np.uint8
