"""Image ingestion for Pixtral: fetch (one source per URL scheme), policy, decode, resize, cache.

Public surface: ``ImageLoader``, ``ImageGrid``, ``PreparedImage``; the source seam
(``ImageSource``, ``register_source``, ``unregister_source``, ``sources_at_start``);
``s3_policy_at_start``, the S3 source's start-up policy; and ``decode_and_resize`` for
bench/scenarios/preprocess.py. Everything else in this package is private to it.
"""

from serve_app import _lazy_exports

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "decode": ("decode_and_resize",),
        "grid": ("ImageGrid",),
        "loader": ("ImageLoader",),
        "prepared": ("PreparedImage",),
        "s3_fetch": ("s3_policy_at_start",),
        "sources": ("ImageSource", "register_source", "sources_at_start", "unregister_source"),
    },
)
