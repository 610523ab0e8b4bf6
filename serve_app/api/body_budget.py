"""The request-body bytes one ingress replica holds at once, bounded.

Serve's queues bound how many requests an ingress replica holds, not how big they are: 64
bodies of 16 MiB are a gigabyte of raw bytes before their copies and parsed strings. A
``BodyBudget`` refuses a new body with 429 + Retry-After before any of it is read once the
bodies held would pass ``ingress.max_inflight_body_bytes``: a body that says its length
(Content-Length) reserves it up front; a chunked body reserves as it arrives and is refused
at the piece that would pass the budget. A body is held until its request's handler returns
(its images are prepared and the first chunk is in).
"""

from __future__ import annotations

import random

from serve_app.errors import ServerOverloadedError


class BodyBudget:
    def __init__(self, limit_bytes: int, *, retry_after_s: float = 1.0, rng: random.Random | None = None):
        self.limit_bytes = limit_bytes
        self._retry_after_s = retry_after_s
        self._rng = rng or random.Random()
        self.held_bytes = 0

    def hold(self) -> "BodyHold":
        """A hold of zero bytes, to grow as the body's size becomes known; release it at the end."""
        return BodyHold(self)

    def _take(self, nbytes: int) -> None:
        if nbytes > 0 and self.held_bytes + nbytes > self.limit_bytes:
            raise ServerOverloadedError(
                "the server holds as many request bodies as it may; retry the request later",
                # 1x-3x the configured value: refused clients do not come back together
                retry_after_s=self._retry_after_s * self._rng.uniform(1.0, 3.0),
            )
        self.held_bytes += nbytes


class BodyHold:
    """One request's share of the budget."""

    def __init__(self, budget: BodyBudget):
        self._budget = budget
        self.bytes = 0

    def grow_to(self, nbytes: int) -> None:
        """Hold ``nbytes`` in all (no-op when already held); 429 when the budget has no room."""
        if nbytes > self.bytes:
            self._budget._take(nbytes - self.bytes)
            self.bytes = nbytes

    def release(self) -> None:
        self._budget.held_bytes -= self.bytes
        self.bytes = 0
