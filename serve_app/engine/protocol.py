"""What the LLM deployment needs from an engine; vLLM is the one implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from serve_app.engine.tools import ToolCallIds


@dataclass(frozen=True)
class ChatPrompt:
    """Token ids with the image token runs in place, and the images in prompt order
    (``serve_app.engine.prompt.PixtralPromptBuilder`` builds them)."""

    token_ids: list[int]
    images: list[Image.Image]
    image_ids: list[str]
    tool_call_ids: ToolCallIds | None = None  # the client's tool-call ids as the prompt carries them


@dataclass(frozen=True)
class SamplingSettings:
    """The OpenAI sampling fields we accept, already validated by the API models
    (``serve_app.api.models.ChatCompletionRequest.settings``)."""

    max_tokens: int | None = None  # None: the client gave none; the LLM replica sets it before the engine sees it
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    logprobs: int | None = None  # alternatives per token (0: the chosen token's own logprob only)
    json_schema: dict[str, Any] | None = None  # structured outputs: the output is JSON of this schema
    json_object: bool = False  # structured outputs: the output is a JSON object
    compact_json: bool = True  # structured outputs without whitespace between tokens
    schema_param: str = "response_format"  # the request field the structured output's schema came from
    keep_special_tokens: bool = False  # the text keeps control tokens ([TOOL_CALLS]) for parsing


@dataclass(frozen=True)
class GenerationChunk:
    """One step of one choice of a generation: new text since that choice's last chunk, running
    counts (``completion_tokens`` counts every choice's tokens)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None  # on the first chunk only
    cached_tokens: int | None = None  # prompt tokens the engine's prefix cache answered, when known
    replica: str | None = None  # the LLM replica that answered (set on the first chunk by PixtralServer)
    index: int = 0  # which choice (n > 1)
    logprobs: list[dict[str, Any]] | None = None  # OpenAI's logprobs.content entries of this chunk's tokens
    tool_calls: list[dict[str, Any]] | None = None  # parsed calls {id, name, arguments}, on a choice's last chunk
    # Seconds the LLM replica spent per stage before it (first chunk only; serve_app.api.server_timing).
    stages: dict[str, float] | None = None
    # The engine's own split of its part of that (first chunk only; the engine sets it): render, to_core,
    # queue, prefill, from_core (or render and core where the engine gives no timestamps).
    engine_stages: dict[str, float] | None = None


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

    def last_step_at(self) -> float | None:
        """``time.monotonic()`` of the engine's last step (output or not), for hung-engine detection;
        None when the engine does not report its steps (then streamed chunks alone count)."""
        ...

    def shutdown(self) -> None: ...
