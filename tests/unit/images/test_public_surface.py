"""The package's public surface, pinned: other stages code against exactly this."""

from __future__ import annotations

import inspect

import serve_app.images as images


def test_all():
    assert sorted(images.__all__) == ["ImageGrid", "ImageLoader", "PreparedImage"]


def test_loader_signature():
    params = inspect.signature(images.ImageLoader.__init__).parameters
    assert list(params)[:4] == ["self", "fetch", "decode", "grid"]
    assert params["s3_client"].kind is inspect.Parameter.KEYWORD_ONLY and params["s3_client"].default is None
    assert inspect.iscoroutinefunction(images.ImageLoader.load)
    assert inspect.iscoroutinefunction(images.ImageLoader.aclose)
