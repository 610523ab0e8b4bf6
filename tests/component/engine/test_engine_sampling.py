"""What the engine adapter hands vLLM for the chat fields, and vLLM's logprobs in OpenAI's shape
(vLLM's own classes, no engine started)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve_app.config import EngineConfig
from serve_app.engine.protocol import SamplingSettings
from serve_app.engine.vllm_engine import _openai_logprobs, _structured_outputs, engine_kwargs


def test_json_schema_and_json_object_become_vllm_structured_outputs():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    params = _structured_outputs(SamplingSettings(max_tokens=8, json_schema=schema))
    spec = params.get("structured_outputs") or params.get("guided_decoding")
    assert spec.json == schema and spec.disable_any_whitespace
    spec = next(iter(_structured_outputs(SamplingSettings(max_tokens=8, json_object=True)).values()))
    assert spec.json_object and spec.json is None
    assert _structured_outputs(SamplingSettings(max_tokens=8)) == {}


def test_compact_json_selects_xgrammar_without_whitespace_unless_extra_says_otherwise():
    compact = engine_kwargs(EngineConfig(model="m"))["structured_outputs_config"]
    assert (compact.backend, compact.disable_any_whitespace) == ("xgrammar", True)
    assert "structured_outputs_config" not in engine_kwargs(EngineConfig(model="m", compact_json=False))
    own = {"backend": "guidance"}
    assert engine_kwargs(EngineConfig(model="m", extra={"structured_outputs_config": own}))[
        "structured_outputs_config"] == own


def test_logprobs_are_the_chosen_token_and_the_top_ranked_alternatives():
    from vllm.logprobs import Logprob

    step = {
        7: Logprob(logprob=-2.5, rank=4, decoded_token="x"),  # chosen, outside the top 2
        1: Logprob(logprob=-0.1, rank=1, decoded_token="é"),
        2: Logprob(logprob=-0.9, rank=2, decoded_token="b"),
        3: Logprob(logprob=-1.2, rank=3, decoded_token="c"),
    }
    choice = SimpleNamespace(token_ids=[7], logprobs=[step])
    (entry,) = _openai_logprobs(choice, 2)
    assert (entry["token"], entry["logprob"]) == ("x", -2.5)
    assert [alt["token"] for alt in entry["top_logprobs"]] == ["é", "b"]
    assert entry["top_logprobs"][0]["bytes"] == list("é".encode())
    assert _openai_logprobs(choice, None) is None
    assert _openai_logprobs(choice, 0)[0]["top_logprobs"] == []
