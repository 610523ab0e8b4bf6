"""Synthetic images for the decode and parity tests (imported by name; no network)."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a few hard edges and mild noise: closer to a photo than pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = xx / max(width, 1), yy / max(height, 1)
    arr = np.stack(
        [
            128 + 100 * np.sin(6.0 * fx + 2.0 * fy),
            128 + 100 * np.cos(4.0 * fy - 3.0 * fx),
            255 * fx * fy,
        ],
        -1,
    )
    arr[(fx > 0.3) & (fx < 0.5) & (fy > 0.2) & (fy < 0.6)] = (240, 30, 30)
    arr += rng.normal(0, 4, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=32)
def jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    return encode(photo_like(width, height, seed), "JPEG", quality=quality)


@functools.lru_cache(maxsize=32)
def png(width: int, height: int, seed: int = 0) -> bytes:
    return encode(photo_like(width, height, seed), "PNG")
