"""Per-stage timing of a request (serve_app/api/server_timing.py)."""

from __future__ import annotations

import re
import time

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
