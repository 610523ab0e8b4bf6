"""The LLM replica's guards with the real deployment code and a stand-in engine (no Ray cluster):
admission 429s, the ledger freed by a client that goes away, and a dead engine that fails the
health check for good and ends the replica.

The engine is a stand-in because what is tested is the replica around it; the real engine's
death (a killed engine core) is in tests/e2e/test_overload_and_faults.py.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.api.models import RequestSettings
from serve_app.config import AppConfig
from serve_app.engine.protocol import GenerationChunk, SamplingSettings
from serve_app.errors import EngineOverloadedError, ServerOverloadedError

PACKAGED_TOKENIZER = "mistral_common:tekken_240911.json"
MESSAGES = [{"role": "user", "content": "hello"}]


def limit(max_tokens: int) -> RequestSettings:
    return RequestSettings(SamplingSettings(max_tokens=max_tokens))


class SteppedEngine:
    """Yields one token each time the test releases it; dies when told to."""

    def __init__(self, config) -> None:
        self.steps: asyncio.Queue[None] = asyncio.Queue()
        self.dead = False
        self.running = 0

    async def start(self, timeout_s: float) -> None:
        return None

    async def generate(self, prompt, sampling, request_id):
        self.running += 1
        try:
            for i in range(sampling.max_tokens):
                await self.steps.get()
                yield GenerationChunk(
                    text="x", token_ids=[1], prompt_tokens=len(prompt.token_ids), completion_tokens=i + 1,
                    finish_reason="length" if i == sampling.max_tokens - 1 else None,
                )
        finally:
            self.running -= 1

    async def check_health(self) -> None:
        if self.dead:
            raise RuntimeError("EngineDeadError (stand-in)")

    def unfinished_requests(self) -> int:
        return self.running

    def last_step_at(self) -> float | None:
        return None

    def shutdown(self) -> None:
        return None


def config(**admission) -> AppConfig:
    return AppConfig.model_validate(
        {
            "served_model_name": "m",
            "engine": {"model": "unused", "tokenizer": PACKAGED_TOKENIZER},
            "llm": {
                "stream_interval_s": 0,
                "engine_watchdog_period_s": 0.05,
                "admission": {"prefill_tokens_per_s": 1e9, "decode_tokens_per_s": 10, **admission},
            },
        }
    )


async def replica(cfg: AppConfig):
    from serve_app.deployments.pixtral_server import PixtralServer

    engines = []

    def factory(c):
        engines.append(SteppedEngine(c))
        return engines[0]

    server = PixtralServer.func_or_class.__new__(PixtralServer.func_or_class)
    await server.__init__(cfg, factory)
    return server, engines[0]


def test_admission_refuses_past_the_limit_and_a_closed_stream_frees_its_work():
    async def scenario():
        server, engine = await replica(config(max_pending_s=5))
        long = server.generate(MESSAGES, [], limit(100), "a")  # 100 tokens at 10/s: 10 s held
        engine.steps.put_nowait(None)
        await long.__anext__()
        assert server.record_autoscaling_stats()["pending_s"] == pytest.approx(9.9)
        with pytest.raises(ServerOverloadedError) as refused:
            await server.generate(MESSAGES, [], limit(1), "b").__anext__()
        assert 0.75 * 4.9 <= refused.value.retry_after_s <= 1.25 * 4.9 + 1  # the 4.9 s excess, jittered
        await long.aclose()  # the client went away
        load = server.record_autoscaling_stats()
        assert load == {"admitted_requests": 0, "pending_s": 0, "engine_requests": 0}
        engine.steps.put_nowait(None)
        assert (await server.generate(MESSAGES, [], limit(1), "c").__anext__()).finish_reason == "length"
        server._watchdog.cancel()

    asyncio.run(scenario())


def test_a_dead_engine_fails_health_for_good_refuses_with_503_and_ends_the_replica(monkeypatch):
    import ray

    ended = []
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Ctx", (), {"current_actor": "me"})())
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: ended.append((actor, no_restart)))

    async def scenario():
        server, engine = await replica(config())
        await server.check_health()
        engine.dead = True
        await asyncio.sleep(0.3)  # a few watchdog periods
        assert ended == [("me", True)]
        engine.dead = False  # even if the engine looked fine again, the replica stays failed
        with pytest.raises(EngineOverloadedError, match="dead"):
            await server.check_health()
        with pytest.raises(EngineOverloadedError) as refused:
            await server.generate(MESSAGES, [], limit(1), "d").__anext__()
        assert refused.value.status_code == 503 and refused.value.headers()["Retry-After"] == "5"

    asyncio.run(scenario())


def stalling_config(stall_s: float) -> AppConfig:
    base = config().model_dump()
    base["llm"]["engine_stall_s"] = stall_s
    return AppConfig.model_validate(base)


def test_a_stalled_engine_ends_its_requests_with_503_frees_the_ledger_and_ends_the_replica(monkeypatch):
    import ray

    ended = []
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("Ctx", (), {"current_actor": "me"})())
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: ended.append((actor, no_restart)))

    async def scenario():
        server, engine = await replica(stalling_config(0.5))
        stream = server.generate(MESSAGES, [], limit(100), "a")
        engine.steps.put_nowait(None)
        await stream.__anext__()
        assert server.record_autoscaling_stats()["admitted_requests"] == 1
        started = asyncio.get_running_loop().time()
        # The engine is alive (check_health passes) but yields nothing more.
        with pytest.raises(EngineOverloadedError) as stalled:
            await asyncio.wait_for(stream.__anext__(), 5)
        waited = asyncio.get_running_loop().time() - started
        assert 0.4 < waited < 1.5, waited
        assert stalled.value.status_code == 503 and stalled.value.headers()["Retry-After"] == "5"
        held = server.record_autoscaling_stats()
        assert held["admitted_requests"] == 0 and held["pending_s"] == 0
        with pytest.raises(EngineOverloadedError, match="stalled"):
            await server.check_health()
        with pytest.raises(EngineOverloadedError):
            await server.generate(MESSAGES, [], limit(1), "b").__anext__()
        await asyncio.sleep(0.2)  # one watchdog period after the stall
        assert ended == [("me", True)]

    asyncio.run(scenario())


def test_a_slow_engine_that_keeps_stepping_and_an_idle_one_are_not_stalled(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: pytest.fail("the replica ended itself"))

    async def scenario():
        server, engine = await replica(stalling_config(0.5))
        await asyncio.sleep(1.0)  # idle for twice engine_stall_s
        stream = server.generate(MESSAGES, [], limit(6), "a")
        received = []
        for _ in range(6):  # a token every 0.3 s: slow, but progress
            engine.steps.put_nowait(None)
            received.append(await asyncio.wait_for(stream.__anext__(), 5))
            await asyncio.sleep(0.3)
        assert received[-1].finish_reason == "length"
        await server.check_health()
        server._watchdog.cancel()

    asyncio.run(scenario())
