"""``data:image/...;base64,`` URLs: the bytes are in the URL, so nothing is fetched."""

from __future__ import annotations

import base64
import binascii
import re

from serve_app.config import DataUrlSourceConfig
from serve_app.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageSourceError
from serve_app.images.sources import ImageSource, register_source, short

_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)


def decode_data_url(url: str, config: DataUrlSourceConfig) -> bytes:
    """The payload of a ``data:image/...;base64,`` URL, size-checked before decoding."""
    match = _DATA_URL.match(url)
    if match is None:
        raise UnsupportedImageSourceError(f"data URL is malformed: {short(url)}")
    mime = match["mime"].strip().lower()
    params = [p.strip().lower() for p in match["params"].split(";") if p.strip()]
    if not mime.startswith("image/"):
        raise UnsupportedImageSourceError(
            f"data URL has media type {mime or 'none'!r}; only image/* is accepted"
        )
    if "base64" not in params:
        raise UnsupportedImageSourceError("data URL must be base64-encoded (data:image/...;base64,...)")
    payload = url[match.end():]
    # 4 base64 characters carry 3 bytes; check before spending memory on decoding.
    if len(payload) > (config.max_data_url_bytes + 2) // 3 * 4 + 4:
        raise ImageTooLargeError(f"image exceeds {config.max_data_url_bytes} bytes (data URL)")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("data URL payload is not valid base64") from None
    if len(data) > config.max_data_url_bytes:
        raise ImageTooLargeError(f"image exceeds {config.max_data_url_bytes} bytes (data URL)")
    if not data:
        raise ImageDecodeError("data URL payload is empty; image is not a decodable image")
    return data


@register_source
class DataUrlSource(ImageSource):
    """Decodes the URL's own payload on the event loop (base64 of at most ``max_data_url_bytes``)."""

    schemes = ("data",)
    hint = "a data:image/...;base64 URL"
    config_section = DataUrlSourceConfig
    remote = False

    def __init__(self, config: DataUrlSourceConfig):
        self._config = config

    async def fetch(self, url: str) -> bytes:
        return decode_data_url(url, self._config)
