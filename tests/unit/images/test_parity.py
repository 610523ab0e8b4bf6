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

from serve_app.compat.mistral_common import image_to_num_tokens
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
    cols, rows = image_to_num_tokens(ENCODER, image)
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
    cols, rows = image_to_num_tokens(ENCODER, Image.open(io.BytesIO(data)))
    assert ours.shape[:2] == (rows * 16, cols * 16)
    assert GRID.num_tokens(src_w, src_h) == rows * (cols + 1)

    if fmt == "jpeg" and uses_draft(w, h):
        diff = np.abs(ours.astype(np.float32) - ref)
        assert diff.mean() <= DRAFT_MEAN
        assert np.percentile(diff, 99) <= DRAFT_P99
    else:
        np.testing.assert_allclose(ours.astype(np.float32), np.clip(ref, 0, 255), rtol=0, atol=EXACT_ATOL)


@pytest.fixture
def drafts(monkeypatch):
    """Every DCT draft our decoder asks Pillow for: (requested size, size decoded at)."""
    from PIL import JpegImagePlugin

    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real(self, mode, size)
        calls.append((tuple(size), self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_our_decoder_drafts_a_12mp_photo_but_never_below_the_target(drafts):
    pixels, _, _ = decode_and_resize(jpeg(4032, 3024), GRID, 50_000_000)
    target = GRID.target_size(4032, 3024)
    assert len(drafts) == 1
    _, decoded_at = drafts[0]
    assert decoded_at[0] < 4032 and decoded_at[1] < 3024  # the decode really was cheaper
    assert decoded_at[0] >= target[0] and decoded_at[1] >= target[1]  # the resize only shrinks
    assert pixels.shape[:2] == (target[1], target[0])


def test_our_decoder_drafts_rotated_photos_in_stored_orientation(drafts):
    """EXIF orientation 6: the draft size is asked in stored (landscape) orientation."""
    from synthetic import photo_like

    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(photo_like(4032, 3024)).save(buffer, "JPEG", quality=90, exif=exif)
    pixels, width, height = decode_and_resize(buffer.getvalue(), GRID, 50_000_000)
    assert (width, height) == (3024, 4032)
    target = GRID.target_size(3024, 4032)
    _, decoded_at = drafts[0]
    assert decoded_at[0] >= target[1] and decoded_at[1] >= target[0]
    assert pixels.shape[:2] == (target[1], target[0])


def test_no_draft_when_the_photo_is_already_near_the_target(drafts):
    decode_and_resize(jpeg(1024, 768), GRID, 50_000_000)
    assert drafts == []
