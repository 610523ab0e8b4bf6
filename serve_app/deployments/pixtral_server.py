"""PixtralServer: one vLLM engine per replica, on its own placement group of GPUs."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable

from ray import serve
from ray.serve.exceptions import RayServeException

from serve_app.api.models import RequestSettings
from serve_app.api.server_timing import StageClock
from serve_app.compat.ray_serve import end_this_replica
from serve_app.config import AppConfig
from serve_app.deployments import LLM
from serve_app.deployments.image_pool import PooledImage, resolve_pooled
from serve_app.engine.admission import PrefixCacheEstimate, WorkLedger
from serve_app.engine.prompt import PixtralPromptBuilder
from serve_app.engine.protocol import Engine, GenerationChunk
from serve_app.engine.stall import StallWatch
from serve_app.engine.start_log import StartLog
from serve_app.engine.stream import coalesce
from serve_app.engine.system_prompt import DefaultSystemPrompt
from serve_app.engine.tools import forced_call_schema, with_tool_calls
from serve_app.errors import EngineOverloadedError, InvalidRequestError
from serve_app.images import ImageGrid, PreparedImage

logger = logging.getLogger(__name__)

EngineFactory = Callable[[AppConfig], Engine]


def vllm_engine_factory(config: AppConfig) -> Engine:
    from serve_app.engine.vllm_engine import VLLMEngine

    backend = "ray" if config.llm.accelerator == "gpu" and config.engine.tensor_parallel_size > 1 else None
    return VLLMEngine(config.engine, distributed_executor_backend=backend)


def _replica_name() -> str | None:
    """This Serve replica's id (the ``X-Pixtral-Replica`` header); None outside a replica."""
    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:
        return None


def prompt_size(messages: list[dict[str, Any]], images: list[PreparedImage], grid: ImageGrid) -> int:
    """An upper bound of the prompt's tokens without tokenizing: text characters (no token is
    shorter than one) plus the images' tokens."""
    chars = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            chars += len(content)
        elif content:  # None: an assistant turn that only calls tools
            chars += sum(len(part.get("text", "")) for part in content)
    return chars + sum(grid.num_tokens(image.width, image.height) for image in images)


@serve.deployment(name=LLM)
class PixtralServer:
    async def __init__(self, config: AppConfig, engine_factory: EngineFactory = vllm_engine_factory):
        start = StartLog()
        start.mark("the LLM replica's constructor begins (Ray, Serve and serve_app imported)")
        self._config = config
        self._replica = _replica_name()
        # Everything that can fail cheaply (tokenizer, system prompt file) fails before the
        # engine loads its weights, not after, and not again on every restart.
        self._prompts = PixtralPromptBuilder(config.tokenizer_path())
        self._system_prompt = await asyncio.to_thread(DefaultSystemPrompt.from_config, config)
        start.mark("tokenizer built")
        self._engine = engine_factory(config)
        await self._engine.start(config.llm.engine_start_timeout_s)
        start.mark("engine ready")
        self._ledger = WorkLedger(config.llm.admission)
        self._cache_estimate = (
            PrefixCacheEstimate(self._prompts.image_tokens, self._prompts.image_end)
            if config.engine.prefix_caching()
            else None
        )
        self._engine_dead: str | None = None
        self._stall = StallWatch(config.llm.engine_stall_s)
        self._watchdog = asyncio.create_task(self._watch_engine())

    async def generate(
        self,
        messages: list[dict[str, Any]],
        pooled: list[PooledImage | PreparedImage],
        request: RequestSettings,
        request_id: str,
    ) -> AsyncIterator[GenerationChunk]:
        clock = StageClock()
        if self._engine_dead is not None:  # before any work on the prompt
            raise EngineOverloadedError("the engine is restarting; retry the request")
        images = await resolve_pooled(pooled, self._config.llm.pixels_timeout_s)
        if self._system_prompt is not None:
            messages = self._system_prompt.apply(messages)
        tools, forced = request.tools, request.forced_call
        if not tools and prompt_size(messages, images, self._prompts.grid) <= self._config.llm.prompt_inline_tokens:
            prompt = self._prompts.build(messages, images)  # small: off-loop costs more than it saves
        else:
            prompt = await asyncio.to_thread(
                self._prompts.build, messages, images, tools, force_tool_call=forced is not None
            )
        clock.mark("prompt")
        room = self._config.engine.max_model_len - len(prompt.token_ids)
        if room < 1:
            raise InvalidRequestError(
                f"the prompt is {len(prompt.token_ids)} tokens; this model takes at most "
                f"{self._config.engine.max_model_len} tokens including the output",
                param="messages",
                code="context_length_exceeded",
            )
        requested = request.sampling.max_tokens
        if requested is not None and requested > room:
            raise InvalidRequestError(
                f"max_tokens={requested} does not fit: the prompt is {len(prompt.token_ids)} tokens and "
                f"the context is {self._config.engine.max_model_len}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        settings = dataclasses.replace(
            request.sampling,
            max_tokens=requested or min(self._config.default_max_tokens, room),
            compact_json=self._config.engine.compact_json,
            keep_special_tokens=bool(tools) and forced is None,  # tool_choice auto: find [TOOL_CALLS]
        )
        if forced is not None:
            settings = dataclasses.replace(
                settings, json_schema=forced_call_schema(tools, forced.named, forced.parallel), schema_param="tools"
            )
        # Admission charges only the prefill the engine's prefix cache will not answer.
        cache = self._cache_estimate
        lookup = cache.lookup(prompt.token_ids, prompt.image_ids) if cache else None
        ticket = self._ledger.admit(
            len(prompt.token_ids) - (lookup.cached_tokens if lookup else 0), settings.max_tokens, settings.n
        )
        if lookup:
            cache.remember(lookup)
        chunks = self._engine.generate(prompt, settings, request_id)
        if tools:
            chunks = with_tool_calls(chunks, prompt.tool_call_ids, forced=forced is not None)
        try:
            # Closed at once, not when collected, when the client goes away: coalesce then
            # closes the engine stream, which aborts the engine request.
            async with aclosing(self._stall.guard(coalesce(chunks, self._config.llm.stream_interval_s))) as merged:
                first = True
                async for chunk in merged:
                    ticket.progress(chunk.completion_tokens)
                    if first:  # which replica answered, and where its time went: visible to clients and benchmarks
                        clock.mark("engine")
                        chunk, first = dataclasses.replace(chunk, replica=self._replica, stages=clock.stages), False
                    yield chunk
        finally:
            ticket.release()

    async def check_health(self) -> None:
        """Fails from the moment the engine is found dead, and stays failed."""
        if self._engine_dead is not None:
            raise EngineOverloadedError(f"the engine is dead: {self._engine_dead}")
        await self._engine.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics, what this replica holds: the estimated seconds of
        work (``serve_app.autoscaling.PendingWorkPolicy`` scales on them), the requests admission
        let in, and the engine's own count of unfinished requests."""
        return {
            "pending_s": self._ledger.pending_s(),
            "admitted_requests": self._ledger.requests,
            "engine_requests": self._engine.unfinished_requests(),
        }

    async def _watch_engine(self) -> None:
        """Ends the replica as soon as its engine reports itself dead or stops making progress.

        Serve's health check needs three failed periods before it replaces a replica;
        a replica whose actor has ended is replaced at once. Requests in flight have
        already failed with 503 (the engine's own error, or ``StallWatch`` for a stalled
        engine, which also frees their share of the ledger); new ones get 503 until the
        replica is gone, and Serve routes to the others or the replacement.
        """
        period = self._config.llm.engine_watchdog_period_s
        while self._engine_dead is None:
            await asyncio.sleep(period)
            try:
                await asyncio.wait_for(self._engine.check_health(), self._config.llm.engine_stall_s)
            except Exception as exc:  # noqa: BLE001 - any failure of a started engine is fatal
                self._engine_dead = f"{type(exc).__name__}: {exc}"
                break
            stalled = self._stall.check(self._engine.unfinished_requests(), self._engine.last_step_at())
            if stalled is not None:
                self._engine_dead = f"engine stalled: {stalled}"
        self._stall.halt(self._engine_dead)
        logger.error("engine is dead (%s); ending this replica so Serve replaces it", self._engine_dead)
        await asyncio.sleep(period)  # the failing requests' 503s leave first
        end_this_replica()

    def __del__(self) -> None:
        watchdog = getattr(self, "_watchdog", None)
        if watchdog is not None:
            watchdog.cancel()
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
