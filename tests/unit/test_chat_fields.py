"""JSON output, function calling, logprobs and n without an engine: wire models, caps, the
Mistral tool-call format (ids, forced-call schema, parsing), prompts with tools, response bodies."""

from __future__ import annotations

import asyncio
import json
import pickle

import jsonschema
import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from pydantic import ValidationError

from serve_app.api.errors import as_service_error
from serve_app.api.models import ChatCompletionRequest, ForcedToolCall
from serve_app.api.responses import Choices, chunk_deltas
from serve_app.config import ChatFieldsConfig
from serve_app.engine.prompt import PixtralPromptBuilder, resolve_tokenizer_file
from serve_app.engine.protocol import GenerationChunk, SamplingSettings
from serve_app.engine.stream import coalesce
from serve_app.engine.tools import MISTRAL_ID, ToolCallIds, ToolCallText, forced_call_schema, with_tool_calls
from serve_app.errors import InvalidRequestError

TOKENIZER = "mistral_common:tekken_240911.json"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def request(**fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def param_of_error(**fields) -> str | None:
    """The ``param`` of the 400 a request gets (validation or the server's caps)."""
    try:
        chat = ChatCompletionRequest.model_validate(request(**fields))
        chat.check_limits(
            ChatFieldsConfig(max_n=4, max_top_logprobs=5, max_schema_bytes=2048, max_schema_depth=8),
            max_tokens_limit=4096,
        )
    except ValidationError as exc:
        error = as_service_error(exc)
    except InvalidRequestError as exc:
        error = exc
    else:
        return None
    assert error.status_code == 400
    return error.param


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"n": 5}, "n"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"max_completion_tokens": 4097, "max_tokens": 8}, "max_completion_tokens"),
        ({"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),  # still unsupported
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}},
         "response_format.json_schema.name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "nonsense"}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": nested_schema(6)}}},
         "response_format"),  # 13 levels of objects: past the depth cap
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "r", "schema": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(200)}}}}},
         "response_format"),  # past the size cap
        ({"tools": [{"type": "function", "function": {"name": "no spaces allowed"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
         "tools[0].function.parameters"),
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),  # auto + JSON
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "a", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0]"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]},
         "messages[0].tool_calls[0].function.arguments"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
         "messages[0].tool_calls[0].id"),
        ({"messages": [{"role": "tool", "content": "r", "tool_call_id": "i" * 300}]}, "messages[0].tool_call_id"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(fields, param):
    assert param_of_error(**fields) == param


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 4, "logprobs": True, "top_logprobs": 5, "presence_penalty": 1, "frequency_penalty": -1,
         "top_k": 20, "min_p": 0.1, "repetition_penalty": 1.2},
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "text"}},
        {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
        {"tools": [WEATHER], "tool_choice": "none"},
    ],
)
def test_supported_fields_are_accepted(fields):
    assert param_of_error(**fields) is None


def test_structured_output_per_tool_choice():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    as_schema = request(response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    sampling = ChatCompletionRequest.model_validate(as_schema).settings().sampling
    assert (sampling.json_schema, sampling.json_object) == (schema, False)
    as_object = ChatCompletionRequest.model_validate(request(response_format={"type": "json_object"})).settings()
    assert (as_object.sampling.json_schema, as_object.sampling.json_object) == (None, True)
    chat = ChatCompletionRequest.model_validate(request(tools=[WEATHER]))
    auto = chat.settings()
    assert chat.tool_choice_mode() == "auto" and auto.forced_call is None and auto.sampling.json_schema is None
    assert auto.tools[0]["name"] == "get_weather"
    named = ChatCompletionRequest.model_validate(
        request(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False, response_format={"type": "json_object"})
    ).settings()
    assert named.forced_call == ForcedToolCall(named="get_weather", parallel=False)
    assert named.tools == auto.tools and not named.sampling.json_object  # the call's grammar, not response_format
    assert ChatCompletionRequest.model_validate(request(tools=[WEATHER], tool_choice="none")).settings().tools == []


def test_request_settings_carry_the_sampling_fields_across_a_pickle():
    chat = ChatCompletionRequest.model_validate(request(
        max_completion_tokens=7, max_tokens=9, temperature=0.5, top_p=0.9, stop="x", seed=3, n=2, logprobs=True,
        presence_penalty=0.1, frequency_penalty=0.2, repetition_penalty=1.1, top_k=5, min_p=0.05, ignore_eos=True,
    ))
    settings = pickle.loads(pickle.dumps(chat.settings()))  # how it crosses the DeploymentHandle
    assert settings == chat.settings()
    assert settings.sampling == SamplingSettings(
        max_tokens=7, temperature=0.5, top_p=0.9, stop=["x"], seed=3, n=2, logprobs=0, presence_penalty=0.1,
        frequency_penalty=0.2, repetition_penalty=1.1, top_k=5, min_p=0.05, ignore_eos=True,
    )
    plain = ChatCompletionRequest.model_validate(request()).settings()
    assert plain.sampling == SamplingSettings() and plain.tools == [] and plain.forced_call is None


def test_client_ids_map_to_mistral_ids_and_back():
    ids = ToolCallIds()
    long = ids.to_mistral("call_0123456789abcdef")
    assert MISTRAL_ID.match(long) and ids.to_mistral("call_0123456789abcdef") == long
    assert ids.to_mistral("abcDEF123") == "abcDEF123"  # already Mistral's shape: kept
    others = {ids.to_mistral(f"call_{i}") for i in range(200)}
    assert len(others) == 200 and all(MISTRAL_ID.match(i) for i in others)
    assert ids.to_client(long) == "call_0123456789abcdef"
    assert MISTRAL_ID.match(ids.to_client(None)) and MISTRAL_ID.match(ids.to_client("not-an-id!"))
    assert ids.to_client("zzzzzzzz9") == "zzzzzzzz9"


def test_forced_call_schema_accepts_only_offered_calls():
    tools = ChatCompletionRequest.model_validate(request(tools=[WEATHER])).plain_tools()
    schema = forced_call_schema(tools, None, parallel=True)
    good = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    jsonschema.validate(good, schema)
    for bad in ([], [{"name": "other", "arguments": {"city": "x"}}], [{"name": "get_weather", "arguments": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good * 2, forced_call_schema(tools, "get_weather", parallel=False))


def test_tool_call_text_splits_content_and_calls():
    auto = ToolCallText(ToolCallIds(), forced=False)
    assert auto.feed("Let me check. ") == "Let me check. "
    assert auto.feed('[TOOL_CALLS][{"name": "get_weather", ') == ""
    assert auto.feed('"arguments": {"city": "Paris"}, "id": "abcDEF123"}]') == ""
    rest, calls = auto.finish()
    assert rest == "" and calls == [{"id": "abcDEF123", "name": "get_weather", "arguments": '{"city": "Paris"}'}]

    plain = ToolCallText(ToolCallIds(), forced=False)
    assert plain.feed("no calls here") == "no calls here" and plain.finish() == ("", None)

    broken = ToolCallText(ToolCallIds(), forced=True)
    broken.feed('[{"name": "get_wea')  # cut by max_tokens: the text goes out as content
    assert broken.finish() == ('[{"name": "get_wea', None)


def chunk(text: str, index: int = 0, finish: str | None = None, **extra) -> GenerationChunk:
    return GenerationChunk(text=text, token_ids=[1] * len(text), prompt_tokens=3, completion_tokens=len(text),
                           finish_reason=finish, index=index, **extra)


async def collect(chunks) -> list[GenerationChunk]:
    return [c async for c in chunks]


async def source(items):
    for item in items:
        yield item


def test_streamed_calls_reassemble_to_the_parsed_call():
    parts = ['[{"name": "get_weather", "argu', 'ments": {"city": "Oslo"}}]']
    out = asyncio.run(collect(with_tool_calls(
        source([chunk(parts[0]), chunk(parts[1], finish="stop")]), ToolCallIds(), forced=True)))
    assert [c.text for c in out] == ["", ""]
    assert out[-1].finish_reason == "tool_calls"
    (call,) = out[-1].tool_calls
    deltas = [delta for c in out for delta, _, _ in chunk_deltas(c)]
    assembled = {"id": "", "name": "", "arguments": ""}
    for delta in deltas:
        for piece in delta.get("tool_calls", ()):
            assembled["id"] += piece.get("id", "")
            assembled["name"] += piece["function"].get("name", "")
            assembled["arguments"] += piece["function"]["arguments"]
    assert assembled == call and json.loads(call["arguments"]) == {"city": "Oslo"}
    body = Choices()
    for c in out:
        body.add(c)
    (choice,) = body.bodies()
    assert choice["message"]["content"] is None and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call["arguments"]}


def test_choices_and_logprobs_are_kept_apart_per_index():
    lp = [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]
    chunks = [chunk("a", 0, logprobs=lp), chunk("b", 1, logprobs=lp), chunk("c", 0, "stop", logprobs=lp),
              chunk("d", 1, "length", logprobs=lp)]
    merged = asyncio.run(collect(coalesce(source(chunks), interval_s=10)))
    body = Choices()
    for c in merged:
        body.add(c)
    first, second = body.bodies()
    assert (first["index"], first["message"]["content"], first["finish_reason"]) == (0, "ac", "stop")
    assert (second["index"], second["message"]["content"], second["finish_reason"]) == (1, "bd", "length")
    assert len(first["logprobs"]["content"]) == 2


def test_prompt_with_tools_and_tool_results_matches_mistral_common():
    builder = PixtralPromptBuilder(TOKENIZER)
    reference = MistralTokenizer.from_file(str(resolve_tokenizer_file(TOKENIZER)))
    chat = ChatCompletionRequest.model_validate(request(
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_abc123xyz789", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_abc123xyz789", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
    ))
    prompt = builder.build(chat.plain_messages(), [], chat.plain_tools())
    mistral_id = prompt.tool_call_ids.to_mistral("call_abc123xyz789")
    expected = reference.encode_chat_completion(MistralRequest(
        messages=[
            UserMessage(content="Weather in Paris?"),
            AssistantMessage(tool_calls=[ToolCall(id=mistral_id, function=FunctionCall(
                name="get_weather", arguments='{"city": "Paris"}'))]),
            ToolMessage(content="sunny", tool_call_id=mistral_id),
            UserMessage(content="And tomorrow?"),
        ],
        tools=[Tool(function=Function(**chat.plain_tools()[0]))],
    ))
    assert prompt.token_ids == expected.tokens
    forced = builder.build(chat.plain_messages(), [], chat.plain_tools(), force_tool_call=True)
    assert forced.token_ids == [*expected.tokens, builder.tool_calls_token]


def test_a_tool_result_without_its_call_is_a_400():
    builder = PixtralPromptBuilder(TOKENIZER)
    with pytest.raises(InvalidRequestError) as info:
        builder.build([{"role": "user", "content": "hi"}, {"role": "tool", "content": "r", "tool_call_id": "x"}], [])
    assert info.value.param == "messages"
