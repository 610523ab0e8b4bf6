"""Image sources: one class per URL scheme family, registered by scheme.

A source owns everything about its URLs: its config section (a ``FetchLimits``
subclass in serve_app/config.py), its policy (the checks that refuse a URL) and its
fetcher. The loader knows none of them by name: it finds the source of a URL's
scheme here, opens it on first use with the loader's ``FetchConfig`` and awaits
``fetch``. The shipped sources (``data:``, ``https``/``http``, ``s3``) are the
modules in ``_BUILT_IN``; they register themselves when imported. Adding one (a
``gs://`` source, say) is a module with a ``@register_source`` class, its config
section added to ``FetchConfig``'s bases, and its module named in ``_BUILT_IN``.
"""

from __future__ import annotations

import contextvars
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from serve_app.config import FetchConfig, FetchLimits
from serve_app.errors import UnsupportedImageSourceError

_BUILT_IN = (
    "serve_app.images.http_fetch",
    "serve_app.images.s3_fetch",
    "serve_app.images.data_url",
)
"""Modules of the shipped sources, in the order the unsupported-URL message names them."""

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("pixtral_image_request_id", default=None)
"""The request an image load belongs to, for the log lines of a source's refusals (set by the loader)."""


def short(url: str, limit: int = 80) -> str:
    """A URL cut for error messages (data: URLs can be megabytes)."""
    return url if len(url) <= limit else url[: limit - 3] + "..."


class ImageSource(ABC):
    """The bytes behind the URLs of some schemes, with that source's policy applied.

    ``config_section`` is the part of ``FetchConfig`` the source reads; a loader whose
    config lacks the section does not offer the source. ``clients`` names the keyword
    arguments of ``ImageLoader`` that the source's constructor takes, under the same
    names (a shared client, or a test double). Every refusal and failure is a typed
    ``ImageError``.
    """

    schemes: ClassVar[tuple[str, ...]]
    """Lower-case URL schemes this source serves."""
    hint: ClassVar[str]
    """How a client writes such a URL, for the unsupported-URL message (e.g. ``s3://``)."""
    config_section: ClassVar[type[FetchLimits]]
    clients: ClassVar[tuple[str, ...]] = ()
    remote: ClassVar[bool] = True
    """Whether the bytes come from elsewhere: the loader then shares concurrent fetches of one URL."""

    @classmethod
    def at_start(cls, config: FetchConfig) -> FetchConfig:
        """The config a pool replica runs with, after this source's start-up policy (environment, warnings)."""
        return config

    @abstractmethod
    async def fetch(self, url: str) -> bytes:
        """The image bytes of ``url``, or a typed ImageError (checks that need no network come first)."""

    async def aclose(self) -> None:
        """Release connections and threads (a source without any has nothing to do)."""


S = TypeVar("S", bound=type[ImageSource])

_registry: dict[str, type[ImageSource]] = {}
_built_in_loaded = False


def _load_built_in() -> None:
    global _built_in_loaded
    if not _built_in_loaded:
        _built_in_loaded = True
        for module in _BUILT_IN:
            importlib.import_module(module)


def register_source(source: S) -> S:
    """Serve ``source.schemes`` with ``source`` (a class decorator); a scheme already taken is an error."""
    _load_built_in()
    taken = [s for s in source.schemes if _registry.get(s, source) is not source]
    if taken:
        raise ValueError(f"image URL scheme(s) {taken} already served by {_registry[taken[0]].__name__}")
    for scheme in source.schemes:
        _registry[scheme] = source
    return source


def unregister_source(source: type[ImageSource]) -> None:
    """Stop serving ``source``'s schemes (tests, and a plugin being replaced)."""
    for scheme in source.schemes:
        if _registry.get(scheme) is source:
            del _registry[scheme]


def registered_sources() -> Mapping[str, type[ImageSource]]:
    """Scheme -> source class: the shipped sources first, in ``_BUILT_IN``'s order whatever order
    their modules were imported in, then the others in registration order."""
    _load_built_in()
    rank = {module: i for i, module in enumerate(_BUILT_IN)}
    return dict(sorted(_registry.items(), key=lambda item: rank.get(item[1].__module__, len(rank))))


def sources_for(config: FetchConfig) -> dict[str, type[ImageSource]]:
    """The registered sources whose config section ``config`` has."""
    return {scheme: source for scheme, source in registered_sources().items() if isinstance(config, source.config_section)}


def sources_at_start(config: FetchConfig) -> FetchConfig:
    """The fetch config a pool replica runs with: every offered source's start-up policy applied."""
    for source in dict.fromkeys(sources_for(config).values()):
        config = source.at_start(config)
    return config


def scheme_of(url: str, offered: Mapping[str, type[ImageSource]]) -> str:
    """Lower-cased scheme of ``url`` when a source in ``offered`` serves it, else UnsupportedImageSourceError."""
    head, sep, _ = url.partition(":")
    scheme = head.lower() if sep else ""
    if scheme in offered:
        return scheme
    hints = list(dict.fromkeys(source.hint for source in offered.values()))
    listed = ", ".join(hints[:-1]) + " or " + hints[-1] if len(hints) > 1 else "".join(hints)
    raise UnsupportedImageSourceError(f"unsupported image URL {short(url, 40)!r}: use {listed}")


def open_source(source: type[ImageSource], config: FetchConfig, clients: Mapping[str, Any]) -> ImageSource:
    """An instance of ``source`` for ``config``, given the loader's clients that it takes."""
    return source(config, **{name: clients[name] for name in source.clients if name in clients})  # type: ignore[call-arg]
