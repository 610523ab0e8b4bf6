"""Image payloads the loopback servers serve (imported by name from the tests)."""

from __future__ import annotations

import gzip
import io

import numpy as np
from PIL import Image


def make_jpeg(width: int, height: int, exif_orientation: int | None = None) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    image = Image.fromarray(arr.astype(np.uint8))
    buf = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def make_png_alpha(width: int = 64, height: int = 48) -> bytes:
    arr = np.zeros((height, width, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 0  # fully transparent → white
    arr[: height // 2, :, 3] = 255  # top half opaque red-ish
    buf = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def make_bomb_png(side: int = 20000) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


JPEG = make_jpeg(320, 240)
ROTATED = make_jpeg(300, 200, exif_orientation=6)
TRUNCATED = JPEG[: len(JPEG) // 2]
ALPHA_PNG = make_png_alpha()
BOMB = make_bomb_png()
BIG = b"\xff" * (300 * 1024)

GZIP_BOMB_BYTES = 64 * 1024 * 1024
GZIP_BOMB = gzip.compress(b"\0" * GZIP_BOMB_BYTES, 9)  # ~64 KiB that inflate to 64 MiB
