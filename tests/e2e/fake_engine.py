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

    def shutdown(self) -> None:
        return None


class FakeSlowStartEngine(FakeFailingEngine):
    """An engine still loading its weights: start() takes the whole start-up deadline."""

    async def start(self, timeout_s: float) -> None:
        import asyncio

        await asyncio.sleep(timeout_s)
