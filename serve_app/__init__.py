"""pixtral-serve: Mistral's Pixtral models behind an OpenAI-compatible API on Ray Serve + vLLM.

Each package names its public surface in ``__all__`` (pinned by tests/unit/test_public_names.py):
what the other packages may import from it. The modules app (the Serve ``import_path``),
config, errors and autoscaling are used as modules; nothing is re-exported here.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__: list[str] = []


def _lazy_exports(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """``(__all__, __getattr__)`` of a package that re-exports its modules' public names on first
    use (PEP 562), so that importing one module of a package does not import the others (the
    engine's vLLM, the deployments' Ray Serve)."""
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = owner.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return sorted(owner), __getattr__
