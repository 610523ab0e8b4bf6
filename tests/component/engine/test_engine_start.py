"""Engine start-up has a deadline that fires, and cheap checks come before the expensive load.

The hang is real: the model folder's params.json is a FIFO nobody writes, so vLLM's own
config loading blocks in open(), the way a stuck network filesystem or Hub download would.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from serve_app.config import AppConfig, EngineConfig
from serve_app.errors import EngineError

PACKAGED_TOKENIZER = "mistral_common:tekken_240911.json"


@pytest.fixture
def hanging_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    fifo = folder / "params.json"
    os.mkfifo(fifo)
    yield folder
    # Let the abandoned build thread finish: a writer opens the FIFO and closes it at once.
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def test_a_hanging_engine_build_fails_within_engine_start_timeout(hanging_model):
    import vllm  # noqa: F401 - imported up front, so the deadline measures the hang, not the import
    from serve_app.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        EngineConfig(model=str(hanging_model), tokenizer=PACKAGED_TOKENIZER, load_format="dummy", max_model_len=1024)
    )
    started = time.monotonic()
    with pytest.raises(EngineError, match="did not start within 3"):
        asyncio.run(engine.start(timeout_s=3))
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 8  # slack for a busy 2-core CI machine
    assert any(t.name == "engine-start" and t.daemon for t in threading.enumerate())  # still stuck, abandoned


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
