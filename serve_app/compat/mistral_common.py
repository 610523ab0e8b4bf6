"""mistral_common internals, checked on mistral_common 1.13.1 (``CHECKED``).

| use | internal | why |
|---|---|---|
| ``image_to_num_tokens`` | ``ImageEncoder._image_to_num_tokens(image) -> (cols, rows)`` | the token grid of an image already resized by the pool, without re-normalising its pixels (the public ``ImageEncoder.__call__`` does both) |
"""

from __future__ import annotations

from typing import Any

CHECKED = ">=1.13,<1.14"


def image_to_num_tokens(encoder: Any, image: Any) -> tuple[int, int]:
    """(columns, rows) of image tokens ``encoder`` gives ``image``."""
    cols, rows = encoder._image_to_num_tokens(image)
    return int(cols), int(rows)
