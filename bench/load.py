"""The client side of every benchmark: generated images, the requests of a workload, one
HTTP client (aiohttp; streaming with TTFT at the first content delta, or not), closed-loop
clients for load over time, and the one percentile.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import multiprocessing
import os
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageDraw

PHOTO_SIZE = (4032, 3024)
USER_TEXTS = ["Describe this image in one sentence.", "What colours stand out?", "Count the shapes you see.",
              "Which part is brightest?", "Write a caption for it.", "Anything unusual?"]


def percentile(xs, p: float) -> float | None:
    """Nearest-rank percentile of the values that are not NaN, rounded to ms; None if there are none."""
    xs = sorted(x for x in xs if x == x)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 3) if xs else None


def make_image(spec: str, seed: int, fmt: str = "JPEG") -> bytes:
    """``WxH``: random background and 40 rectangles (as the wheel kit's baseline load generator
    draws them). ``photo``: 4032x3024, smooth shapes under per-pixel noise (3-5 MB as JPEG).
    ``smooth-WxH``: gradients, a red block and mild noise (the preprocessing benchmark's photo-like
    image). Quality 90 for JPEG."""
    if spec.startswith("smooth-"):
        w, h = map(int, spec[7:].split("x"))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        fx, fy = xx / w, yy / h
        arr = np.stack([128 + 100 * np.sin(6.0 * fx + 2.0 * fy), 128 + 100 * np.cos(4.0 * fy - 3.0 * fx),
                        255 * fx * fy], -1)
        arr[(fx > 0.3) & (fx < 0.5) & (fy > 0.2) & (fy < 0.6)] = (240, 30, 30)
        arr += np.random.default_rng(seed).normal(0, 2, arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    else:
        rng = random.Random(seed)
        w, h = PHOTO_SIZE if spec == "photo" else map(int, spec.split("x"))
        base = (w // 8, h // 8) if spec == "photo" else (w, h)
        img = Image.new("RGB", base, tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(40):
            x0, y0 = rng.randrange(base[0]), rng.randrange(base[1])
            x1, y1 = x0 + rng.randrange(1, base[0] // 3), y0 + rng.randrange(1, base[1] // 3)
            draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
        if spec == "photo":
            pixels = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.int16)
            noise = np.random.default_rng(seed).normal(0, 14, pixels.shape).astype(np.int16)
            img = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write(job: tuple[str, str, int]) -> None:
    path, spec, seed = job
    if not os.path.exists(path):
        Path(path + ".tmp").write_bytes(make_image(spec, seed))
        os.replace(path + ".tmp", path)


class ImageStore:
    """Data URLs of generated JPEGs, by (spec, seed); files cached under ``folder``."""

    def __init__(self, folder: Path, workers: int = 4):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.workers = workers

    def path(self, spec: str, seed: int) -> Path:
        return self.folder / f"{spec}-{seed}.jpg"

    def ensure(self, wanted: list[tuple[str, int]]) -> None:
        """Spawned workers: forked ones of a process that already runs threads hung on the GPU machine."""
        jobs = [(str(self.path(s, n)), s, n) for s, n in sorted(set(wanted)) if not self.path(s, n).exists()]
        if len(jobs) > 1 and self.workers > 1:
            with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_write, jobs, chunksize=4))
        for job in jobs:
            _write(job)

    def data_url(self, spec: str, seed: int) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.path(spec, seed).read_bytes()).decode()


@dataclass


class Conversation:
    """User turns sent one after another; ``images`` go with the first turn and are resent
    (the whole history is) with every later turn."""

    images: list[tuple[str, int]]
    turns: int = 1


def conversations(workload: dict, seed_base: int, rng_seed: int = 7) -> list[Conversation]:
    """The requests of a workload, as conversations (single-turn for single/mixed)."""
    kind = workload["kind"]
    if kind == "single":
        return [Conversation([(workload["image"], seed_base + i)] if workload.get("image") else [])
                for i in range(workload["requests"])]
    if kind == "chat":
        return [Conversation([(workload["image"], seed_base + i)], turns=workload["turns"])
                for i in range(workload["conversations"])]
    if kind == "mixed":
        rng, mix = random.Random(rng_seed), workload["mix"]
        out = []
        for i in range(workload["requests"]):
            entry = rng.choices(mix, weights=[m["share"] for m in mix])[0]
            out.append(Conversation([(spec, seed_base + 10 * i + k) for k, spec in enumerate(entry["images"])]))
        return out
    raise ValueError(f"unknown workload kind {kind!r}")


def user_content(text: str, urls: list[str]) -> list[dict] | str:
    if not urls:
        return text
    return [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]


def chat_body(model: str, urls: list[str], max_tokens: int, stream: bool = True, **extra) -> dict:
    """One user turn with ``urls`` as images, ``ignore_eos`` (a fixed answer length)."""
    body = {"model": model, "messages": [{"role": "user", "content": user_content(USER_TEXTS[0], urls)}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing: parse;dur=1.2, ...`` (ours: serve_app/api/server_timing.py) as {stage: ms}."""
    stages = {}
    for entry in (header or "").split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                stages[name] = float(value)
    return stages


async def post_chat(session: aiohttp.ClientSession, url: str, body: dict | bytes, headers: dict) -> dict:
    """One chat request; ``body`` already encoded is sent as is. Never raises: a failure is
    ``ok: False`` with the status (or ``timeout`` / ``conn:Error``), its message and Retry-After."""
    t0 = time.perf_counter()
    stream = isinstance(body, dict) and body.get("stream")
    ttft, text, usage, answer = None, [], {}, None
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        async with session.post(url + "/v1/chat/completions", data=data,
                                headers={**headers, "Content-Type": "application/json"}) as r:
            if r.status != 200:
                raw = await r.text()
                try:
                    err = json.loads(raw)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    err = raw
                return {"ok": False, "status": r.status, "err": err[:300], "retry_after": r.headers.get("retry-after"),
                        "e2e": time.perf_counter() - t0}
            replica = r.headers.get("x-pixtral-replica")  # ours only: which LLM replica answered
            stages = server_timing(r.headers.get("server-timing"))  # ours only: ms per stage to the first chunk
            if not stream:
                answer = await r.json()
                ttft, usage = time.perf_counter() - t0, answer.get("usage") or {}
                text = [answer["choices"][0]["message"].get("content") or ""]
            else:
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    ev = json.loads(line[5:])
                    if ev.get("error"):
                        return {"ok": False, "status": 200, "err": json.dumps(ev["error"])[:300],
                                "e2e": time.perf_counter() - t0}
                    delta = ev["choices"][0].get("delta", {}) if ev.get("choices") else {}
                    if delta.get("content"):
                        ttft = ttft if ttft is not None else time.perf_counter() - t0
                        text.append(delta["content"])
                    usage = ev.get("usage") or usage
    except asyncio.TimeoutError:
        return {"ok": False, "status": "timeout", "err": "timeout", "e2e": time.perf_counter() - t0}
    except (aiohttp.ClientError, json.JSONDecodeError) as exc:
        return {"ok": False, "status": f"conn:{type(exc).__name__}", "err": f"{type(exc).__name__}: {exc}"[:300],
                "e2e": time.perf_counter() - t0}
    return {"ok": True, "ttft": ttft if ttft is not None else float("nan"), "e2e": time.perf_counter() - t0,
            "out": usage.get("completion_tokens", 0), "prompt": usage.get("prompt_tokens"), "text": "".join(text),
            "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"), "replica": replica,
            "stages": stages, **({"answer": answer} if answer is not None else {})}


def client_session(timeout_s: float | None = None) -> aiohttp.ClientSession:
    """aiohttp, because httpx's pool spent ~20 ms of client CPU per request at 1024 connections."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 connector=aiohttp.TCPConnector(limit=0))


async def send_at_once(url: str, bodies: list[dict | bytes], api_key: str, timeout_s: float,
                       concurrency: int | None = None) -> tuple[list[dict], float, float]:
    """Every body sent at once (or ``concurrency`` at a time): (results, wall s, this process's CPU s)."""
    sem = asyncio.Semaphore(concurrency or len(bodies) or 1)
    headers = {"Authorization": f"Bearer {api_key}"}

    async def one(session, body):
        async with sem:
            return await post_chat(session, url, body, headers)

    async with client_session(timeout_s) as session:
        started, cpu_started = time.monotonic(), time.process_time()
        results = await asyncio.gather(*(one(session, b) for b in bodies))
        return results, time.monotonic() - started, time.process_time() - cpu_started


async def run_conversations(url: str, model: str, convs: list[Conversation], images: ImageStore, *,
                            concurrency: int, request: dict, api_key: str, timeout_s: float,
                            extra_body: dict | None = None) -> dict:
    """Every conversation's turns in order, ``concurrency`` conversations at once; bounded.
    ``extra_body`` (a workload's ``body``) is merged into every request (e.g. response_format)."""
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    results: list[dict] = []
    structured = bool((extra_body or {}).get("response_format"))

    async def talk(session, conv: Conversation, first_wave: bool):
        async with sem:
            urls = [images.data_url(s, n) for s, n in conv.images]
            messages: list[dict] = []
            first_replica = None
            for turn in range(conv.turns):
                messages.append({"role": "user", "content": user_content(USER_TEXTS[turn % len(USER_TEXTS)],
                                                                         urls if turn == 0 else [])})
                body = {"model": model, "messages": messages, "max_tokens": request["max_tokens"],
                        "ignore_eos": request["ignore_eos"], "stream": True,
                        "stream_options": {"include_usage": True}, **(extra_body or {})}
                r = await post_chat(session, url, body, headers)
                r.update(turn=turn, first_wave=first_wave)
                results.append(r)
                if not r["ok"]:
                    return
                if turn == 0:
                    first_replica = r["replica"]
                elif r["replica"] is not None:
                    r["same_replica"] = r["replica"] == first_replica  # ours: did affinity hold?
                if structured:
                    r["json_ok"] = parses_as_object(r["text"])
                messages.append({"role": "assistant", "content": r.pop("text") or "ok"})

    t0 = time.perf_counter()
    async with client_session(timeout_s) as session:
        tasks = [asyncio.ensure_future(talk(session, c, i < concurrency)) for i, c in enumerate(convs)]
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    expected = sum(c.turns for c in convs)
    not_sent = expected - len(results)  # turns never sent: an earlier turn failed, or the deadline
    ok = [r for r in results if r["ok"]]
    errs = [r for r in results if not r["ok"]]
    later = [r["ttft"] for r in ok if r["turn"] > 0]
    # The first `concurrency` conversations start at once: their first turns queue behind each other's
    # prefill, and with few more requests than that their TTFTs decide the p50; the rest arrive one
    # per completion, as steady load does.
    steady = [r["ttft"] for r in ok if not r["first_wave"] and r["turn"] == 0]
    cached = [r["cached"] for r in ok if r["turn"] > 0 and r.get("cached") is not None]
    tpot = [(r["e2e"] - r["ttft"]) * 1000 / (r["out"] - 1) for r in ok if r["out"] > 1 and r["ttft"] == r["ttft"]]
    same = [r["same_replica"] for r in ok if "same_replica" in r]
    return {
        "requests": expected, "ok": len(ok), "errors": len(errs) + not_sent, "not_sent": not_sent,
        "first_error": errs[0] if errs else None, "wall_s": round(wall, 2),
        "req_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "out_tok_per_s": round(sum(r["out"] for r in ok) / wall, 1) if wall > 0 else None,
        "ttft_p50_s": percentile([r["ttft"] for r in ok], 50), "ttft_p90_s": percentile([r["ttft"] for r in ok], 90),
        "ttft_p99_s": percentile([r["ttft"] for r in ok], 99),
        "ttft_mean_s": round(float(np.mean([r["ttft"] for r in ok])), 4) if ok else None,
        "tpot_p50_ms": percentile(tpot, 50),  # ms per output token after the first, per request
        "out_tokens_mean": round(sum(r["out"] for r in ok) / len(ok), 1) if ok else None,
        "e2e_p50_s": percentile([r["e2e"] for r in ok], 50), "e2e_p99_s": percentile([r["e2e"] for r in ok], 99),
        "ttft_p50_later_turns_s": percentile(later, 50) if later else None,
        "ttft_p50_after_first_wave_s": percentile(steady, 50),  # of the first turns sent after the first wave
        "cached_tokens_mean_later_turns": round(sum(cached) / len(cached), 1) if cached else None,
        "stages_p50_ms": stages_ms(ok),
        "stages_mean_ms": stages_ms(ok, lambda xs: float(np.mean(xs))),
        "error_statuses": dict(Counter(str(r["status"]) for r in errs)) or None,
        "json_valid": sum(r["json_ok"] for r in ok) if structured else None,  # answers that parse as an object
        "replicas": dict(Counter(r["replica"] for r in ok if r.get("replica"))) or None,  # ours: per LLM replica
        "same_replica_later_turns": round(sum(same) / len(same), 3) if same else None,
    }


def parses_as_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def stages_ms(ok: list[dict], stat=lambda xs: percentile(xs, 50)) -> dict[str, float] | None:
    """``stat`` (p50; or the mean, to set beside vLLM's own sums) of each Server-Timing stage, and of
    ``outside``: the client's TTFT minus the server's ``total`` (proxy, HTTP, the first SSE events and
    the network), per request."""
    timed = [r for r in ok if r.get("stages")]
    if not timed:
        return None
    names = list(dict.fromkeys(name for r in timed for name in r["stages"]))
    out = {name: stat([r["stages"][name] for r in timed if name in r["stages"]]) for name in names}
    if "total" in names:
        out["outside"] = stat([r["ttft"] * 1000 - r["stages"]["total"] for r in timed if "total" in r["stages"]])
    out["ttft"] = stat([r["ttft"] * 1000 for r in timed])
    return {k: None if v is None else round(v, 3) for k, v in out.items()}


class ClosedLoop:
    """Clients that each send one request after the other until told to stop; a 429 is retried
    ``max_retries`` times (as the OpenAI SDK does). Every outcome, with start/end seconds since
    ``t0``, goes to ``records``."""

    def __init__(self, url: str, model: str, image_urls: list[str], api_key: str, t0: float, max_retries: int = 2):
        self.url, self.model, self.t0, self.max_retries = url, model, t0, max_retries
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._images = itertools.cycle(image_urls)
        self.records: list[dict] = []
        self.level = 0

    async def client(self, session, max_tokens: int, stop: asyncio.Event, phase: str,
                     stream: bool = True, pause_after_failure_s: float = 0.0) -> None:
        while not stop.is_set():
            start = time.time() - self.t0
            body = chat_body(self.model, [next(self._images)], max_tokens, stream=stream)
            result = await post_chat(session, self.url, body, self.headers)
            retries = 0
            while result.get("status") == 429 and retries < self.max_retries:
                retries += 1
                await asyncio.sleep(0.5 * 2**retries)
                result = await post_chat(session, self.url, body, self.headers)
            result.pop("text", None)
            result.update(retries_429=retries, start=round(start, 3), end=round(time.time() - self.t0, 3),
                          phase=phase, max_tokens=max_tokens, level=self.level)
            if result["ok"] and result["out"] != max_tokens:
                result.update(ok=False, err=f"stream ended after {result['out']} of {max_tokens} tokens")
            self.records.append(result)
            if not result["ok"]:
                await asyncio.sleep(pause_after_failure_s)
