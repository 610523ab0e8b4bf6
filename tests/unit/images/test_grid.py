"""ImageGrid against mistral_common's own token arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mistral_common.tokens.tokenizers.image import ImageConfig, ImageEncoder, SpecialImageIDs
from PIL import Image

from serve_app.compat.mistral_common import image_to_num_tokens
from serve_app.images import ImageGrid

SIZES = [
    (1, 1), (1, 2), (2, 1), (15, 15), (16, 16), (17, 17), (1024, 1024), (1025, 1025), (1025, 1024), (1024, 1025),
    (1023, 1), (1, 1023), (1, 100000), (100000, 1), (2, 50000), (4032, 3024), (3024, 4032), (1024, 768),
    (2048, 1536), (1920, 1080), (1080, 1920), (640, 480), (33, 2049), (2047, 31), (1500, 24), (1000, 1000),
]
CONFIGS = [(16, 1024, 1), (14, 1540, 2), (16, 1024, 2), (28, 896, 1)]


def reference(patch: int, max_size: int, merge: int, w: int, h: int) -> tuple[int, int]:
    encoder = ImageEncoder(ImageConfig(patch, max_size, merge), SpecialImageIDs(1, 2, 3))
    return image_to_num_tokens(encoder, Image.new("1", (w, h)))


@pytest.mark.parametrize(("patch", "max_size", "merge"), CONFIGS)
@pytest.mark.parametrize(("w", "h"), SIZES)
def test_token_grid_matches_mistral_common(patch, max_size, merge, w, h):
    grid = ImageGrid(patch_size=patch, spatial_merge_size=merge, max_image_size=max_size)
    cols, rows = reference(patch, max_size, merge, w, h)
    assert grid.token_grid(w, h) == (cols, rows)
    assert grid.target_size(w, h) == (cols * patch * merge, rows * patch * merge)
    assert grid.num_tokens(w, h) == rows * (cols + 1)
    tw, th = grid.target_size(w, h)
    assert tw <= max(max_size, patch * merge) + patch * merge and th <= max(max_size, patch * merge) + patch * merge


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 20000), st.integers(1, 20000))
def test_token_grid_matches_for_random_sizes(w, h):
    assert ImageGrid().token_grid(w, h) == reference(16, 1024, 1, w, h)


def test_known_values():
    grid = ImageGrid()
    assert grid.target_size(4032, 3024) == (1024, 768)
    assert grid.num_tokens(4032, 3024) == 48 * 65
    assert grid.target_size(1025, 1025) == (1024, 1024)
    assert grid.target_size(1, 1) == (16, 16)
