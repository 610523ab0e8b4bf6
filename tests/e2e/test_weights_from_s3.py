"""engine.load_format runai_streamer: the tiny Pixtral's weights streamed from S3 (moto_server).

The engine here reads the checkpoint from ``s3://`` with vLLM's Run:ai streamer (only
params.json and tekken.json are mirrored to local disk); the session's app serves the same
checkpoint from its folder. Same weights, same seed, greedy: the same tokens.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import boto3
import httpx
import pytest

from serve_app.config import EngineConfig

pytest.importorskip("runai_model_streamer_s3", reason="runai-model-streamer-s3 is not installed")

BUCKET = "pixtral-weights"
PROMPT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture()
def model_in_s3(moto_endpoint, tiny_model: Path, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)  # the runai loader passes it on to the streamer
    monkeypatch.setenv("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")  # path-style, as moto serves
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for path in tiny_model.iterdir():
        s3.upload_file(str(path), BUCKET, f"tiny-pixtral-12b/{path.name}")
    return f"s3://{BUCKET}/tiny-pixtral-12b"


def test_streamed_from_s3_generates_what_the_local_folder_does(model_in_s3, served, api_key):
    from serve_app.engine.prompt import PixtralPromptBuilder
    from serve_app.engine.protocol import SamplingSettings
    from serve_app.engine.vllm_engine import VLLMEngine

    tokenizer = "mistral_common:tekken_240911.json"  # an s3:// model has no local folder to find it in
    engine = VLLMEngine(
        EngineConfig(model=model_in_s3, tokenizer=tokenizer, load_format="runai_streamer", max_model_len=2048,
                     max_images_per_prompt=1, enforce_eager=True)
    )
    prompt = PixtralPromptBuilder(tokenizer).build(PROMPT, [])

    async def generate() -> list[int]:
        await engine.start(300)
        try:
            settings = SamplingSettings(max_tokens=8, temperature=0, ignore_eos=True)
            return [t async for chunk in engine.generate(prompt, settings, "from-s3") for t in chunk.token_ids]
        finally:
            engine.shutdown()

    from_s3 = asyncio.run(generate())
    local = httpx.post(
        served + "/v1/chat/completions",
        json={"model": "tiny-pixtral", "messages": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
              "return_token_ids": True},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=120,
    ).json()
    assert local["prompt_token_ids"] == prompt.token_ids
    assert len(from_s3) == 8
    assert from_s3 == local["choices"][0]["token_ids"]
