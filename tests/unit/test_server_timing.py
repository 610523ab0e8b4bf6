"""Per-stage timing of a request (serve_app/api/server_timing.py)."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from serve_app.api.server_timing import StageClock, format_server_timing

# RFC 8941-ish form the Server-Timing spec uses: name;dur=<number>, comma-separated.
ENTRY = re.compile(r"^[a-z]+;dur=\d+\.\d{3}$")


def test_each_mark_gets_the_time_since_the_previous_one():
    clock = StageClock()
    time.sleep(0.02)
    clock.mark("parse")
    clock.mark("images")
    time.sleep(0.01)
    clock.mark("parse")  # a stage marked again adds up
    assert list(clock.stages) == ["parse", "images"]
    assert 0.03 <= clock.stages["parse"] < 0.5
    assert 0 <= clock.stages["images"] < 0.02


def test_header_is_milliseconds_in_stage_order():
    header = format_server_timing({"auth": 0.0000123, "parse": 0.0012, "total": 1.5})
    entries = header.split(", ")
    assert all(ENTRY.match(entry) for entry in entries), header
    assert entries == ["auth;dur=0.012", "parse;dur=1.200", "total;dur=1500.000"]


def test_the_engine_stage_splits_at_the_engine_cores_own_timestamps():
    from serve_app.engine.vllm_engine import engine_stages

    stats = SimpleNamespace(queued_ts=10.004, scheduled_ts=10.005, first_token_ts=10.020)
    stages = engine_stages(called=10.000, rendered=10.001, stats=stats, first_output=10.022)
    assert list(stages) == ["render", "to_core", "queue", "prefill", "from_core"]
    want = {"render": 0.001, "to_core": 0.003, "queue": 0.001, "prefill": 0.015, "from_core": 0.002}
    assert stages == pytest.approx(want, abs=1e-9)
    assert sum(stages.values()) == pytest.approx(0.022)


@pytest.mark.parametrize("stats", [None, SimpleNamespace(queued_ts=0.0, scheduled_ts=0.0, first_token_ts=0.0),
                                   SimpleNamespace(queued_ts=10.5, scheduled_ts=10.4, first_token_ts=10.6)],
                         ids=["stats off", "not stamped", "out of order"])
def test_without_usable_engine_timestamps_the_engine_stage_is_render_and_core(stats):
    from serve_app.engine.vllm_engine import engine_stages

    stages = engine_stages(called=10.0, rendered=10.25, stats=stats, first_output=11.0)
    assert stages == {"render": 0.25, "core": 0.75}
