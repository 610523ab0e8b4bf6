"""StallWatch: a stall is work pending with no progress for stall_s; idle time is not one."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.engine.stall import StallWatch
from serve_app.errors import EngineOverloadedError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pending_work_without_progress_for_stall_s_is_a_stall_and_stays_one():
    clock = Clock()
    watch = StallWatch(10, clock)
    clock.now += 9.9
    assert watch.check(pending_requests=2, engine_step_at=None) is None
    clock.now += 0.2
    reason = watch.check(pending_requests=2, engine_step_at=None)
    assert reason is not None and "2 requests pending" in reason
    assert watch.check(pending_requests=0, engine_step_at=clock.now) == reason  # stays stalled


def test_idle_time_chunks_and_engine_steps_all_restart_the_clock():
    clock = Clock()
    watch = StallWatch(10, clock)
    clock.now += 3600
    assert watch.check(pending_requests=0, engine_step_at=None) is None  # idle for an hour
    clock.now += 9
    assert watch.check(pending_requests=1, engine_step_at=None) is None
    watch.progressed()  # a chunk arrived
    clock.now += 9
    assert watch.check(pending_requests=1, engine_step_at=clock.now - 1) is None  # an engine step (prefill)
    clock.now += 9.5
    assert watch.check(pending_requests=1, engine_step_at=clock.now - 9.5) is None
    clock.now += 1
    assert watch.check(pending_requests=1, engine_step_at=clock.now - 10.5) is not None


def test_off_when_stall_s_is_none():
    clock = Clock()
    watch = StallWatch(None, clock)
    clock.now += 10**6
    assert watch.check(pending_requests=5, engine_step_at=None) is None


def test_a_stall_ends_streams_waiting_on_the_engine_with_503_and_closes_them():
    async def scenario():
        watch = StallWatch(10)
        closed = []
        never = asyncio.Event()

        async def stuck_stream():
            try:
                yield "first"
                await never.wait()  # the engine never answers again
                yield "never"
            finally:
                closed.append(True)

        guarded = watch.guard(stuck_stream())
        assert await guarded.__anext__() == "first"
        waiting = asyncio.ensure_future(guarded.__anext__())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        watch.halt("no progress (test)")
        with pytest.raises(EngineOverloadedError) as ended:
            await asyncio.wait_for(waiting, 2)
        assert ended.value.status_code == 503 and ended.value.headers()["Retry-After"] == "5"
        assert closed == [True]
        # A stream that starts after the stall ends at once.
        with pytest.raises(EngineOverloadedError):
            await asyncio.wait_for(watch.guard(stuck_stream()).__anext__(), 2)

    asyncio.run(scenario())


def test_guard_passes_every_chunk_and_ends_with_the_stream():
    async def scenario():
        async def three():
            for i in range(3):
                yield i

        return [c async for c in StallWatch(10).guard(three())]

    assert asyncio.run(scenario()) == [0, 1, 2]
