"""OpenAI chat-completions wire models: what we accept, and the chunks we send back."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.api.errors import as_service_error
from serve_app.engine.protocol import SamplingSettings
from serve_app.errors import InvalidRequestError

if TYPE_CHECKING:
    from serve_app.config import ChatFieldsConfig

# OpenAI's and mistral_common's rule for function and schema names.
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


@dataclass(frozen=True)
class ForcedToolCall:
    """tool_choice "required" or a named function: the output must be a call of the offered tools."""

    named: str | None  # the one function it must call; None: any of the tools
    parallel: bool  # parallel_tool_calls: more than one call allowed


@dataclass(frozen=True)
class RequestSettings:
    """What a chat request asks of the LLM replica besides its messages and images, validated
    once by ``ChatCompletionRequest``; it crosses the DeploymentHandle as it is (Ray Serve LLM
    hands its typed requests to the LLM server the same way). The LLM replica settles what
    needs the prompt: ``max_tokens`` within the context, a forced call's grammar."""

    sampling: SamplingSettings  # sampling.max_tokens: the client's, or None
    tools: list[dict[str, Any]] = field(default_factory=list)  # offered in the prompt: {name, description, parameters}
    forced_call: ForcedToolCall | None = None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _valid_unicode(value: str) -> str:
    """JSON may carry lone surrogate escapes (``"\\ud800"``); no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it has a lone surrogate escape)") from None
    return value


UnicodeText = Annotated[str, AfterValidator(_valid_unicode)]


class TextPart(_Wire):
    type: Literal["text"]
    text: UnicodeText


class ImageURL(_Wire):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(_Wire):
    type: Literal["image_url"]
    image_url: ImageURL

    @model_validator(mode="before")
    @classmethod
    def _url_as_string(cls, data: Any) -> Any:
        # Some clients send "image_url": "https://..." instead of {"url": ...}.
        if isinstance(data, dict) and isinstance(data.get("image_url"), str):
            return {**data, "image_url": {"url": data["image_url"]}}
        return data


ContentPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]


class FunctionCall(_Wire):
    name: str = Field(pattern=NAME_PATTERN)
    arguments: UnicodeText = Field(description="The arguments as a JSON object, serialized (OpenAI's shape).")

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError("arguments must be a JSON object serialized as a string") from None
        if not isinstance(parsed, dict):
            raise ValueError("arguments must be a JSON object serialized as a string")
        return value


class ToolCall(_Wire):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, min_length=1)
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)

    @field_validator("content")
    @classmethod
    def _unicode_content(cls, value: Any) -> Any:
        return _valid_unicode(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _role_fields(self) -> "ChatMessage":
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only in an assistant message with tool_calls)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("tool messages need tool_call_id, and only they have it")
        return self


class FunctionDefinition(_Wire):
    name: str = Field(pattern=NAME_PATTERN)
    description: UnicodeText | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Wire):
    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: FunctionName


class JSONSchemaFormat(_Wire):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> "ResponseFormat":
        if (self.json_schema is not None) != (self.type == "json_schema"):
            raise ValueError('json_schema is required with type "json_schema", and only there')
        return self


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatCompletionRequest(_Wire):
    """The subset of OpenAI's request that Pixtral serving supports; anything else is a 400."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[UnicodeText] = Field(default_factory=list)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, description="A 64-bit integer, as OpenAI's.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, description="Choices to generate; the cap is chat_fields.max_n.")
    user: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, description="The cap is chat_fields.max_top_logprobs.")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension: -1 or 0 = all tokens.")
    min_p: float = Field(0.0, ge=0, le=1, description="vLLM extension.")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="vLLM extension.")
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS (benchmarks).")
    return_token_ids: bool = Field(
        False, description="vLLM extension: add prompt_token_ids to the response and token_ids to the choice."
    )

    @model_validator(mode="after")
    def _consistent_fields(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise InvalidRequestError("tools have duplicate function names", param="tools")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not names:
            raise InvalidRequestError(f"tool_choice {self.tool_choice_mode()!r} needs tools", param="tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
            )
        structured = self.response_format is not None and self.response_format.type != "text"
        if structured and self.tool_choice_mode() == "auto":
            # One grammar per generation: the answer cannot be both free to call a tool and held to a schema.
            raise InvalidRequestError(
                "response_format json_object/json_schema together with tools needs tool_choice "
                '"none", "required" or a named function (tool_choice "auto" is not supported with it)',
                param="response_format",
            )
        return self

    def tool_choice_mode(self) -> str:
        """none | auto | required | function (a named one); OpenAI's default is auto with tools."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return "function"
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice

    def check_limits(self, limits: "ChatFieldsConfig", *, max_tokens_limit: int) -> None:
        """The server's caps on ``max_tokens``, ``n``, ``top_logprobs`` and JSON schemas (400 naming
        the field). Whether ``max_tokens`` fits beside the prompt is the LLM replica's to say."""
        requested, param = self.requested_max_tokens()
        if requested is not None and requested > max_tokens_limit:
            raise InvalidRequestError(
                f"{param}={requested} is more than this server allows per request ({max_tokens_limit})",
                param=param,
                code="max_tokens_too_large",
            )
        if self.n > limits.max_n:
            raise InvalidRequestError(f"n={self.n} is more than this server allows ({limits.max_n})", param="n")
        if self.top_logprobs is not None and self.top_logprobs > limits.max_top_logprobs:
            raise InvalidRequestError(
                f"top_logprobs={self.top_logprobs} is more than this server allows ({limits.max_top_logprobs})",
                param="top_logprobs",
            )
        if self.response_format is not None and self.response_format.json_schema is not None:
            check_json_schema(self.response_format.json_schema.json_schema, limits, param="response_format")
        for i, tool in enumerate(self.tools or []):
            if tool.function.parameters is not None:
                check_json_schema(tool.function.parameters, limits, param=f"tools[{i}].function.parameters")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if isinstance(stops, list) and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """(the output cap the client asked for, the field it came in)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def image_urls(self) -> list[tuple[str, str]]:
        """(url, param path) of every image part, in message order."""
        found = []
        for i, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if isinstance(part, ImageURLPart):
                        found.append((part.image_url.url, f"messages[{i}].content[{j}].image_url.url"))
        return found

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as plain dicts with image URLs dropped (the pool already has them)."""
        plain = []
        for message in self.messages:
            if message.content is None or isinstance(message.content, str):
                content: Any = message.content
            else:
                content = [
                    {"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image_url"}
                    for part in message.content
                ]
            entry: dict[str, Any] = {"role": message.role, "content": content}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
                    for call in message.tool_calls
                ]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            plain.append(entry)
        return plain

    def plain_tools(self) -> list[dict[str, Any]]:
        """The tools the prompt offers (none with tool_choice "none"), as plain dicts."""
        if self.tool_choice_mode() == "none":
            return []
        return [
            {
                "name": tool.function.name,
                "description": tool.function.description or "",
                "parameters": tool.function.parameters or {"type": "object", "properties": {}},
            }
            for tool in self.tools or []
        ]

    def settings(self) -> RequestSettings:
        """What the LLM replica needs of this request besides its messages and images. A forced
        tool call holds the output to its own grammar (the LLM replica builds it), so
        ``response_format`` counts only without one."""
        forced = None
        json_schema, json_object = None, False
        if self.tool_choice_mode() in ("required", "function"):
            named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
            forced = ForcedToolCall(named=named, parallel=self.parallel_tool_calls)
        elif self.response_format is not None and self.response_format.json_schema is not None:
            json_schema = self.response_format.json_schema.json_schema
        elif self.response_format is not None:
            json_object = self.response_format.type == "json_object"
        sampling = SamplingSettings(
            max_tokens=self.requested_max_tokens()[0],
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            seed=self.seed,
            ignore_eos=self.ignore_eos,
            n=self.n,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            top_k=self.top_k,
            min_p=self.min_p,
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            json_schema=json_schema,
            json_object=json_object,
        )
        return RequestSettings(sampling=sampling, tools=self.plain_tools(), forced_call=forced)


def check_json_schema(schema: dict[str, Any], limits: "ChatFieldsConfig", *, param: str) -> None:
    """A JSON schema within the server's size and depth caps that jsonschema accepts as a schema,
    or InvalidRequestError naming ``param`` (the engine compiles a grammar from it)."""
    import jsonschema

    size = len(json.dumps(schema, separators=(",", ":")))
    if size > limits.max_schema_bytes:
        raise InvalidRequestError(
            f"the JSON schema is {size} bytes; this server takes at most {limits.max_schema_bytes}",
            param=param,
            code="schema_too_large",
        )
    depth = _nesting_depth(schema)
    if depth > limits.max_schema_depth:
        raise InvalidRequestError(
            f"the JSON schema nests {depth} levels deep; this server takes at most {limits.max_schema_depth}",
            param=param,
            code="schema_too_large",
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(f"invalid JSON schema: {exc.message}", param=param, code="invalid_schema") from None


def _nesting_depth(value: Any) -> int:
    """Levels of objects and lists in ``value``, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """JSON bytes to a validated request, or InvalidRequestError naming what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError as exc:  # bad JSON or UTF-8, and integers past Python's 4300-digit limit
        raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise InvalidRequestError("request body is nested too deeply", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise as_service_error(exc) from exc


async def parse_chat_request_off_loop(body: bytes, *, off_loop_above: int) -> ChatCompletionRequest:
    """``parse_chat_request``, in a worker thread for bodies over ``off_loop_above`` bytes.

    Parsing and validating megabytes of JSON takes long enough to stall every
    other request on the ingress event loop; small bodies are cheaper inline.
    """
    if len(body) > off_loop_above:
        return await asyncio.to_thread(parse_chat_request, body)
    return parse_chat_request(body)
