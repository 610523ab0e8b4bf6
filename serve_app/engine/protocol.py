"""What the LLM deployment needs from an engine; vLLM is the one implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from serve_app.engine.prompt import ChatPrompt


@dataclass(frozen=True)
class SamplingSettings:
    """The OpenAI sampling fields we accept, already validated by the API models."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationChunk:
    """One step of a generation: new text since the last chunk, running counts."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None  # on the first chunk only
    cached_tokens: int | None = None  # prompt tokens the engine's prefix cache answered, when known
    replica: str | None = None  # the LLM replica that answered (set on the first chunk by PixtralServer)
    # Seconds the LLM replica spent per stage before it (first chunk only; serve_app.api.server_timing).
    stages: dict[str, float] | None = None


class Engine(Protocol):
    async def start(self, timeout_s: float) -> None:
        """Ready to generate within ``timeout_s`` seconds, or raise ``EngineError``."""
        ...

    def generate(
        self, prompt: ChatPrompt, sampling: SamplingSettings, request_id: str
    ) -> AsyncIterator[GenerationChunk]: ...

    async def check_health(self) -> None: ...

    def unfinished_requests(self) -> int:
        """Requests the engine holds (waiting or running)."""
        ...

    def shutdown(self) -> None: ...
