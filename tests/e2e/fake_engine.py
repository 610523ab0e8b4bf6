"""A stand-in engine that fails mid-stream: the one failure the real engine can't be made to do."""

from __future__ import annotations

from serve_app.engine.protocol import GenerationChunk


class FakeFailingEngine:
    """Streams two chunks, then breaks the way an engine crash would."""

    def __init__(self, config) -> None:
        self.config = config

    async def start(self, timeout_s: float) -> None:
        return None

    async def generate(self, prompt, sampling, request_id):
        for i in range(2):
            yield GenerationChunk(
                text=f"part{i} ",
                token_ids=[100 + i],
                prompt_tokens=len(prompt.token_ids),
                completion_tokens=i + 1,
            )
        raise RuntimeError("engine crashed mid-stream (injected)")

    async def check_health(self) -> None:
        return None

    def unfinished_requests(self) -> int:
        return 0

    def last_step_at(self) -> float | None:
        return None

    def shutdown(self) -> None:
        return None


class FakeSlowEngine:
    """Streams ``chunks`` pieces ``interval_s`` apart, each naming this engine instance.

    For the drain test: what is tested is Serve's replacement of replicas with our
    options (graceful shutdown), so the stream only has to be long and recognisable.
    """

    chunks = 16
    interval_s = 0.5

    def __init__(self, config) -> None:
        import uuid

        self.config = config
        self.instance = uuid.uuid4().hex[:8]
        self.running = 0

    async def start(self, timeout_s: float) -> None:
        return None

    async def generate(self, prompt, sampling, request_id):
        import asyncio

        self.running += 1
        try:
            for i in range(self.chunks):
                await asyncio.sleep(self.interval_s)
                yield GenerationChunk(
                    text=f"{self.instance}:{i} ",
                    token_ids=[100 + i],
                    prompt_tokens=len(prompt.token_ids),
                    completion_tokens=i + 1,
                    finish_reason="length" if i == self.chunks - 1 else None,
                )
        finally:
            self.running -= 1

    async def check_health(self) -> None:
        return None

    def unfinished_requests(self) -> int:
        return self.running

    def last_step_at(self) -> float | None:
        return None

    def shutdown(self) -> None:
        return None


class FakeSlowStartEngine(FakeFailingEngine):
    """An engine still loading its weights: start() takes the whole start-up deadline."""

    async def start(self, timeout_s: float) -> None:
        import asyncio

        await asyncio.sleep(timeout_s)
