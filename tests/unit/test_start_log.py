"""StartLog: one line per start-up phase on the process's own stderr (not the redirected
``sys.stderr``, which Serve buffers), with the seconds since the process began."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from serve_app.engine import start_log
from serve_app.engine.start_log import StartLog


@pytest.fixture
def own_stderr(monkeypatch):
    stream, redirected = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stream)
    monkeypatch.setattr(sys, "stderr", redirected)
    log = logging.getLogger(start_log.NAME)
    saved = log.handlers[:], log.propagate, log.level, log.disabled
    log.handlers.clear()
    log.disabled = True  # as logging.config.dictConfig leaves the loggers that exist before it
    yield stream, redirected
    log.handlers[:], log.propagate, log.level, log.disabled = saved


def test_each_phase_is_one_line_with_the_seconds_since_the_process_began(own_stderr, monkeypatch):
    stream, redirected = own_stderr
    monkeypatch.setattr(start_log, "_process_began", lambda: 1000.0)
    monkeypatch.setattr(start_log.time, "time", lambda: 1012.34)
    StartLog().mark("tokenizer built")
    StartLog().mark("engine ready")  # a second instance adds no second handler
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\S+ \S+ start-up: tokenizer built, 12\.3 s after the replica's process began", lines[0])
    assert lines[1].endswith("start-up: engine ready, 12.3 s after the replica's process began")
    assert redirected.getvalue() == ""
