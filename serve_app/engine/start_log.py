"""The LLM replica's start-up, phase by phase: where a cold start goes before vLLM's own lines.

Each phase is one line on the replica process's own stderr with the seconds since that process
began. Ray streams that stream to ``serve run``'s output (next to the engine core's lines) and keeps
it in the worker's ``worker-*.err`` log. Not Serve's replica logger: a replica's ``sys.stderr`` is
redirected into it, and in throughput mode it buffers records until 1,000 have accumulated, so
start-up lines would surface late or never.
"""

from __future__ import annotations

import functools
import logging
import sys
import time

NAME = "serve_app.start"


@functools.cache  # one process, one start: the replica and its engine's build ask the same
def _process_began() -> float:
    import psutil  # a dependency of vLLM and Ray

    return psutil.Process().create_time()


class _ProcessStderr(logging.StreamHandler):
    pass


class StartLog:
    def __init__(self) -> None:
        self._origin = _process_began()
        self._logger = logging.getLogger(NAME)
        self._logger.disabled = False  # a dictConfig since (disable_existing_loggers) does not silence it
        # Others may attach handlers of their own (pytest does to loggers that do not propagate).
        if not any(isinstance(handler, _ProcessStderr) for handler in self._logger.handlers):
            handler = _ProcessStderr(sys.__stderr__)
            handler.setFormatter(logging.Formatter("%(asctime)s start-up: %(message)s"))
            self._logger.addHandler(handler)
            self._logger.setLevel(logging.INFO)
            self._logger.propagate = False

    def mark(self, phase: str) -> None:
        self._logger.info("%s, %.1f s after the replica's process began", phase, time.time() - self._origin)
