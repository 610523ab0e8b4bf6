"""ReplicaStatus: /ready, the refusal at the door and the withdrawal of waiting requests, from
what the request routers report (``ReplicaSets``, fed here as Serve's pushes would feed it)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from serve_app.deployments import IMAGE_POOL as POOL, LLM as ENGINE
from serve_app.deployments.replica_status import ReplicaStatus
from serve_app.errors import EngineOverloadedError
from serve_app.routing.replica_set import ReplicaSets


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status_over(sets: ReplicaSets, **options) -> ReplicaStatus:
    return ReplicaStatus("pixtral", replica_sets=sets, rng=random.Random(0), **options)


class WaitingStream:
    """A handle's stream whose first chunk comes when ``release`` is set."""

    def __init__(self):
        self.release = asyncio.Event()
        self.cancelled = False

    async def __anext__(self):
        await self.release.wait()
        return "first chunk"

    def cancel(self):
        self.cancelled = True


def test_ready_needs_a_routable_engine_and_pool_replica_and_waits_for_the_routers():
    sets = ReplicaSets()
    status = status_over(sets)
    assert status.readiness()[0] == 503  # no router has reported: not ready, and nothing refused
    assert "from Serve yet" in status.readiness()[1]["reason"]
    status.refuse_while_no_engine()
    sets.publish("pixtral", ENGINE, frozenset({"e1"}))
    sets.publish("pixtral", POOL, frozenset())
    assert status.readiness() == (503, {"status": "not_ready", "reason": "no running ImagePool replica"})
    sets.publish("pixtral", POOL, frozenset({"p1", "p2"}))
    assert status.readiness() == (200, {"status": "ready"})
    sets.publish("pixtral", ENGINE, frozenset())
    assert status.readiness()[1]["reason"] == "no running PixtralServer replica"
    assert status_over(ReplicaSets()).readiness()[0] == 503  # another app's replicas are not ours


def test_no_engine_replica_is_a_503_whose_retry_after_is_what_the_last_outage_took():
    clock = Clock()
    sets = ReplicaSets(clock=clock)
    status = status_over(sets, expected_start_s=90)
    sets.publish("pixtral", ENGINE, frozenset())
    with pytest.raises(EngineOverloadedError) as first:
        status.refuse_while_no_engine()
    assert (first.value.status_code, first.value.code) == (503, "engine_unavailable")
    assert 72 <= first.value.retry_after_s <= 108  # no outage seen yet: the expected start, +-20%
    clock.now += 40
    sets.publish("pixtral", ENGINE, frozenset({"e1"}))  # that outage lasted 40 s
    status.refuse_while_no_engine()
    sets.publish("pixtral", ENGINE, frozenset())
    clock.now += 10
    with pytest.raises(EngineOverloadedError) as second:
        status.refuse_while_no_engine()
    assert 24 <= second.value.retry_after_s <= 36  # 40 s measured, 10 s gone
    clock.now += 100
    with pytest.raises(EngineOverloadedError) as late:
        status.refuse_while_no_engine()
    assert 0.8 <= late.value.retry_after_s <= 1.2  # overdue: a second, not zero


def test_refused_clients_get_different_retry_afters():
    sets = ReplicaSets()
    status = ReplicaStatus("pixtral", replica_sets=sets, expected_start_s=60)
    sets.publish("pixtral", ENGINE, frozenset())
    values = set()
    for _ in range(20):
        with pytest.raises(EngineOverloadedError) as refused:
            status.refuse_while_no_engine()
        values.add(refused.value.headers()["Retry-After"])
    assert len(values) > 3


def test_a_running_engine_or_scaling_from_zero_lets_requests_through():
    sets = ReplicaSets()
    sets.publish("pixtral", ENGINE, frozenset({"e1"}))
    status_over(sets).refuse_while_no_engine()
    sets.publish("pixtral", ENGINE, frozenset())
    status_over(sets, gate_engine=False).refuse_while_no_engine()
    with pytest.raises(EngineOverloadedError):
        status_over(sets).refuse_while_no_engine()


def test_a_request_not_yet_routed_when_the_last_engine_goes_is_withdrawn_at_once():
    async def main():
        sets = ReplicaSets()
        sets.publish("pixtral", ENGINE, frozenset({"e1"}))
        status = status_over(sets)
        stream = WaitingStream()
        waiting = asyncio.ensure_future(status.first_chunk(stream, sets.track("req")))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # an engine is there: it waits
        gone_at = time.monotonic()
        # Serve's push arrives on the router's own thread.
        await asyncio.to_thread(sets.publish, "pixtral", ENGINE, frozenset())
        with pytest.raises(EngineOverloadedError) as info:
            await waiting
        return stream, info.value, time.monotonic() - gone_at

    stream, error, elapsed = asyncio.run(main())
    assert error.code == "engine_unavailable" and error.status_code == 503
    assert stream.cancelled
    assert elapsed < 0.5


def test_a_request_routed_to_a_draining_replica_is_never_withdrawn():
    async def main():
        sets = ReplicaSets()
        sets.publish("pixtral", ENGINE, frozenset({"old"}))
        status = status_over(sets)
        stream = WaitingStream()
        placement = sets.track("req")
        waiting = asyncio.ensure_future(status.first_chunk(stream, placement))
        await asyncio.to_thread(sets.routed, "req", "old")
        await asyncio.to_thread(sets.publish, "pixtral", ENGINE, frozenset())  # "old" is draining
        await asyncio.sleep(0.3)
        assert not waiting.done()
        stream.release.set()  # the draining replica answers
        return await waiting, stream

    first, stream = asyncio.run(main())
    assert first == "first chunk" and not stream.cancelled


def test_engines_back_after_an_outage_serve_waiting_requests():
    async def main():
        sets = ReplicaSets()
        sets.publish("pixtral", ENGINE, frozenset())
        sets.publish("pixtral", ENGINE, frozenset({"new"}))  # the outage is over
        status = status_over(sets)
        stream = WaitingStream()
        asyncio.get_running_loop().call_later(0.2, stream.release.set)
        return await status.first_chunk(stream, sets.track("req")), stream

    first, stream = asyncio.run(main())
    assert first == "first chunk" and not stream.cancelled


def test_a_client_that_goes_away_cancels_its_stream():
    async def main():
        sets = ReplicaSets()
        sets.publish("pixtral", ENGINE, frozenset({"e1"}))
        stream = WaitingStream()
        waiting = asyncio.ensure_future(status_over(sets).first_chunk(stream, sets.track("req")))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return stream

    assert asyncio.run(main()).cancelled
