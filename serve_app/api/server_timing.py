"""Where a request's time to first token goes, stage by stage, as a W3C ``Server-Timing`` header.

Each process that handles a request times its own stages with a ``StageClock`` (monotonic
clocks of different processes are never subtracted from each other): the ingress times
auth, parsing, the image pool and the wait for the LLM's first chunk; the LLM replica times
its prompt build and the engine's first output and hands them back on the first chunk. The
ingress turns the two into one header (``ingress.server_timing``) and a histogram per stage
(``pixtral_request_stage_seconds``), so a benchmark client can subtract the serving layer's
stages from its own time to first token.
"""

from __future__ import annotations

import time
from typing import Mapping

__all__ = ["StageClock", "format_server_timing"]


class StageClock:
    """Seconds spent in each named stage, measured from one mark to the next."""

    __slots__ = ("_last", "stages")

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """The time since the previous mark (or the start) goes to ``stage``."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._last
        self._last = now


def format_server_timing(stages: Mapping[str, float]) -> str:
    """``{"parse": 0.0012}`` -> ``"parse;dur=1.200"`` (milliseconds, as the header wants)."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages.items())
