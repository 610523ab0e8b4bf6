"""Prompt building (mistral_common) and the vLLM engine (the only vllm import), behind the
engine protocol (``protocol``: no heavy imports)."""

from serve_app import _lazy_exports

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "admission": ("PrefixCacheEstimate", "WorkLedger"),
        "prompt": ("MISTRAL_COMMON_DATA", "PixtralPromptBuilder", "image_grid_of"),
        "protocol": ("ChatPrompt", "Engine", "GenerationChunk", "SamplingSettings"),
        "stall": ("StallWatch",),
        "start_log": ("StartLog",),
        "stream": ("coalesce",),
        "system_prompt": ("DefaultSystemPrompt",),
        "tools": ("forced_call_schema", "with_tool_calls"),
        "vllm_engine": ("VLLMEngine",),
    },
)
