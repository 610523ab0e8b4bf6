"""JSON output, function calling, logprobs and n through the official openai SDK against the real
engine. The tiny model's weights are random: only structured outputs can make its answers valid
JSON, so a valid answer is what the grammar enforced."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from openai import BadRequestError
from pydantic import BaseModel, Field

from chat_payloads import data_url, jpeg_bytes, user_message

MODEL = "tiny-pixtral"
RECEIPT = {
    "type": "object",
    "properties": {
        "merchant": {"type": "string", "maxLength": 12},
        "paid": {"type": "boolean"},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "items": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["merchant", "paid", "currency", "items"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


class Receipt(BaseModel):
    merchant: str = Field(max_length=12)
    paid: bool
    currency: Literal["EUR", "USD", "GBP"]


def image_message() -> dict:
    return user_message(data_url(jpeg_bytes(7, (320, 240))), text="Read this receipt.")


def test_json_schema_reply_parses_and_validates(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[image_message()], max_tokens=200, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "receipt", "schema": RECEIPT, "strict": True}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), RECEIPT)


def test_json_object_reply_is_held_to_json(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[image_message()], max_tokens=8, seed=2, response_format={"type": "json_object"},
    )
    assert response.choices[0].message.content.startswith("{")


def test_sdk_parse_returns_the_pydantic_object(client):
    completion = client.beta.chat.completions.parse(
        model=MODEL, messages=[image_message()], response_format=Receipt, max_tokens=200, seed=3
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Receipt)
    assert parsed == Receipt.model_validate_json(completion.choices[0].message.content)


def test_sdk_parse_streaming_returns_the_pydantic_object(client):
    with client.beta.chat.completions.stream(
        model=MODEL, messages=[image_message()], response_format=Receipt, max_tokens=200, seed=4
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, Receipt)
    assert "".join(deltas) == final.choices[0].message.content


def forced_call(client, **kwargs):
    # One call: with parallel calls allowed the random weights keep adding calls until max_tokens.
    kwargs.setdefault("parallel_tool_calls", False)
    return client.chat.completions.create(
        model=MODEL, messages=[user_message(text="What is the weather in Paris?")], max_tokens=200,
        temperature=0, seed=5, tools=[WEATHER, CLOCK], **kwargs,
    )


def test_required_tool_choice_yields_a_call_whose_arguments_validate(client):
    response = forced_call(client, tool_choice="required")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls, choice.message
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, CLOCK)}
    for call in choice.message.tool_calls:
        assert len(call.id) == 9 and call.id.isalnum()
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_streamed_tool_call_deltas_reassemble_to_the_same_call(client):
    whole = forced_call(client, tool_choice="required").choices[0].message.tool_calls
    calls: dict[int, dict] = {}
    finish = None
    for chunk in forced_call(client, tool_choice="required", stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for piece in choice.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"name": "", "arguments": ""})
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert finish == "tool_calls"
    assert [calls[i] for i in sorted(calls)] == [
        {"name": call.function.name, "arguments": call.function.arguments} for call in whole
    ]


def test_named_tool_choice_calls_that_function_once(client):
    response = forced_call(client, tool_choice={"type": "function", "function": {"name": "get_time"}})
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments)["zone"] in ("UTC", "CET")


def test_tool_result_turn_is_accepted_with_client_ids(client):
    messages = [
        user_message(text="What is the weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_9f8e7d6c5b4a3210", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
        }]},
        {"role": "tool", "tool_call_id": "call_9f8e7d6c5b4a3210", "content": '{"temperature": 21}'},
    ]
    response = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=4)
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert response.usage.prompt_tokens > 0


def test_top_logprobs_gives_that_many_alternatives_per_token(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[user_message(text="Say something.")], max_tokens=6,
        logprobs=True, top_logprobs=3, seed=6, extra_body={"ignore_eos": True},
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.logprob <= ranked[0] + 1e-6


def test_n_choices_and_their_tokens_in_usage(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[image_message()], max_tokens=5, n=3, seed=8, extra_body={"ignore_eos": True},
    )
    assert sorted(choice.index for choice in response.choices) == [0, 1, 2]
    assert all(choice.finish_reason == "length" for choice in response.choices)
    assert response.usage.completion_tokens == 3 * 5
    streamed: dict[int, str] = {}
    finishes = {}
    for chunk in client.chat.completions.create(
        model=MODEL, messages=[image_message()], max_tokens=5, n=3, seed=8, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        if chunk.usage:
            assert chunk.usage.completion_tokens == 15
    assert finishes == {0: "length", 1: "length", 2: "length"}


def test_sampling_knobs_are_accepted(client):
    response = client.chat.completions.create(
        model=MODEL, messages=[user_message(text="Hi")], max_tokens=4, presence_penalty=0.5, frequency_penalty=0.5,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert response.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"n": 99}, "n"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "nope"}}}},
         "response_format"),
        # valid for jsonschema, but no grammar can end it: the engine core refuses it before any token
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"$ref": "#"}}}},
         "response_format"),
    ],
)
def test_unsupported_or_capped_fields_are_400s_naming_them(client, fields, param):
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[user_message(text="Hi")], max_tokens=2,
                                       extra_body=fields)
    assert info.value.body["param"] == param
