"""Image ingestion for Pixtral: fetch (data:, https, s3), policy, decode, resize, cache.

Public surface: ``ImageLoader``, ``ImageGrid``, ``PreparedImage``, ``s3_policy_at_start``, and
``decode_and_resize`` for bench/preprocess.py. Everything else in this package is private to it.
"""

from serve_app import _lazy_exports

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "decode": ("decode_and_resize",),
        "grid": ("ImageGrid",),
        "loader": ("ImageLoader",),
        "prepared": ("PreparedImage",),
        "sources": ("s3_policy_at_start",),
    },
)
