"""Image ingestion for Pixtral: fetch (data:, https, s3), policy, decode, resize, cache.

Public surface: ``ImageLoader``, ``ImageGrid``, ``PreparedImage``. Everything
else in this package is private to it.
"""

from serve_app.images.grid import ImageGrid
from serve_app.images.loader import ImageLoader
from serve_app.images.prepared import PreparedImage

__all__ = ["ImageGrid", "ImageLoader", "PreparedImage"]
