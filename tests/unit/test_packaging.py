"""The wheel declares what serve_app imports; tools and test-only packages stay out of it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]).lower()


def imported_top_level_modules() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "serve_app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "serve_app"}


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    optional = {_name(r) for extra in project.get("optional-dependencies", {}).values() for r in extra}
    return required, optional


def test_every_third_party_import_is_declared():
    required, optional = declared()
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(imported_top_level_modules()):
        names = {_name(d) for d in distributions.get(module, [module])}
        if not names & (required | optional):
            missing.append(f"{module} (from {sorted(names)})")
    assert missing == [], f"imported by serve_app but not in pyproject dependencies: {missing}"


def test_no_tooling_dependencies_in_the_package():
    modules = imported_top_level_modules()
    assert not modules & {"torch", "safetensors", "yaml", "pytest"}, "tooling imports belong in tools/ or tests/"
    required, _ = declared()
    assert not required & {"torch", "safetensors", "pyyaml", "pytest"}


def test_python_floor_matches_what_the_code_uses():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # asyncio.timeout, tomllib, ExceptionGroup
