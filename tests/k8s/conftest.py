"""Fixtures of tests/k8s; the checks themselves live in manifest_checks.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # manifest_checks, whatever the import mode

from manifest_checks import OVERLAYS  # noqa: E402


@pytest.fixture(params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param
