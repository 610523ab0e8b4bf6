"""Bytes to a resized RGB array: the CPU-heavy half of the image stage.

Pure functions, no I/O and no event loop; the loader runs them in its thread
pool. Behaviour follows mistral_common (``tokens/tokenizers/image.py``) so the
model sees what vLLM's own preprocessing would give it, with two deliberate
differences that make it fast:

* JPEGs are decoded with ``Image.draft`` at the largest DCT scale that stays at
  or above the target size (never below: the token grid comes from the
  original size and the final resize must only shrink or match).
* The resize is OpenCV's ``INTER_CUBIC`` on uint8 instead of float32 (mistral_common
  uses the same interpolation on float32; the difference is rounding).

EXIF orientation is applied (mistral_common does not), so a phone photo is
seen upright and its token grid comes from the upright size.
"""

from __future__ import annotations

import io
import warnings
from struct import error as struct_error

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serve_app.errors import ImageDecodeError, ImageTooLargeError
from serve_app.images.grid import ImageGrid

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}



def convert_to_rgb(image: Image.Image) -> Image.Image:
    """mistral_common's ``_convert_to_rgb``: transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    white_bg = Image.new("RGBA", image.size, "WHITE")
    white_bg.paste(image, (0, 0), image)
    return white_bg.convert("RGB")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not fail the image; exif_transpose ignores it too
        return 1


def decode_and_resize(data: bytes, grid: ImageGrid, max_pixels: int) -> tuple[np.ndarray, int, int]:
    """Decode ``data`` and resize it to ``grid.target_size`` of its upright size.

    Returns ``(pixels, source_width, source_height)``: pixels is a C-contiguous
    HxWx3 uint8 array; the source size is after EXIF orientation.

    Raises ImageDecodeError (not an image, truncated, corrupt) or
    ImageTooLargeError (more than ``max_pixels`` pixels).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"image is not a decodable image ({type(exc).__name__})") from None

    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"image is not a decodable image (size {width}x{height})")
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image has {width}x{height} = {width * height} pixels, more than the {max_pixels} allowed"
            )
        orientation = _orientation(image)
        up_w, up_h = (height, width) if orientation in _SWAPS_AXES else (width, height)
        target_w, target_h = grid.target_size(up_w, up_h)
        try:
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                # draft() takes the size in stored (pre-rotation) orientation.
                need = (target_h, target_w) if orientation in _SWAPS_AXES else (target_w, target_h)
                if need[0] < width and need[1] < height:
                    image.draft(image.mode, need)
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            rgb = convert_to_rgb(image)
            arr = np.asarray(rgb)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"image is a decompression bomb: {exc}") from None
        except (OSError, ValueError, SyntaxError, EOFError, struct_error) as exc:
            raise ImageDecodeError(f"image is not a decodable image: {exc}") from None

    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageDecodeError(f"image is not a decodable image (decoded to {arr.dtype} {arr.shape})")
    if (arr.shape[1], arr.shape[0]) != (target_w, target_h):
        arr = cv2.resize(arr, (target_w, target_h), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(arr), up_w, up_h

