"""Cost-aware admission: refuse what the engine cannot start soon, before it queues there.

After the image pool a request's prompt tokens are known exactly (the images are
already on Pixtral's grid), so its cost in engine seconds can be estimated before
the engine sees it. ``WorkLedger`` keeps the work an LLM replica's engine holds —
prompt tokens not yet prefilled, output tokens not yet decoded — and refuses a new
request with ``ServerOverloadedError`` (429 + Retry-After) while that work is above
``max_pending_s``. The check is on the work already held, so an idle engine takes
any request, however large, and a refused client retries once the excess is done.

Pure bookkeeping, no engine and no Ray: the replica calls ``admit`` after building
the prompt, ``Ticket.progress`` per streamed chunk and ``Ticket.release`` at the end
(finished, failed or cancelled alike).
"""

from __future__ import annotations

from serve_app.config import AdmissionConfig
from serve_app.errors import ServerOverloadedError


class Ticket:
    """One admitted request's share of the ledger."""

    def __init__(self, ledger: "WorkLedger", prefill_tokens: int, decode_tokens: int):
        self._ledger = ledger
        self.prefill_tokens = prefill_tokens
        self.decode_tokens = decode_tokens
        self._planned_decode = decode_tokens
        self.released = False

    def progress(self, completion_tokens: int) -> None:
        """The engine has answered ``completion_tokens`` tokens: prefill is done, decode shrinks."""
        if self.released:
            return
        remaining = max(0, self._planned_decode - completion_tokens)
        self._ledger._adjust(-self.prefill_tokens, remaining - self.decode_tokens)
        self.prefill_tokens = 0
        self.decode_tokens = remaining

    def release(self) -> None:
        if self.released:
            return
        self._ledger._adjust(-self.prefill_tokens, -self.decode_tokens)
        self._ledger._requests -= 1
        self.prefill_tokens = self.decode_tokens = 0
        self.released = True


class WorkLedger:
    """The estimated seconds of work one engine holds, and the admission decision."""

    def __init__(self, config: AdmissionConfig):
        self._config = config
        self._prefill_tokens = 0
        self._decode_tokens = 0
        self._requests = 0

    @property
    def requests(self) -> int:
        """Requests admitted and not yet released."""
        return self._requests

    def pending_s(self) -> float:
        """Seconds of prefill + decode the held requests still need, at the configured rates."""
        return (
            self._prefill_tokens / self._config.prefill_tokens_per_s
            + self._decode_tokens / self._config.decode_tokens_per_s
        )

    def cost_s(self, prompt_tokens: int, max_tokens: int) -> float:
        """Estimated seconds of engine work of one request that has not started."""
        decode = min(max_tokens, self._config.output_tokens_estimate)
        return prompt_tokens / self._config.prefill_tokens_per_s + decode / self._config.decode_tokens_per_s

    def admit(self, prompt_tokens: int, max_tokens: int, choices: int = 1) -> Ticket:
        """A ticket for the request, or ``ServerOverloadedError`` while the engine holds too much.

        ``choices`` (n) multiplies decode: every choice is its own sequence; the prompt is
        prefilled once (they share it). ``Ticket.progress`` then takes every choice's tokens."""
        limit = self._config.max_pending_s
        pending = self.pending_s()
        if limit is not None and pending > limit:
            excess = pending - limit
            raise ServerOverloadedError(
                f"the engine holds {pending:.0f} s of queued work (limit {limit:g} s); retry the request later",
                retry_after_s=min(self._config.max_retry_after_s, max(1.0, excess)),
            )
        decode = min(max_tokens, self._config.output_tokens_estimate) * choices
        self._adjust(prompt_tokens, decode)
        self._requests += 1
        return Ticket(self, prompt_tokens, decode)

    def _adjust(self, prefill_delta: int, decode_delta: int) -> None:
        self._prefill_tokens += prefill_delta
        self._decode_tokens += decode_delta
