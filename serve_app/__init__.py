"""pixtral-serve: Mistral's Pixtral models behind an OpenAI-compatible API on Ray Serve + vLLM."""
