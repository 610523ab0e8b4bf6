"""Which engine failures are the client's: vLLM's client-error classes only; the rest are logged 500s."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="module")
def classify():
    from serve_app.engine.vllm_engine import _classify

    return _classify


def test_vllm_validation_error_is_a_400_naming_the_parameter(classify):
    from vllm.exceptions import VLLMValidationError

    error = classify(VLLMValidationError("max_tokens must be at least 1", parameter="max_tokens", value=0), "req-1")
    assert (error.status_code, error.param) == (400, "max_tokens")
    assert error.message == "the engine refused the request: max_tokens must be at least 1"


@pytest.mark.parametrize("exc", [ValueError("secret internal detail"), TypeError("secret internal detail"),
                                 RuntimeError("secret internal detail")])
def test_other_engine_exceptions_are_logged_500s_with_the_request_id(classify, caplog, exc):
    with caplog.at_level(logging.ERROR, logger="serve_app.engine.vllm_engine"):
        error = classify(exc, "chatcmpl-abc")
    assert error.status_code == 500
    assert "secret" not in error.message and "chatcmpl-abc" in error.message
    assert "chatcmpl-abc" in caplog.text and "secret internal detail" in caplog.text


def test_dead_engine_is_a_503(classify):
    from vllm.v1.engine.exceptions import EngineDeadError

    assert classify(EngineDeadError(), "r").status_code == 503
