"""Request payloads shared by the e2e tests."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

REQUEST_LIMIT = 4 * 1024 * 1024  # ingress.max_request_bytes of the e2e app
SYSTEM_PROMPT_TEMPLATE = "You are {name}, a careful assistant. Today is {today}; yesterday was {yesterday}. {braces}"


def jpeg_bytes(seed: int, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def data_url(payload: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def user_message(*image_urls: str, text: str = "Describe the image.") -> dict:
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"role": "user", "content": content}


def long_image_stream(model: str, seed: int, max_tokens: int) -> dict:
    """A streamed request with one small image of its own that decodes exactly ``max_tokens``."""
    return {
        "model": model,
        "messages": [user_message(data_url(jpeg_bytes(seed, (64, 48))))],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
