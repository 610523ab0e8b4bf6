"""A tiny Pixtral-Large-shaped model (v7m1 tokenizer) end to end: system prompts, v7 template."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from chat_payloads import SYSTEM_PROMPT_TEMPLATE, data_url, jpeg_bytes

MODEL = "tiny-pixtral-large"


@pytest.fixture(scope="module")
def v7(tiny_large_model) -> MistralTokenizer:
    return MistralTokenizer.from_file(str(tiny_large_model / "tokenizer.model.v7m1"))


def ask(served_large, api_key, messages) -> dict:
    response = httpx.post(
        served_large + "/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 6, "temperature": 0, "return_token_ids": True},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def reference_ids(tokenizer, system: str | None, text: str, *urls: str) -> list[int]:
    content = [TextChunk(text=text)] + [ImageURLChunk(image_url=u) for u in urls]
    messages = ([SystemMessage(content=system)] if system else []) + [UserMessage(content=content)]
    return tokenizer.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens


def expected_default_prompt(today) -> str:
    return (
        SYSTEM_PROMPT_TEMPLATE.replace("{name}", "Pixtral-Large-Instruct-2411")
        .replace("{today}", today.isoformat())
        .replace("{yesterday}", (today - timedelta(days=1)).isoformat())
    )


def test_default_system_prompt_is_applied_with_todays_date(served_large, api_key, v7):
    url = data_url(jpeg_bytes(40, (300, 200)))
    before = datetime.now(timezone.utc).date()
    body = ask(served_large, api_key, [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    after = datetime.now(timezone.utc).date()
    candidates = [reference_ids(v7, expected_default_prompt(d), "What is this?", url) for d in {before, after}]
    assert body["prompt_token_ids"] in candidates
    assert body["usage"]["prompt_tokens"] == len(body["prompt_token_ids"])
    system_open = v7.instruct_tokenizer.tokenizer.get_special_token("[SYSTEM_PROMPT]")
    assert body["prompt_token_ids"][1] == system_open


def test_request_system_prompt_replaces_the_default(served_large, api_key, v7):
    mine = ask(served_large, api_key, [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}])
    assert mine["prompt_token_ids"] == reference_ids(v7, "Answer in French.", "Hello")
    other = ask(served_large, api_key, [
        {"role": "system", "content": "Answer in German."}, {"role": "user", "content": "Hello"}])
    assert other["prompt_token_ids"] == reference_ids(v7, "Answer in German.", "Hello")
    assert other["prompt_token_ids"] != mine["prompt_token_ids"]


def test_large_model_is_listed_on_its_own_route(served_large, api_key):
    response = httpx.get(served_large + "/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert [m["id"] for m in response.json()["data"]] == [MODEL]
