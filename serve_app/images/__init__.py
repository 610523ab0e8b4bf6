"""Image ingestion for Pixtral: fetch (one source per URL scheme), policy, decode, resize, cache.

Public surface: ``ImageLoader``, ``ImageGrid``, ``PreparedImage``; the source seam
(``ImageSource``, ``register_source``, ``unregister_source``, ``sources_at_start``);
and ``s3_policy_at_start``, the S3 source's start-up policy. Everything else in this
package is private to it.
"""

from serve_app.images.grid import ImageGrid
from serve_app.images.loader import ImageLoader
from serve_app.images.prepared import PreparedImage
from serve_app.images.s3_fetch import s3_policy_at_start
from serve_app.images.sources import ImageSource, register_source, sources_at_start, unregister_source

__all__ = [
    "ImageGrid",
    "ImageLoader",
    "ImageSource",
    "PreparedImage",
    "register_source",
    "s3_policy_at_start",
    "sources_at_start",
    "unregister_source",
]
