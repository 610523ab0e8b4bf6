"""OpenAI wire models, the responses written from the LLM's chunks, and the mapping of errors
to OpenAI error bodies."""

from serve_app import _lazy_exports

__all__, __getattr__ = _lazy_exports(
    __name__,
    {
        "body_budget": ("BodyBudget", "BodyHold"),
        "errors": ("error_response", "unwrap", "unwrap_cause"),
        "models": ("ChatCompletionRequest", "ForcedToolCall", "RequestSettings", "parse_chat_request_off_loop"),
        "responses": ("completion", "sse_events"),
        "server_timing": ("StageClock", "format_server_timing"),
    },
)
