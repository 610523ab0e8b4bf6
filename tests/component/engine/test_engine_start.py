"""Engine start-up has a deadline that fires, and cheap checks come before the expensive load.

The hang is injected into VLLMEngine's build step (what runs vLLM's config loading and
AsyncLLM construction): what is tested is that start() ends at its deadline whatever the
build does, and vLLM offers no deterministic way to hang a real load on a test machine.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve_app.config import AppConfig, EngineConfig
from serve_app.errors import EngineError

PACKAGED_TOKENIZER = "mistral_common:tekken_240911.json"


def test_a_hanging_engine_build_fails_within_engine_start_timeout():
    from serve_app.engine.vllm_engine import VLLMEngine

    release = threading.Event()

    class HangingBuild(VLLMEngine):
        def _build(self, placement_group):
            release.wait(60)  # a load stuck on a dead filesystem, a NCCL init waiting for a peer
            raise RuntimeError("released by the test")

    engine = HangingBuild(EngineConfig(model="unused", tokenizer=PACKAGED_TOKENIZER))
    started = time.monotonic()
    try:
        with pytest.raises(EngineError, match="did not start within 1.5 s"):
            asyncio.run(engine.start(timeout_s=1.5))
        elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 4
        assert any(t.name == "engine-start" and t.daemon for t in threading.enumerate())  # abandoned, daemon
    finally:
        release.set()


def test_a_failing_engine_build_raises_its_own_error_at_once():
    from serve_app.engine.vllm_engine import VLLMEngine

    class BrokenBuild(VLLMEngine):
        def _build(self, placement_group):
            raise OSError("weights not found")

    started = time.monotonic()
    with pytest.raises(OSError, match="weights not found"):
        asyncio.run(BrokenBuild(EngineConfig(model="unused")).start(timeout_s=60))
    assert time.monotonic() - started < 5


def test_missing_system_prompt_fails_the_replica_before_the_engine_is_built(tmp_path):
    from serve_app.deployments.pixtral_server import PixtralServer

    config = AppConfig.model_validate(
        {
            "served_model_name": "m",
            "engine": {"model": str(tmp_path), "tokenizer": PACKAGED_TOKENIZER},
            "system_prompt": {"file": "SYSTEM_PROMPT.txt"},
        }
    )
    built: list[AppConfig] = []

    def factory(cfg):
        built.append(cfg)
        raise AssertionError("the engine must not be built")

    server = PixtralServer.func_or_class.__new__(PixtralServer.func_or_class)
    with pytest.raises(FileNotFoundError, match="SYSTEM_PROMPT.txt"):
        asyncio.run(server.__init__(config, factory))
    assert built == []
