"""The whole request path with the real engine, through the official openai SDK."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image


def jpeg_data_url(seed: int, size=(320, 240)) -> str:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def user_message(*image_urls: str, text: str = "Describe the image.") -> dict:
    content = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"role": "user", "content": content}


def test_non_streaming_with_one_image(client):
    response = client.chat.completions.create(
        model="tiny-pixtral", messages=[user_message(jpeg_data_url(1))], max_tokens=8, temperature=0
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens > 300
