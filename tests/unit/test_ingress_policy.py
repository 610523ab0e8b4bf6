"""Ingress rules that need no Ray: who must bring a key, and parsing big bodies off the event loop."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import types
from pathlib import Path

import pytest

from serve_app.api.models import parse_chat_request_off_loop
from serve_app.config import ImagePoolConfig, IngressConfig
from serve_app.deployments.image_pool import PixelPassing
from serve_app.deployments.ingress import keys_required
from serve_app.errors import InvalidRequestError

KEYS = frozenset({"k1"})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_default_mode_serves_without_keys_only_on_loopback(host):
    assert keys_required(IngressConfig(), frozenset(), host) is False


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "pixtral.internal"])
def test_default_mode_refuses_to_start_open_on_a_reachable_listener(host):
    with pytest.raises(RuntimeError, match="refusing to serve without API keys") as info:
        keys_required(IngressConfig(), frozenset(), host)
    assert "PIXTRAL_SERVE_API_KEYS" in str(info.value) and "auth: disabled" in str(info.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_keys_are_checked_whenever_configured(host):
    assert keys_required(IngressConfig(), KEYS, host) is True
    assert keys_required(IngressConfig(auth="required"), KEYS, host) is True


def test_required_mode_refuses_an_empty_key_list_even_on_loopback(monkeypatch):
    monkeypatch.setenv("PIXTRAL_SERVE_API_KEYS", " , ")  # a Secret with an empty value
    settings = IngressConfig(auth="required")
    with pytest.raises(RuntimeError, match="no API key is configured"):
        keys_required(settings, settings.resolved_api_keys(), "127.0.0.1")


def test_disabled_mode_is_open_everywhere_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="serve_app.deployments.ingress"):
        assert keys_required(IngressConfig(auth="disabled"), KEYS, "0.0.0.0") is False
    assert "auth is disabled" in caplog.text


def chat_body(parts: int) -> bytes:
    content = [{"type": "text", "text": f"part {i}"} for i in range(parts)]
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}]}).encode()


def loop_turns_while_parsing(body: bytes, off_loop_above: int) -> tuple[int, int]:
    """(event-loop turns other coroutines got while the body was parsed, parts parsed)."""

    async def main() -> tuple[int, int]:
        turns = 0
        done = asyncio.Event()

        async def other_requests() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(other_requests())
        await asyncio.sleep(0)
        before = turns
        chat = await parse_chat_request_off_loop(body, off_loop_above=off_loop_above)
        during = turns - before
        done.set()
        await ticker
        return during, len(chat.messages[0].content)

    return asyncio.run(main())


def test_big_bodies_are_parsed_off_the_event_loop():
    body = chat_body(100_000)  # ~3 MiB, a few hundred ms of parsing and validation
    during, parts = loop_turns_while_parsing(body, off_loop_above=len(body) - 1)
    assert parts == 100_000
    assert during > 0  # other requests kept being served meanwhile


def test_small_bodies_are_parsed_inline():
    body = chat_body(10)
    during, parts = loop_turns_while_parsing(body, off_loop_above=len(body))
    assert parts == 10
    assert during == 0


def test_off_loop_parse_keeps_the_typed_errors():
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(parse_chat_request_off_loop(b"{not json" + b" " * 100, off_loop_above=10))
    assert info.value.code == "invalid_json"
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(parse_chat_request_off_loop(json.dumps({"model": "m", "messages": [], "pad": "x" * 100}).encode(),
                                                off_loop_above=10))
    assert info.value.status_code == 400


def test_the_replica_header_is_off_unless_the_config_turns_it_on():
    from types import SimpleNamespace

    from serve_app.deployments.ingress import _replica_header

    first = SimpleNamespace(replica="PixtralServer#abc123")
    assert IngressConfig().replica_header is False
    assert _replica_header(first, IngressConfig().replica_header) == {}
    assert _replica_header(first, True) == {"X-Pixtral-Replica": "PixtralServer#abc123"}
    assert _replica_header(SimpleNamespace(replica=None), True) == {}


def test_pixels_lost_before_the_llm_read_them_are_sent_again_by_value():
    """The ingress's one retry after 503 images_lost asks the pool for the pixels themselves
    (bench/results/2026-12-06-h100-fractional.md: records of handed-on requests were freed)."""
    import yaml

    from serve_app.api.models import parse_chat_request
    from serve_app.config import AppConfig
    from serve_app.deployments.ingress import OpenAIIngress
    from serve_app.errors import ImagesLostError

    class Call:
        def __init__(self, result):
            self.result = result

        def __await__(self):
            return asyncio.sleep(0, self.result).__await__()

        def cancel(self):
            pass

    class Pool:
        def __init__(self):
            self.asked = []
            self.prepare = self

        def remote(self, url, request_id, by_value):
            self.asked.append(by_value)
            return Call(("pixels" if by_value else "record", url))

    answered = []

    async def answer(request_id, chat, images, clock):
        answered.append(images)
        if len(answered) == 1:
            raise ImagesLostError("the image pool replica that prepared this request's images is gone")
        return "answer"

    url = "data:image/png;base64,AAAA"
    chat = parse_chat_request(json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}]}]}).encode())

    async def parse(request, hold, clock):
        return chat

    # The deployment's own methods on a stand-in self (an instance of Serve's ASGI wrapper would
    # leave its async __del__ unawaited).
    cls = OpenAIIngress.func_or_class
    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.cpu.yaml").read_text())
    args = config["applications"][0]["args"]

    def ingress_with(**image_pool):
        settings = AppConfig.model_validate({**args, "image_pool": {**args.get("image_pool", {}), **image_pool}})
        ingress = types.SimpleNamespace(_config=settings, _pool=Pool(), _pool_by_value=Pool(), _answer=answer,
                                        _parse=parse, _pixels=PixelPassing(settings.image_pool))
        ingress._prepare_images = functools.partial(cls._prepare_images, ingress)
        return ingress

    # By reference (as under load: here by value up to 0 requests), then the retry by value.
    ingress = ingress_with(pixels_by_value_up_to=0)
    assert asyncio.run(cls._complete(ingress, None, "req-1", None, StageClockStub())) == "answer"
    assert ingress._pool.asked == [False] and ingress._pool_by_value.asked == [True]
    assert answered == [[("record", url)], [("pixels", url)]]

    # image_pool.pixels_by_reference: false, and a lone request by default: by value from the first attempt,
    # over Serve's own transport.
    for ingress in ingress_with(pixels_by_reference=False), ingress_with():
        answered[:] = [None]
        assert asyncio.run(cls._complete(ingress, None, "req-2", None, StageClockStub())) == "answer"
        assert ingress._pool.asked == [] and ingress._pool_by_value.asked == [True]
        assert answered == [None, [("pixels", url)]]


def test_pixels_go_by_value_only_while_the_replica_holds_few_requests_with_images():
    by_value_up_to_2 = PixelPassing(ImagePoolConfig(pixels_by_value_up_to=2))
    with by_value_up_to_2.request(has_images=True) as first:
        with by_value_up_to_2.request(has_images=False) as text:  # text-only requests do not count
            with by_value_up_to_2.request(has_images=True) as second:
                with by_value_up_to_2.request(has_images=True) as third:
                    assert (first, text, second, third) == (True, False, True, False)
    with by_value_up_to_2.request(has_images=True) as again:  # all three ended: a lone request again
        assert again is True
    with pytest.raises(RuntimeError):  # a request that fails still stops counting
        with by_value_up_to_2.request(has_images=True):
            raise RuntimeError
    with by_value_up_to_2.request(has_images=True) as after_failure:
        assert after_failure is True

    with PixelPassing(ImagePoolConfig(pixels_by_value_up_to=0)).request(has_images=True) as lone:
        assert lone is False
    always = PixelPassing(ImagePoolConfig(pixels_by_reference=False, pixels_by_value_up_to=0))
    with always.request(has_images=True) as a, always.request(has_images=True) as b:
        assert a is b is True


class StageClockStub:
    def mark(self, stage: str) -> None:
        pass
