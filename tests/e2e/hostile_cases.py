"""Generated hostile requests: bodies, encodings, images and image hosts that try to break the server.

Each case says what a clear answer is (the statuses allowed); the test sends them all
while good requests keep flowing. The image host is a loopback server whose paths
misbehave on purpose (``HostileImageHandler``).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np
from PIL import Image

from chat_payloads import jpeg_bytes

CLIENT = frozenset({400, 413, 422})
IMAGE_BAD = frozenset({400, 413})
UPSTREAM = frozenset({502, 504})


@dataclass
class Case:
    category: str
    name: str
    allowed: frozenset[int]
    body: Any = None  # a JSON-able object, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    codes: frozenset[str] | None = None  # the error codes allowed, when the status is not enough


def _image(mode: str, size: tuple[int, int], fmt: str, **save) -> bytes:
    rng = np.random.default_rng(size[0] * 7 + size[1])
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    if image.mode != mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _palette_png() -> bytes:
    image = Image.open(io.BytesIO(_image("RGB", (64, 64), "PNG"))).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side zeros: tens of KiB that decode to side^2 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_lying_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a tiny image's data."""
    small = _image("RGB", (8, 8), "PNG")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return small[:8] + _png_chunk(b"IHDR", header) + small[8 + 25:]


def jpeg_lying_size(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 marker claims width x height."""
    data = bytearray(jpeg_bytes(5, (64, 48)))
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def data_url(payload: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


GOOD_JPEG = jpeg_bytes(42, (64, 48))


def chat(model: str, *content: Any, **fields: Any) -> dict:
    parts = [{"type": "text", "text": "Describe."}, *content]
    return {"model": model, "messages": [{"role": "user", "content": parts}], "max_tokens": 1, **fields}


def image_part(url: Any) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def body_cases(model: str) -> list[Case]:
    cases = []
    base = chat(model, image_part(data_url(GOOD_JPEG)))
    bad_values: dict[str, list[Any]] = {
        "model": [123, None, [], {}, "", "x" * 10_000, True, "tiny-pixtral "],
        "messages": [
            None, "hi", {}, [], [1], [None], [[]], [{"role": "user"}], [{"content": "hi"}],
            [{"role": "wizard", "content": "hi"}], [{"role": "tool", "content": "hi"}],
            [{"role": "tool", "content": "hi", "tool_call_id": "x" * 1000}],
            [{"role": "assistant", "content": None}],
            [{"role": "user", "content": 5}], [{"role": "user", "content": None}],
            [{"role": "user", "content": [{"type": "video", "video": "x"}]}],
            [{"role": "user", "content": [{"type": "text"}]}],
            [{"role": "user", "content": [{"type": "text", "text": 5}]}],
            [{"role": "user", "content": [{"type": "image_url"}]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            [{"role": "user", "content": [image_part("")]}],
            [{"role": "user", "content": [image_part(5)]}],
            [{"role": "user", "content": [image_part({"url": data_url(GOOD_JPEG)})]}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x", "detail": "ultra"}}]}],
            [{"role": "user", "content": "hi", "extra": 1}],
            [{"role": "user", "content": [{"type": "text", "text": "a", "cache_control": {}}]}],
        ],
        "max_tokens": [0, -1, "ten", 2.5, 10**12, [], {}, 2**64],
        "max_completion_tokens": [0, -5, "x"],
        "temperature": [-0.1, 2.1, "hot", [], None, 1e308 * 10],
        "top_p": [0, 1.5, -1, "x", None],
        "stop": [5, [1], ["a", "b", "c", "d", "e"], [""], [[]], {"a": 1}],
        "seed": ["x", 1.5, [], 2**70, -(2**70)],
        "n": [0, -1, "two", 100, 2.5],
        "stream": [2, [], {}, "maybe"],  # pydantic's lax bool takes "yes"/"on" as true, like many APIs
        "stream_options": ["x", {"include_usage": "maybe"}, {"other": 1}, 5],
        "ignore_eos": ["x", [], 3],
        "return_token_ids": ["x", {}],
        "user": [5, [], {}],
        "logit_bias": [{"1": 100}],
        "functions": [[{"name": "f"}]],
        "tools": [5, [5], [{"type": "function"}], [{"type": "retrieval", "function": {"name": "f"}}]],
        "tool_choice": ["always", 5, {"type": "function"}, {"type": "function", "function": {"name": "missing"}}],
        "response_format": ["json", {"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": []}],
        "logprobs": ["x", []],
        "top_logprobs": [-1, 21, 10**9],
        "frequency_penalty": [2.5, "x"],
        "presence_penalty": [-2.5],
        "top_k": [-5, "x"],
        "min_p": [2, -0.1],
        "repetition_penalty": [0, -1, 100],
    }
    for name, values in bad_values.items():
        for i, value in enumerate(values):
            cases.append(Case("body: wrong types/ranges", f"{name}-{i}", CLIENT, {**base, name: value}))
    return cases


def size_and_nesting_cases(model: str, request_limit: int) -> list[Case]:
    words = "word " * 10_000
    deep_content = json.dumps(chat(model)).replace('"Describe."', "[" * 5000 + '"x"' + "]" * 5000).encode()
    raw_deep = ("[" * 100_000 + "]" * 100_000).encode()
    raw_deep_obj = ('{"a":' * 50_000 + "1" + "}" * 50_000).encode()
    return [
        Case("body: sizes/nesting", "text-past-context", CLIENT, chat(model, {"type": "text", "text": words})),
        Case("body: sizes/nesting", "body-past-limit", CLIENT, chat(model, {"type": "text", "text": "a" * request_limit})),
        Case("body: sizes/nesting", "5000-messages", CLIENT,
             {"model": model, "messages": [{"role": "user", "content": "hi"}] * 5000, "max_tokens": 1}),
        Case("body: sizes/nesting", "3000-text-parts", CLIENT, chat(model, *([{"type": "text", "text": "hi "}] * 3000))),
        Case("body: sizes/nesting", "3-images", CLIENT, chat(model, *[image_part(data_url(GOOD_JPEG))] * 3)),
        Case("body: sizes/nesting", "200-images", CLIENT, chat(model, *[image_part("https://example.com/a.jpg")] * 200)),
        Case("body: sizes/nesting", "deep-list-in-content", CLIENT, deep_content),
        Case("body: sizes/nesting", "deep-raw-list", CLIENT, raw_deep),
        Case("body: sizes/nesting", "deep-raw-object", CLIENT, raw_deep_obj),
        Case("body: sizes/nesting", "deep-object-in-field", CLIENT,
             json.dumps({**chat(model), "user": "u"}).replace('"u"', '{"a":' * 3000 + "1" + "}" * 3000).encode()),
        Case("body: sizes/nesting", "huge-stop-strings", frozenset({200, 400}), chat(model, stop=["z" * 100_000] * 4)),
        Case("body: sizes/nesting", "long-model-name", CLIENT, {**chat(model), "model": "m" * 1_000_000}),
        Case("body: sizes/nesting", "huge-number", CLIENT, json.dumps(chat(model)).replace('"max_tokens": 1', '"max_tokens": ' + "9" * 5000).encode()),
    ]


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string", "maxLength": 4}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _json_schema(model: str, schema: Any, name: str = "out") -> dict:
    return chat(model, response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
                max_tokens=16)


def _tools(model: str, names: list[str], **fields: Any) -> dict:
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
             for n in names]
    return chat(model, tools=tools, max_tokens=4, **fields)


def _tool_turn(model: str, call_id: Any, result_id: Any, name: str = "f") -> dict:
    return {
        "model": model, "max_tokens": 2,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": result_id, "content": "done"},
        ],
    }


def schema_and_tool_cases(model: str) -> list[Case]:
    """JSON schemas the engine would compile a grammar from, and tool names and ids that are not
    what Mistral's format allows (client ids of any shape are mapped; names are not)."""
    cat = "body: schemas/tools"
    recursive = {"$defs": {"node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"},
                 {"type": "null"}]}}, "required": ["next"]}}, "$ref": "#/$defs/node"}
    self_ref = {"$ref": "#"}
    wide = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(5000)}}
    huge_enum = {"enum": ["x" * 50 + str(i) for i in range(2000)]}
    either = frozenset({200, 400})
    return [
        Case(cat, "schema-recursive-ref", either, _json_schema(model, recursive)),
        Case(cat, "schema-self-ref", CLIENT, _json_schema(model, self_ref)),
        Case(cat, "schema-dangling-ref", CLIENT | {200}, _json_schema(model, {"$ref": "#/$defs/missing"})),
        Case(cat, "schema-5000-properties", CLIENT, _json_schema(model, wide)),
        Case(cat, "schema-huge-enum", CLIENT, _json_schema(model, huge_enum)),
        Case(cat, "schema-nested-200", CLIENT, _json_schema(model, _nested(200))),
        Case(cat, "schema-invalid-type", CLIENT, _json_schema(model, {"type": "nonsense"})),
        Case(cat, "schema-type-number", CLIENT, _json_schema(model, {"type": 5})),
        Case(cat, "schema-not-object", CLIENT, _json_schema(model, ["type", "object"])),
        Case(cat, "schema-bad-pattern", CLIENT | {200}, _json_schema(model, {"type": "string", "pattern": "(["})),
        Case(cat, "schema-min-above-max", either, _json_schema(model, {"type": "integer", "minimum": 5, "maximum": 1})),
        Case(cat, "schema-impossible", either, _json_schema(model, {"not": {}})),
        Case(cat, "schema-name-spaces", CLIENT, _json_schema(model, {"type": "object"}, name="my schema")),
        Case(cat, "schema-name-long", CLIENT, _json_schema(model, {"type": "object"}, name="n" * 65)),
        Case(cat, "tool-name-spaces", CLIENT, _tools(model, ["get weather"])),
        Case(cat, "tool-name-unicode", CLIENT, _tools(model, ["wetter\u00e4"])),
        Case(cat, "tool-name-65-chars", CLIENT, _tools(model, ["f" * 65])),
        Case(cat, "tool-name-empty", CLIENT, _tools(model, [""])),
        Case(cat, "tool-names-duplicate", CLIENT, _tools(model, ["f", "f"])),
        Case(cat, "tool-params-invalid-schema", CLIENT, chat(model, max_tokens=2, tools=[
            {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}])),
        Case(cat, "tools-300", either, _tools(model, [f"f{i}" for i in range(300)])),
        Case(cat, "tool-choice-required-recursive", either, chat(model, max_tokens=16, tool_choice="required", tools=[
            {"type": "function", "function": {"name": "f", "parameters": recursive}}])),
        Case(cat, "tool-id-openai-shape", frozenset({200}), _tool_turn(model, "call_abc123", "call_abc123")),
        Case(cat, "tool-id-unicode", frozenset({200}), _tool_turn(model, "\u00e9\u00e9\u00e9", "\u00e9\u00e9\u00e9")),
        Case(cat, "tool-id-1000-chars", CLIENT, _tool_turn(model, "i" * 1000, "i" * 1000)),
        Case(cat, "tool-id-empty", CLIENT, _tool_turn(model, "", "")),
        Case(cat, "tool-id-number", CLIENT, _tool_turn(model, 123456789, 123456789)),
        Case(cat, "tool-result-unknown-id", either, _tool_turn(model, "call_a", "call_b")),
        Case(cat, "tool-call-bad-name", CLIENT, _tool_turn(model, "call_a", "call_a", name="no spaces")),
        Case(cat, "tool-call-args-not-json", CLIENT, {**_tool_turn(model, "call_a", "call_a"), "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
    ]


def encoding_cases(model: str) -> list[Case]:
    good = json.dumps(chat(model, image_part(data_url(GOOD_JPEG))))
    ok = frozenset({200})
    either = frozenset({200}) | CLIENT
    return [
        Case("body: encodings", "invalid-utf8", CLIENT, good.encode()[:40] + b"\xff\xfe\xfa" + good.encode()[40:]),
        Case("body: encodings", "utf16-json", either, good.encode("utf-16")),
        Case("body: encodings", "utf8-bom", either, b"\xef\xbb\xbf" + good.encode()),
        Case("body: encodings", "empty-body", CLIENT, b""),
        Case("body: encodings", "json-null", CLIENT, b"null"),
        Case("body: encodings", "json-list", CLIENT, b"[]"),
        Case("body: encodings", "json-number", CLIENT, b"1"),
        Case("body: encodings", "json-string", CLIENT, b'"hello"'),
        Case("body: encodings", "trailing-garbage", CLIENT, good.encode() + b"}}}"),
        Case("body: encodings", "nan-temperature", CLIENT, good.replace('"max_tokens": 1', '"max_tokens": 1, "temperature": NaN').encode()),
        Case("body: encodings", "nan-max-tokens", CLIENT, good.replace('"max_tokens": 1', '"max_tokens": NaN').encode()),
        Case("body: encodings", "lone-surrogate-text", either, good.replace("Describe.", "\\ud800\\udfff\\ud800").encode()),
        Case("body: encodings", "nul-bytes-text", ok, good.replace("Describe.", "a\\u0000b\\u0000").encode()),
        Case("body: encodings", "emoji-flood", ok, good.replace("Describe.", "\U0001f600" * 2000).encode()),
        Case("body: encodings", "rtl-and-combining", ok, good.replace("Describe.", "\u202e\u0301" * 500).encode()),
        Case("body: encodings", "form-encoded", CLIENT, b"model=x&messages=y", {"Content-Type": "application/x-www-form-urlencoded"}),
        Case("body: encodings", "gzip-without-header", CLIENT, gzip.compress(good.encode())),
        Case("body: encodings", "gzip-with-header", frozenset({200, 400, 415}), gzip.compress(good.encode()), {"Content-Encoding": "gzip"}),
        Case("body: encodings", "text-plain-content-type", either, good.encode(), {"Content-Type": "text/plain"}),
        Case("body: encodings", "duplicate-keys", either, good.replace('"max_tokens": 1', '"max_tokens": 1, "max_tokens": 2').encode()),
        Case("body: encodings", "latin1-body", CLIENT, good.replace("Describe.", "caf\u00e9").encode("latin-1")),
        Case("body: encodings", "base64-body", CLIENT, base64.b64encode(good.encode())),
    ]


def image_format_cases(model: str) -> list[Case]:
    ok = frozenset({200})
    maybe = frozenset({200}) | IMAGE_BAD

    def case(name: str, payload: bytes, allowed: frozenset[int], mime: str = "image/png") -> Case:
        return Case("images: formats/bombs/lies", name, allowed, chat(model, image_part(data_url(payload, mime))))

    truncated_png = _image("RGB", (200, 150), "PNG")
    return [
        case("png-rgb", _image("RGB", (120, 90), "PNG"), ok),
        case("png-rgba", _image("RGBA", (120, 90), "PNG"), ok),
        case("png-grey", _image("L", (120, 90), "PNG"), ok),
        case("png-palette-transparent", _palette_png(), ok),
        case("png-1x1", _image("RGB", (1, 1), "PNG"), maybe),
        case("png-1x4000", _image("RGB", (1, 4000), "PNG"), maybe),
        case("png-4000x1", _image("RGB", (4000, 1), "PNG"), maybe),
        case("gif", _image("RGB", (64, 64), "GIF"), ok, "image/gif"),
        case("gif-animated", animated_gif(), maybe, "image/gif"),
        case("webp", _image("RGB", (64, 64), "WEBP"), ok, "image/webp"),
        case("bmp", _image("RGB", (64, 64), "BMP"), maybe, "image/bmp"),
        case("tiff", _image("RGB", (64, 64), "TIFF"), maybe, "image/tiff"),
        case("ico", _image("RGB", (32, 32), "ICO"), maybe, "image/x-icon"),
        case("jpeg-grey", _image("L", (64, 64), "JPEG"), ok, "image/jpeg"),
        case("jpeg-cmyk", _image("CMYK", (64, 64), "JPEG"), ok, "image/jpeg"),
        case("jpeg-progressive", _image("RGB", (64, 64), "JPEG", progressive=True), ok, "image/jpeg"),
        case("png-labelled-jpeg", _image("RGB", (64, 64), "PNG"), ok, "image/jpeg"),
        case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', IMAGE_BAD, "image/svg+xml"),
        case("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", IMAGE_BAD, "application/pdf"),
        case("zero-bytes", b"", IMAGE_BAD),
        case("random-bytes", bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8)), IMAGE_BAD),
        case("text-bytes", b"hello, I am not an image" * 10, IMAGE_BAD, "text/plain"),
        case("jpeg-truncated-half", GOOD_JPEG[: len(GOOD_JPEG) // 2], IMAGE_BAD, "image/jpeg"),
        case("jpeg-header-only", GOOD_JPEG[:200], IMAGE_BAD, "image/jpeg"),
        case("png-truncated", truncated_png[: len(truncated_png) // 2], IMAGE_BAD),
        case("png-bomb-64mpx", png_bomb(8000), IMAGE_BAD),
        case("png-header-claims-100000x100000", png_lying_header(100_000, 100_000), IMAGE_BAD),
        case("png-header-claims-0x0", png_lying_header(0, 0), IMAGE_BAD),
        case("jpeg-sof-claims-65000x65000", jpeg_lying_size(65000, 65000), IMAGE_BAD, "image/jpeg"),
        case("jpeg-sof-claims-1x1", jpeg_lying_size(1, 1), maybe, "image/jpeg"),
        Case("images: formats/bombs/lies", "data-url-no-base64", IMAGE_BAD, chat(model, image_part("data:image/png,notbase64"))),
        Case("images: formats/bombs/lies", "data-url-bad-padding", IMAGE_BAD, chat(model, image_part("data:image/png;base64,iVBORw0KGgo="))),
        Case("images: formats/bombs/lies", "data-url-text-mime", IMAGE_BAD,
             chat(model, image_part("data:text/plain;base64," + base64.b64encode(b"hello").decode()))),
        Case("images: formats/bombs/lies", "data-url-no-comma", IMAGE_BAD, chat(model, image_part("data:image/png;base64"))),
        Case("images: formats/bombs/lies", "data-url-whitespace", maybe,
             chat(model, image_part(data_url(GOOD_JPEG).replace("A", "A\n", 3)))),
    ]


def host_cases(model: str, host: str) -> list[Case]:
    """``host`` is the hostile loopback server's base URL (http://127.0.0.1:port)."""

    def case(name: str, url: str, allowed: frozenset[int]) -> Case:
        return Case("hosts: statuses/slow/redirects", name, allowed, chat(model, image_part(url)))

    port = host.rsplit(":", 1)[1]
    return [
        case("ok-jpeg", f"{host}/ok.jpg", frozenset({200})),
        case("404", f"{host}/status/404", frozenset({400})),
        case("410", f"{host}/status/410", frozenset({400})),
        case("401", f"{host}/status/401", frozenset({403})),
        case("403", f"{host}/status/403", frozenset({403})),
        case("418", f"{host}/status/418", frozenset({400})),
        case("429", f"{host}/status/429", UPSTREAM),
        case("500", f"{host}/status/500", UPSTREAM),
        case("502", f"{host}/status/502", UPSTREAM),
        case("503", f"{host}/status/503", UPSTREAM),
        case("never-answers", f"{host}/hang", frozenset({504})),
        case("headers-then-silence", f"{host}/stall-body", frozenset({504})),
        case("drips-one-byte-a-second", f"{host}/drip", frozenset({504})),
        case("redirect-loop", f"{host}/loop", frozenset({400})),
        case("redirect-chain-2", f"{host}/chain/2", frozenset({200})),
        case("redirect-chain-9", f"{host}/chain/9", frozenset({400})),
        case("redirect-to-404", f"{host}/redirect?to=/status/404", frozenset({400})),
        case("redirect-to-file", f"{host}/redirect?to=file:///etc/passwd", frozenset({400})),
        case("redirect-to-ftp", f"{host}/redirect?to=ftp://example.com/a.jpg", frozenset({400})),
        case("redirect-without-location", f"{host}/redirect-bare", UPSTREAM),
        case("content-length-overstated", f"{host}/lie/long", frozenset({400}) | UPSTREAM),
        case("content-length-understated", f"{host}/lie/short", IMAGE_BAD),
        case("content-length-100mb", f"{host}/lie/huge", frozenset({413})),
        case("chunked-25mb", f"{host}/chunked-big", frozenset({413})),
        case("jpeg-as-text-html", f"{host}/as-html.jpg", frozenset({200})),
        case("html-page", f"{host}/page.html", IMAGE_BAD),
        case("empty-200", f"{host}/empty", IMAGE_BAD),
        case("closes-at-once", f"{host}/close", UPSTREAM),
        case("bomb-from-host", f"{host}/bomb.png", IMAGE_BAD),
        case("truncated-from-host", f"{host}/truncated.jpg", IMAGE_BAD),
        case("port-closed", f"http://127.0.0.1:{int(port) + 1 if int(port) < 65535 else 1}/a.jpg", UPSTREAM),
        case("unresolvable-host", "http://does-not-exist.invalid/a.jpg", frozenset({400}) | UPSTREAM),
        case("no-host", "http:///a.jpg", frozenset({400})),
        case("malformed-ipv6", "http://[::1/a.jpg", frozenset({400})),
        case("userinfo", f"http://user:pass@127.0.0.1:{port}/ok.jpg", frozenset({200, 400})),
        case("10k-url", f"{host}/" + "a" * 10_000, frozenset({400}) | UPSTREAM),
        case("javascript-url", "javascript:alert(1)", frozenset({400})),
        case("relative-url", "/etc/passwd", frozenset({400})),
        # bodies sent encoded although the pool asks for identity: decoded against the cap
        case("gzip-jpeg-sent-anyway", f"{host}/gzip.jpg", frozenset({200})),
        case("gzip-bomb-64mb", f"{host}/gzip-bomb", frozenset({413})),
        case("gzip-cut-short", f"{host}/gzip-cut", frozenset({502})),
        case("brotli-unsupported", f"{host}/br.jpg", frozenset({502})),
    ]


def s3_cases(model: str) -> list[Case]:
    """S3 URLs whose key or bucket a path-style endpoint or a normalising proxy could resolve into
    another bucket's object: refused as malformed (not "not found") before any S3 request."""

    def case(name: str, url: str) -> Case:
        return Case("images: s3 URL shapes", name, frozenset({400}), chat(model, image_part(url)),
                    codes=frozenset({"unsupported_image_url"}))

    return [
        case("one-slash", "s3:/pixtral-images/cat.jpg"),
        case("no-slash", "s3:pixtral-images/cat.jpg"),
        case("three-slashes", "s3:///pixtral-images/cat.jpg"),
        case("no-key", "s3://pixtral-images"),
        case("empty-key", "s3://pixtral-images/"),
        case("dot-dot-segment", "s3://pixtral-images/../other/cat.jpg"),
        case("deep-dot-dot", "s3://pixtral-images/a/../../other/cat.jpg"),
        case("dot-segment", "s3://pixtral-images/./cat.jpg"),
        case("empty-segment", "s3://pixtral-images//cat.jpg"),
        case("trailing-slash", "s3://pixtral-images/photos/"),
        case("newline-in-key", "s3://pixtral-images/cat.jpg\nx"),
        case("nul-in-key", "s3://pixtral-images/cat\x00.jpg"),
        case("uppercase-bucket", "s3://Pixtral-Images/cat.jpg"),
        case("underscore-bucket", "s3://pixtral_images/cat.jpg"),
        case("two-char-bucket", "s3://ab/cat.jpg"),
        case("ip-bucket", "s3://10.0.0.5/cat.jpg"),
        case("adjacent-dots-bucket", "s3://pixtral..images/cat.jpg"),
        case("userinfo-bucket", "s3://user:pw@pixtral-images/cat.jpg"),
        case("port-bucket", "s3://pixtral-images:9000/cat.jpg"),
        case("key-over-1024-bytes", "s3://pixtral-images/" + "k" * 1025),
    ]


def role_cases(model: str) -> list[Case]:
    jpeg = image_part(data_url(GOOD_JPEG))

    def case(name: str, messages: list, allowed: frozenset[int] = frozenset({200, 400})) -> Case:
        return Case("body: conversation shapes", name, allowed, {"model": model, "messages": messages, "max_tokens": 1})

    return [
        case("system-only", [{"role": "system", "content": "be brief"}]),
        case("assistant-last", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        case("assistant-first", [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]),
        case("image-in-system", [{"role": "system", "content": [jpeg]}, {"role": "user", "content": "hi"}]),
        case("image-in-assistant", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [jpeg]},
                                    {"role": "user", "content": "and?"}]),
        case("two-systems", [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                             {"role": "user", "content": "hi"}]),
        case("empty-text", [{"role": "user", "content": ""}]),
        case("empty-parts", [{"role": "user", "content": []}]),
        case("image-only", [{"role": "user", "content": [jpeg]}], frozenset({200})),
        case("many-turns", [{"role": r, "content": "x"} for r in ["user", "assistant"] * 50 + ["user"]]),
        case("consecutive-users", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]),
    ]


def all_cases(model: str, host: str, request_limit: int) -> list[Case]:
    return [
        *body_cases(model),
        *size_and_nesting_cases(model, request_limit),
        *schema_and_tool_cases(model),
        *encoding_cases(model),
        *role_cases(model),
        *image_format_cases(model),
        *host_cases(model, host),
        *s3_cases(model),
    ]


class HostileImageHandler(BaseHTTPRequestHandler):
    """Paths that misbehave the way real image hosts do."""

    protocol_version = "HTTP/1.1"
    stall_s = 40.0  # longer than the pool's total fetch timeout

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/jpeg", length: int | None = None, **extra):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in extra.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802, C901 - one branch per misbehaviour
        path, _, query = self.path.partition("?")
        if path == "/ok.jpg":
            return self._send(200, GOOD_JPEG)
        if path.startswith("/status/"):
            return self._send(int(path.rsplit("/", 1)[1]), b"nope", "text/plain")
        if path == "/hang":
            time.sleep(self.stall_s)
            return None
        if path == "/stall-body":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(GOOD_JPEG)))
            self.end_headers()
            self.wfile.write(GOOD_JPEG[:100])
            self.wfile.flush()
            time.sleep(self.stall_s)
            return None
        if path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(GOOD_JPEG)))
            self.end_headers()
            for byte in GOOD_JPEG[:40]:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return None
                time.sleep(1)
            return None
        if path == "/loop":
            return self._send(302, b"", "text/plain", Location="/loop")
        if path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            target = "/ok.jpg" if left <= 0 else f"/chain/{left - 1}"
            return self._send(302, b"", "text/plain", Location=target)
        if path == "/redirect":
            return self._send(302, b"", "text/plain", Location=query.split("to=", 1)[1])
        if path == "/redirect-bare":
            return self._send(302, b"", "text/plain")
        if path == "/lie/long":
            self._send(200, GOOD_JPEG[:500], length=len(GOOD_JPEG) * 4)
            self.close_connection = True
            return None
        if path == "/lie/short":
            return self._send(200, GOOD_JPEG, length=300)
        if path == "/lie/huge":
            self._send(200, GOOD_JPEG[:100], length=100 * 1024 * 1024)
            self.close_connection = True
            return None
        if path == "/chunked-big":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            piece = b"\xff" * (1024 * 1024)
            try:
                for _ in range(25):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return None
        if path == "/as-html.jpg":
            return self._send(200, GOOD_JPEG, "text/html")
        if path == "/page.html":
            return self._send(200, b"<html><body>not an image</body></html>", "text/html")
        if path == "/empty":
            return self._send(200, b"")
        if path == "/close":
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        if path == "/bomb.png":
            return self._send(200, BOMB, "image/png")
        if path == "/truncated.jpg":
            return self._send(200, GOOD_JPEG[: len(GOOD_JPEG) // 3])
        if path == "/gzip.jpg":
            return self._send(200, gzip.compress(GOOD_JPEG), Content_Encoding="gzip")
        if path == "/gzip-bomb":
            return self._send(200, GZIP_BOMB, Content_Encoding="gzip")
        if path == "/gzip-cut":
            return self._send(200, gzip.compress(GOOD_JPEG)[:-20], Content_Encoding="gzip")
        if path == "/br.jpg":
            return self._send(200, b"\x0b\x00\x80", Content_Encoding="br")
        return self._send(404, b"missing", "text/plain")


BOMB = png_bomb(8000)
GZIP_BOMB = gzip.compress(b"\0" * (64 * 1024 * 1024), 9)  # ~64 KiB on the wire, 64 MiB inflated
