"""Our decode+resize against mistral_common's own preprocessing (``transform_image``).

Sizes must match the token grid exactly. Pixel tolerances, stated once here:

* No DCT draft (PNGs, JPEGs already near the target): we resize the same RGB
  image with the same OpenCV INTER_CUBIC, on uint8 instead of float32, so the
  only difference is rounding to 0..255: |ours - clip(ref)| <= 0.5 + 1e-3
  everywhere.
* JPEGs decoded with ``draft`` (at 1/2, 1/4 or 1/8 scale) then resized: the
  libjpeg DCT downscale averages where a plain cubic resize of the full image
  samples, so edges differ: mean |diff| <= 2.0 levels and 99th percentile
  <= 16 levels on these photo-like images.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from synthetic import jpeg, png
from mistral_common.tokens.tokenizers.image import (
    DATASET_MEAN,
    DATASET_STD,
    ImageConfig,
    ImageEncoder,
    SpecialImageIDs,
    transform_image,
)
from PIL import Image

from serve_app.images import ImageGrid
from serve_app.images.decode import decode_and_resize

GRID = ImageGrid()
ENCODER = ImageEncoder(ImageConfig(16, 1024), SpecialImageIDs(img=10, img_break=12, img_end=13))

EXACT_ATOL = 0.5 + 1e-3
DRAFT_MEAN = 2.0
DRAFT_P99 = 16.0


def reference(data: bytes) -> np.ndarray:
    """mistral_common's model input for ``data``, de-normalised back to 0..255 (HxWx3 float)."""
    image = Image.open(io.BytesIO(data))
    cols, rows = ENCODER._image_to_num_tokens(image)
    out = transform_image(image, (cols * 16, rows * 16)).transpose(1, 2, 0)
    return (out * np.asarray(DATASET_STD, np.float32) + np.asarray(DATASET_MEAN, np.float32)) * 255.0


def uses_draft(w: int, h: int) -> bool:
    tw, th = GRID.target_size(w, h)
    return w // tw >= 2 and h // th >= 2


CASES = [
    ("jpeg", 4032, 3024),
    ("jpeg", 3024, 4032),
    ("jpeg", 1024, 768),
    ("jpeg", 2100, 2100),
    ("jpeg", 3000, 500),
    ("jpeg", 6000, 60),
    ("jpeg", 1000, 1000),
    ("jpeg", 2049, 1000),
    ("jpeg", 17, 17),
    ("jpeg", 1, 1),
    ("jpeg", 8, 700),
    ("png", 2048, 1536),
    ("png", 333, 777),
    ("png", 1025, 1025),
    ("png", 4000, 16),
    ("png", 31, 5),
]


@pytest.mark.parametrize(("fmt", "w", "h"), CASES)
def test_matches_mistral_common(fmt, w, h):
    data = jpeg(w, h) if fmt == "jpeg" else png(w, h)
    ours, src_w, src_h = decode_and_resize(data, GRID, 50_000_000)
    ref = reference(data)

    assert (src_w, src_h) == (w, h)
    assert ours.shape == ref.shape
    cols, rows = ENCODER._image_to_num_tokens(Image.open(io.BytesIO(data)))
    assert ours.shape[:2] == (rows * 16, cols * 16)
    assert GRID.num_tokens(src_w, src_h) == rows * (cols + 1)

    if fmt == "jpeg" and uses_draft(w, h):
        diff = np.abs(ours.astype(np.float32) - ref)
        assert diff.mean() <= DRAFT_MEAN
        assert np.percentile(diff, 99) <= DRAFT_P99
    else:
        np.testing.assert_allclose(ours.astype(np.float32), np.clip(ref, 0, 255), rtol=0, atol=EXACT_ATOL)


def test_draft_is_used_and_never_below_target():
    """The draft path really runs for a 12 MP photo, and its decode is at least the target size."""
    data = jpeg(4032, 3024)
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", GRID.target_size(4032, 3024))
    assert image.size == (2016, 1512)
    assert uses_draft(4032, 3024)

