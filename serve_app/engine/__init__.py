"""Prompt building (mistral_common) and the vLLM engine (the only vllm import)."""
