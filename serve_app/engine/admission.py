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

import hashlib
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from serve_app.config import AdmissionConfig
from serve_app.errors import AdmissionRefusedError


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

    def __init__(self, config: AdmissionConfig, *, rng: random.Random | None = None):
        self._config = config
        self._rng = rng or random.Random()
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

    def admit(self, prompt_tokens: int, max_tokens: int, choices: int = 1) -> Ticket:
        """A ticket for the request, or ``ServerOverloadedError`` while the engine holds too much.

        ``choices`` (n) multiplies decode: every choice is its own sequence; the prompt is
        prefilled once (they share it). ``Ticket.progress`` then takes every choice's tokens."""
        limit = self._config.max_pending_s
        pending = self.pending_s()
        if limit is not None and pending > limit:
            excess = pending - limit
            raise AdmissionRefusedError(
                f"the engine holds {pending:.0f} s of queued work (limit {limit:g} s); retry the request later",
                retry_after_s=self._retry_after_s(excess),
            )
        decode = min(max_tokens, self._config.output_tokens_estimate) * choices
        self._adjust(prompt_tokens, decode)
        self._requests += 1
        return Ticket(self, prompt_tokens, decode)

    def _retry_after_s(self, excess: float) -> float:
        """The excess work in seconds, spread from 0.75x to 1.25x + 1 s and capped: the clients
        refused in one burst do not all come back in the same second."""
        base = min(self._config.max_retry_after_s, max(1.0, excess))
        return min(self._config.max_retry_after_s, self._rng.uniform(max(1.0, 0.75 * base), 1.25 * base + 1.0))

    def _adjust(self, prefill_delta: int, decode_delta: int) -> None:
        self._prefill_tokens += prefill_delta
        self._decode_tokens += decode_delta


class PrefixCacheEstimate:
    """How much of a prompt this replica's engine has most likely cached already.

    vLLM's prefix cache keys each full block of ``block_tokens`` prompt tokens by a hash
    chained over every block before it plus the content hashes of the images whose tokens
    the block holds (the pool's content ids, passed as ``multi_modal_uuids``). This keeps
    the same chain for the prompts this replica admitted, in an LRU of ``capacity_blocks``,
    so a resent conversation is charged only its new tokens. An estimate: the engine may
    have evicted what is remembered here (then the request is under-charged until its first
    token, when the ticket drops its prefill anyway).
    """

    def __init__(
        self, image_tokens: Sequence[int], image_end: int, *, block_tokens: int = 16, capacity_blocks: int = 32768
    ):
        """``image_tokens``: the ids of an image's token run ([IMG], [IMG_BREAK], [IMG_END]);
        ``image_end``: the one that closes a run."""
        self._image_tokens = frozenset(image_tokens)
        self._image_end = image_end
        self._block = block_tokens
        self._capacity = capacity_blocks
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def _chain(self, token_ids: Sequence[int], image_ids: Sequence[str]) -> list[bytes]:
        hashes: list[bytes] = []
        parent = b""
        image = 0
        touched: list[str] = []
        for start in range(0, len(token_ids) - self._block + 1, self._block):
            block = token_ids[start : start + self._block]
            touched.clear()
            for token in block:
                if token in self._image_tokens:
                    if image < len(image_ids) and (not touched or touched[-1] != image_ids[image]):
                        touched.append(image_ids[image])
                    if token == self._image_end:
                        image += 1
            digest = hashlib.blake2b(parent, digest_size=16)
            digest.update(",".join(map(str, block)).encode())
            digest.update("|".join(touched).encode())
            parent = digest.digest()
            hashes.append(parent)
        return hashes

    def lookup(self, token_ids: Sequence[int], image_ids: Sequence[str]) -> "CacheLookup":
        """Leading tokens of this prompt that the engine most likely holds (not remembered yet)."""
        chain = self._chain(token_ids, image_ids)
        hits = 0
        for block_hash in chain:
            if block_hash not in self._blocks:
                break
            hits += 1
        return CacheLookup(cached_tokens=hits * self._block, chain=chain)

    def remember(self, lookup: "CacheLookup") -> None:
        """The prompt was admitted: the engine will hold its blocks."""
        for block_hash in lookup.chain:
            self._blocks[block_hash] = None
            self._blocks.move_to_end(block_hash)
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)


@dataclass(frozen=True)
class CacheLookup:
    cached_tokens: int
    chain: list[bytes]
