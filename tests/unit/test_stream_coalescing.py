"""engine.stream.coalesce: fewer messages, the same text, token ids and counts."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.engine.protocol import GenerationChunk
from serve_app.engine.stream import coalesce


def chunk(i: int, n: int, finish: bool = False) -> GenerationChunk:
    return GenerationChunk(
        text=f"t{i} ",
        token_ids=[i],
        prompt_tokens=100,
        completion_tokens=i + 1,
        finish_reason="length" if finish else None,
        prompt_token_ids=[1, 2, 3] if i == 0 else None,
        cached_tokens=64,
    )


async def source(n: int, pause_s: float = 0.0, events: list | None = None):
    try:
        for i in range(n):
            yield chunk(i, n, finish=i == n - 1)
            await asyncio.sleep(pause_s)
    finally:
        if events is not None:
            events.append("source closed")


def collect(agen) -> list[GenerationChunk]:
    async def run():
        return [c async for c in agen]

    return asyncio.run(run())


def test_fast_deltas_are_merged_and_nothing_is_lost():
    out = collect(coalesce(source(200), interval_s=5.0))
    # The first chunk leaves at once; everything after it arrives within the interval.
    assert len(out) == 2
    assert out[0].text == "t0 " and out[0].prompt_token_ids == [1, 2, 3]
    assert "".join(c.text for c in out) == "".join(f"t{i} " for i in range(200))
    assert [t for c in out for t in c.token_ids] == list(range(200))
    assert out[-1].completion_tokens == 200 and out[-1].finish_reason == "length"
    assert out[-1].prompt_tokens == 100 and out[-1].cached_tokens == 64


def test_slow_deltas_pass_one_by_one():
    out = collect(coalesce(source(4, pause_s=0.1), interval_s=0.01))
    assert [c.text for c in out] == ["t0 ", "t1 ", "t2 ", "t3 "]


def test_a_held_delta_leaves_when_its_interval_ends_not_with_the_next_one():
    async def bursty():
        yield chunk(0, 3)
        yield chunk(1, 3)  # held: arrives right after the first was sent
        await asyncio.sleep(0.6)
        yield chunk(2, 3, finish=True)

    async def run():
        stamps = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        async for c in coalesce(bursty(), interval_s=0.1):
            stamps.append((c.text, loop.time() - start))
        return stamps

    stamps = asyncio.run(run())
    assert [text for text, _ in stamps] == ["t0 ", "t1 ", "t2 "]
    assert stamps[1][1] < 0.5  # sent by the timer, not held until the next delta at 0.6 s


def test_zero_interval_is_unchanged():
    out = collect(coalesce(source(5), interval_s=0))
    assert [c.text for c in out] == [f"t{i} " for i in range(5)]


def test_an_error_comes_after_the_text_that_preceded_it():
    async def failing():
        yield chunk(0, 9)
        yield chunk(1, 9)
        raise RuntimeError("engine died")

    async def run():
        seen = []
        with pytest.raises(RuntimeError, match="engine died"):
            async for c in coalesce(failing(), interval_s=5.0):
                seen.append(c.text)
        return seen

    assert asyncio.run(run()) == ["t0 ", "t1 "]


def test_closing_early_closes_the_engine_stream():
    events: list[str] = []

    async def run():
        stream = coalesce(source(1000, pause_s=0.01, events=events), interval_s=0.05)
        first = await anext(stream)
        await stream.aclose()
        return first

    assert asyncio.run(run()).text == "t0 "
    assert events == ["source closed"]


def test_cancelling_the_consumer_closes_the_engine_stream():
    events: list[str] = []

    async def consume():
        async for _ in coalesce(source(1000, pause_s=0.01, events=events), interval_s=0.05):
            pass

    async def run():
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert events == ["source closed"]
