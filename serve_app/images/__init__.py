"""Image ingestion for Pixtral: fetch (data:, https, s3), policy, decode, resize, cache.

Public surface: ``ImageLoader``, ``ImageGrid``, ``PreparedImage``,
``s3_policy_at_start``. Everything
else in this package is private to it.
"""

from serve_app.images.grid import ImageGrid
from serve_app.images.loader import ImageLoader
from serve_app.images.prepared import PreparedImage
from serve_app.images.sources import s3_policy_at_start

__all__ = ["ImageGrid", "ImageLoader", "PreparedImage", "s3_policy_at_start"]
