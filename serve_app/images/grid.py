"""Pixtral's image grid: how big an image may be and how many tokens it costs.

The arithmetic is mistral_common's (``ImageEncoder._image_to_num_tokens``, reached through ``serve_app.compat.mistral_common``):
scale down so the longest side is at most ``max_image_size`` (rounding each
side), then cover the image with ``patch_size * spatial_merge_size`` tiles.
The image the model sees is resized to exactly that tile grid.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageGrid:
    patch_size: int = 16
    spatial_merge_size: int = 1
    max_image_size: int = 1024

    @property
    def tile(self) -> int:
        return self.patch_size * self.spatial_merge_size

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) of image tokens for a ``width`` x ``height`` source image."""
        w: float = width
        h: float = height
        ratio = max(h / self.max_image_size, w / self.max_image_size)
        if ratio > 1:
            w = max(round(w / ratio), 1)
            h = max(round(h / ratio), 1)
        return (int(w) - 1) // self.tile + 1, (int(h) - 1) // self.tile + 1

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) in pixels that the model sees for this source image."""
        cols, rows = self.token_grid(width, height)
        return cols * self.tile, rows * self.tile

    def num_tokens(self, width: int, height: int) -> int:
        """Image tokens in the prompt: one per tile plus a break (or end) per row."""
        cols, rows = self.token_grid(width, height)
        return rows * (cols + 1)
