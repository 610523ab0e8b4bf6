"""tools/pip_index.py: which pip flags `make install` picks for which probe outcomes (no network)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import pip_index

REPO = Path(__file__).resolve().parents[2]

CPU_INDEX = ("--extra-index-url", pip_index.TORCH_CPU_INDEX)


class RecordingProbe:
    """Answers from a table keyed by the extra flags; records what was asked."""

    def __init__(self, answers: dict[tuple[str, ...], bool]):
        self.answers = answers
        self.calls: list[tuple[str, str, tuple[str, ...]]] = []

    def __call__(self, name: str, version: str, flags: tuple[str, ...]) -> bool:
        self.calls.append((name, version, flags))
        return self.answers[flags]


def test_own_pip_config_that_finds_the_build_gets_no_extra_flags():
    probe = RecordingProbe({(): True})
    decision = pip_index.choose_flags("", "torch", "2.13.0+cpu", probe)
    assert decision.flags == ()
    assert probe.calls == [("torch", "2.13.0+cpu", ())]
    assert "no extra index" in decision.message


def test_public_index_only_adds_pytorch_cpu_index_and_says_so():
    probe = RecordingProbe({(): False, CPU_INDEX: True})
    decision = pip_index.choose_flags("", "torch", "2.13.0+cpu", probe)
    assert decision.flags == CPU_INDEX
    assert [flags for _, _, flags in probe.calls] == [(), CPU_INDEX]
    assert pip_index.TORCH_CPU_INDEX in decision.message
    assert "\n" not in decision.message


def test_no_index_has_the_build_is_an_error_naming_the_override():
    probe = RecordingProbe({(): False, CPU_INDEX: False})
    with pytest.raises(pip_index.TorchBuildNotFound, match="PIP_EXTRA"):
        pip_index.choose_flags("", "torch", "2.13.0+cpu", probe)


def test_pip_extra_overrides_without_probing():
    probe = RecordingProbe({})
    decision = pip_index.choose_flags(" --find-links /srv/wheels --no-index ", "torch", "2.13.0+cpu", probe)
    assert decision.flags == ("--find-links", "/srv/wheels", "--no-index")
    assert probe.calls == []


def test_the_pin_comes_from_the_cpu_requirements():
    name, version = pip_index.torch_pin()
    assert (name, version) == ("torch", "2.13.0+cpu")
    assert f"{name}=={version}" in (REPO / "requirements" / "cpu.txt").read_text().split()


def test_available_versions_parses_pip_index_output():
    output = (
        "torch (2.15.0)\n"
        "Available versions: 2.15.0, 2.14.1, 2.13.0+cpu, 2.13.0\n"
        "  INSTALLED: 2.13.0+cpu\n"
        "  LATEST:    2.15.0\n"
    )
    assert pip_index.available_versions(output) == ["2.15.0", "2.14.1", "2.13.0+cpu", "2.13.0"]
    assert pip_index.available_versions("ERROR: No matching distribution found for torch\n") == []


def test_pip_finds_reads_a_real_pip_answer_from_a_local_wheel_directory(tmp_path):
    """The real probe against a --find-links directory only: no index is contacted."""
    for version in ("1.0.0", "1.0.0+cpu"):
        (tmp_path / f"tinypkg-{version}-py3-none-any.whl").write_bytes(b"")
    local = ("--no-index", "--find-links", str(tmp_path))
    assert pip_index.pip_finds("tinypkg", "1.0.0+cpu", local)
    assert not pip_index.pip_finds("tinypkg", "2.0.0+cpu", local)


def test_main_prints_flags_on_stdout_and_the_decision_on_stderr():
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "pip_index.py")],
        env={"PIP_EXTRA": "--find-links /srv/wheels", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "--find-links /srv/wheels"
    assert result.stderr.count("\n") == 1 and "PIP_EXTRA" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_install_asks_the_tool_before_installing():
    """The Makefile recipe (printed, not run): the tool's flags go into the pip install line."""
    recipe = subprocess.run(
        ["make", "-n", "-B", "install", "PIP_EXTRA=--find-links /srv/wheels"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    probe = recipe.index("PIP_EXTRA='--find-links /srv/wheels' .venv/bin/python tools/pip_index.py")
    install = recipe.index("pip install -q $flags -r requirements/cpu.txt")
    assert probe < install
    assert 'flags="$(' in recipe[:install] and ")\" &&" in recipe[probe:install]
