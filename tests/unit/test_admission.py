"""Cost-aware admission (serve_app.engine.admission): the ledger and its 429s, no engine."""

from __future__ import annotations

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
    assert work.cost_s(500, 10_000) == pytest.approx(2.5)


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
    assert error.retry_after_s == pytest.approx(2.0)
    assert error.headers() == {"Retry-After": "2"}
    assert work.requests == 4  # a refusal holds nothing


def test_an_idle_engine_takes_any_request_however_large():
    work = ledger(max_pending_s=1.0)
    work.admit(prompt_tokens=100_000, max_tokens=4096)  # 102 s of work, admitted: nothing was held
    with pytest.raises(ServerOverloadedError) as info:
        work.admit(prompt_tokens=1, max_tokens=1)
    assert info.value.retry_after_s == 30.0  # capped at max_retry_after_s


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


def test_every_choice_is_charged_its_decode():
    work = ledger()
    ticket = work.admit(prompt_tokens=1000, max_tokens=100, choices=3)  # 1 s + 3 x 1 s
    assert work.pending_s() == pytest.approx(4.0)
    ticket.progress(completion_tokens=150)  # tokens of all three choices together
    assert work.pending_s() == pytest.approx(1.5)
    ticket.release()
    assert work.pending_s() == pytest.approx(0.0)
