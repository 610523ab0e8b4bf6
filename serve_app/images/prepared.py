"""What the image pool hands to the vLLM replicas."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PreparedImage:
    """A decoded RGB image already resized to Pixtral's token grid.

    ``pixels`` is (height, width, 3) uint8 with both sides multiples of the
    grid's tile and the longest side at most ``max_image_size``; compact to
    ship through Ray's object store, and turned into a PIL image only inside
    the vLLM replica.
    """

    pixels: np.ndarray
    sha256: str
    source_width: int
    source_height: int
    source_bytes: int
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    cache_hit: bool = field(default=False, compare=False)

    @property
    def content_id(self) -> str:
        """``{sha256}-{width}x{height}``: the image's id for vLLM's caches and for routing."""
        return f"{self.sha256}-{self.width}x{self.height}"

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])
