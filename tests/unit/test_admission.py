"""Cost-aware admission (serve_app.engine.admission): the ledger and its 429s, no engine."""

from __future__ import annotations

import collections
import pickle

import pytest

from serve_app.config import AdmissionConfig
from serve_app.engine.admission import WorkLedger
from serve_app.errors import ServerOverloadedError

# 1000 prompt tokens = 1 s of prefill, 100 output tokens = 1 s of decode.
RATES = {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 100.0, "output_tokens_estimate": 200}


def ledger(**overrides) -> WorkLedger:
    return WorkLedger(AdmissionConfig(**{**RATES, "max_pending_s": 10.0, **overrides}))


def test_pending_seconds_add_prefill_and_decode():
    work = ledger()
    work.admit(prompt_tokens=2000, max_tokens=50)  # 2 s + 0.5 s
    work.admit(prompt_tokens=500, max_tokens=10_000)  # 0.5 s + 2 s (capped by the estimate)
    assert work.pending_s() == pytest.approx(5.0)
    assert work.requests == 2


def test_progress_drops_prefill_then_decode_and_release_empties_the_ledger():
    work = ledger()
    ticket = work.admit(prompt_tokens=3000, max_tokens=100)  # 3 s + 1 s
    ticket.progress(completion_tokens=1)  # first token: prefill done
    assert work.pending_s() == pytest.approx(0.99)
    ticket.progress(completion_tokens=60)
    assert work.pending_s() == pytest.approx(0.40)
    ticket.progress(completion_tokens=500)  # more than planned: nothing left, never negative
    assert work.pending_s() == pytest.approx(0.0)
    ticket.release()
    ticket.release()  # twice (finally + cancel) counts once
    assert work.requests == 0 and work.pending_s() == 0


def test_release_before_any_output_returns_all_of_its_work():
    work = ledger()
    kept = work.admit(prompt_tokens=1000, max_tokens=100)
    dropped = work.admit(prompt_tokens=4000, max_tokens=100)
    dropped.release()  # the client went away before the first token
    assert work.pending_s() == pytest.approx(2.0)
    kept.release()
    assert work.pending_s() == 0 and work.requests == 0


def test_refuses_with_429_and_retry_after_of_the_excess_once_over_the_limit():
    work = ledger(max_pending_s=10.0)
    for _ in range(4):
        work.admit(prompt_tokens=1000, max_tokens=200)  # 3 s each -> 12 s held
    with pytest.raises(ServerOverloadedError) as info:
        work.admit(prompt_tokens=10, max_tokens=1)
    error = pickle.loads(pickle.dumps(info.value))  # crosses the LLM -> ingress hop intact
    assert error.status_code == 429 and error.code == "server_overloaded"
    assert 1.5 <= error.retry_after_s <= 3.5  # the 2 s excess, jittered
    assert error.headers()["Retry-After"] in {"2", "3", "4"}
    assert work.requests == 4  # a refusal holds nothing


def test_an_idle_engine_takes_any_request_however_large():
    work = ledger(max_pending_s=1.0)
    work.admit(prompt_tokens=100_000, max_tokens=4096)  # 102 s of work, admitted: nothing was held
    with pytest.raises(ServerOverloadedError) as info:
        work.admit(prompt_tokens=1, max_tokens=1)
    assert 22.5 <= info.value.retry_after_s <= 30.0  # capped at max_retry_after_s, jittered below it


def test_one_bursts_refusals_spread_their_retry_after():
    """Clients refused together must not come back in the same second."""
    work = ledger(max_pending_s=1.0)
    work.admit(prompt_tokens=10_000, max_tokens=4096)
    values = []
    for _ in range(200):
        with pytest.raises(ServerOverloadedError) as info:
            work.admit(prompt_tokens=1, max_tokens=1)
        values.append(info.value.headers()["Retry-After"])
    counts = collections.Counter(values)
    assert len(counts) >= 5, counts
    assert max(counts.values()) < 0.5 * len(values), counts


def test_at_the_limit_is_still_admitted_and_finishing_work_reopens_admission():
    work = ledger(max_pending_s=3.0)
    first = work.admit(prompt_tokens=1000, max_tokens=200)  # exactly 3 s
    second = work.admit(prompt_tokens=1000, max_tokens=200)  # 3 s held = the limit: admitted
    with pytest.raises(ServerOverloadedError):
        work.admit(prompt_tokens=1000, max_tokens=200)
    first.release()
    work.admit(prompt_tokens=1000, max_tokens=200)
    assert work.requests == 2
    second.release()


def test_admission_off_admits_everything():
    work = ledger(max_pending_s=None)
    for _ in range(100):
        work.admit(prompt_tokens=100_000, max_tokens=1000)
    assert work.requests == 100


# Pixtral's image tokens in these prompts: [IMG]=10, [IMG_BREAK]=12, [IMG_END]=13.
IMG, BREAK, END = 10, 12, 13


def image_run(rows: int = 4, cols: int = 7) -> list[int]:
    run = ([IMG] * cols + [BREAK]) * rows
    run[-1] = END
    return run


def prompt(text: list[int], *images_then_text: list[int]) -> list[int]:
    tokens = list(text)
    for part in images_then_text:
        tokens += part
    return tokens


def estimate(**options):
    from serve_app.engine.admission import PrefixCacheEstimate

    return PrefixCacheEstimate((IMG, BREAK, END), END, block_tokens=16, **options)


def test_a_resent_conversation_is_charged_only_its_new_blocks():
    cache = estimate()
    turn1 = prompt(list(range(1000, 1040)), image_run(), list(range(2000, 2030)))  # 102 tokens
    first = cache.lookup(turn1, ["cat"])
    assert first.cached_tokens == 0
    cache.remember(first)
    turn2 = turn1 + list(range(3000, 3050))  # the same opening, then a new turn
    assert cache.lookup(turn2, ["cat"]).cached_tokens == (len(turn1) // 16) * 16


def test_another_image_of_the_same_size_is_not_a_hit_past_the_text_before_it():
    cache = estimate()
    text = list(range(1000, 1040))  # 2 full blocks of text, then the image starts in block 3
    cache.remember(cache.lookup(prompt(text, image_run(), [5] * 20), ["cat"]))
    other = cache.lookup(prompt(text, image_run(), [5] * 20), ["dog"])
    assert other.cached_tokens == 32  # same token ids, other content: only the text before it


def test_a_lookup_alone_remembers_nothing_and_the_lru_forgets_the_oldest():
    cache = estimate(capacity_blocks=4)
    a, b = list(range(100, 164)), list(range(500, 564))  # 4 blocks each
    cache.lookup(a, [])
    assert cache.lookup(a, []).cached_tokens == 0  # a refused request is not cached anywhere
    cache.remember(cache.lookup(a, []))
    assert cache.lookup(a, []).cached_tokens == 64
    cache.remember(cache.lookup(b, []))
    assert cache.lookup(a, []).cached_tokens == 0 and cache.lookup(b, []).cached_tokens == 64


def test_admission_refusal_is_its_own_overload_class():
    from serve_app.errors import AdmissionRefusedError

    work = ledger(max_pending_s=1.0)
    work.admit(prompt_tokens=5000, max_tokens=10)
    with pytest.raises(AdmissionRefusedError) as info:
        work.admit(prompt_tokens=10, max_tokens=10)
    restored = pickle.loads(pickle.dumps(info.value))  # crosses the handle as itself
    assert type(restored) is AdmissionRefusedError and restored.status_code == 429
    assert restored.code == "server_overloaded"


def test_every_choice_is_charged_its_decode():
    work = ledger()
    ticket = work.admit(prompt_tokens=1000, max_tokens=100, choices=3)  # 1 s + 3 x 1 s
    assert work.pending_s() == pytest.approx(4.0)
    ticket.progress(completion_tokens=150)  # tokens of all three choices together
    assert work.pending_s() == pytest.approx(1.5)
    ticket.release()
    assert work.pending_s() == pytest.approx(0.0)
