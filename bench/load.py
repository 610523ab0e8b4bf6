"""Load for an OpenAI-compatible multimodal chat server: the workloads of real_traffic.yaml.

Images (generated once, cached on disk), request bodies per workload kind (single, mixed,
chat), the client (aiohttp, streaming, TTFT at the first content delta), and two monitors
around the measured part: GPU busy % (nvidia-smi) and CPU seconds per process group
(proxy, ingress, pool, LLM replica, engine core, API servers...).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import multiprocessing
import os
import random
import re
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageDraw

PHOTO_SIZE = (4032, 3024)


# ---------------------------------------------------------------- images

def make_jpeg(spec: str, seed: int) -> bytes:
    """``WxH``: random background and 40 rectangles (as the wheel kit's baseline load generator
    draws them), quality 90.
    ``photo``: 4032x3024, smooth shapes under per-pixel noise, quality 90 (3-5 MB)."""
    rng = random.Random(seed)
    w, h = PHOTO_SIZE if spec == "photo" else map(int, spec.split("x"))
    base = (w // 8, h // 8) if spec == "photo" else (w, h)
    img = Image.new("RGB", base, tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = rng.randrange(base[0]), rng.randrange(base[1])
        x1, y1 = x0 + rng.randrange(1, base[0] // 3), y0 + rng.randrange(1, base[1] // 3)
        d.rectangle([x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
    if spec == "photo":
        pixels = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.int16)
        noise = np.random.default_rng(seed).normal(0, 14, pixels.shape).astype(np.int16)
        img = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write(job: tuple[str, str, int]) -> None:
    path, spec, seed = job
    if not os.path.exists(path):
        tmp = path + ".tmp"
        Path(tmp).write_bytes(make_jpeg(spec, seed))
        os.replace(tmp, path)


class ImageStore:
    """Data URLs of generated JPEGs, by (spec, seed); files cached under ``folder``."""

    def __init__(self, folder: Path, workers: int = 4):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.workers = workers

    def path(self, spec: str, seed: int) -> Path:
        return self.folder / f"{spec}-{seed}.jpg"

    def ensure(self, wanted: list[tuple[str, int]]) -> None:
        jobs = [(str(self.path(s, n)), s, n) for s, n in sorted(set(wanted)) if not self.path(s, n).exists()]
        if len(jobs) > 1 and self.workers > 1:
            with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_write, jobs, chunksize=4))
        else:
            for job in jobs:
                _write(job)

    def data_url(self, spec: str, seed: int) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.path(spec, seed).read_bytes()).decode()


# ---------------------------------------------------------------- workloads -> requests

@dataclass
class Conversation:
    """A sequence of user turns sent one after another; ``images`` go with the first turn and
    are resent (the whole history is) with every later turn."""

    images: list[tuple[str, int]]
    turns: int = 1
    texts: list[str] = field(default_factory=list)


USER_TEXTS = ["Describe this image in one sentence.", "What colours stand out?", "Count the shapes you see.",
              "Which part is brightest?", "Write a caption for it.", "Anything unusual?"]


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
        rng = random.Random(rng_seed)
        mix = workload["mix"]
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


# ---------------------------------------------------------------- client

def pct(xs, p):
    xs = sorted(x for x in xs if x == x)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 3) if xs else None


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


async def post_chat(session, url: str, body: dict, headers: dict) -> dict:
    t0 = time.perf_counter()
    ttft, out_tokens, text, usage = None, 0, [], None
    try:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status != 200:
                return {"ok": False, "status": r.status, "err": (await r.text())[:300]}
            replica = r.headers.get("x-pixtral-replica")  # ours only: which LLM replica answered
            stages = server_timing(r.headers.get("server-timing"))  # ours only: ms per stage to the first chunk
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[5:])
                if ev.get("error"):
                    return {"ok": False, "status": 200, "err": json.dumps(ev["error"])[:300]}
                delta = ev["choices"][0].get("delta", {}) if ev.get("choices") else {}
                if delta.get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(delta["content"])
                if ev.get("usage"):
                    usage = ev["usage"]
                    out_tokens = usage.get("completion_tokens", 0)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        return {"ok": False, "status": None, "err": f"{type(exc).__name__}: {exc}"[:300]}
    cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
    return {"ok": True, "ttft": ttft if ttft is not None else float("nan"), "e2e": time.perf_counter() - t0,
            "out": out_tokens, "text": "".join(text), "cached": cached, "replica": replica, "stages": stages}


async def run_conversations(url: str, model: str, convs: list[Conversation], images: ImageStore, *,
                            concurrency: int, request: dict, api_key: str, timeout_s: float,
                            extra_body: dict | None = None) -> dict:
    """Every conversation's turns in order, ``concurrency`` conversations at once; bounded.
    ``extra_body`` (a workload's ``body``) is merged into every request (e.g. response_format)."""
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    results: list[dict] = []

    structured = bool((extra_body or {}).get("response_format"))

    async def talk(session, conv: Conversation):
        async with sem:
            urls = [images.data_url(s, n) for s, n in conv.images]
            messages: list[dict] = []
            first_replica = None
            for turn in range(conv.turns):
                text = USER_TEXTS[turn % len(USER_TEXTS)]
                messages.append({"role": "user", "content": user_content(text, urls if turn == 0 else [])})
                body = {"model": model, "messages": messages, "max_tokens": request["max_tokens"],
                        "ignore_eos": request["ignore_eos"], "stream": True,
                        "stream_options": {"include_usage": True}, **(extra_body or {})}
                r = await post_chat(session, url, body, headers)
                r["turn"] = turn
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

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.ensure_future(talk(session, c)) for c in convs]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - t0
    expected = sum(c.turns for c in convs)
    not_sent = expected - len(results)  # turns never sent: an earlier turn failed, or the deadline
    ok = [r for r in results if r["ok"]]
    errs = [r for r in results if not r["ok"]]
    later = [r["ttft"] for r in ok if r["turn"] > 0]
    cached = [r["cached"] for r in ok if r["turn"] > 0 and r.get("cached") is not None]
    tpot = [(r["e2e"] - r["ttft"]) * 1000 / (r["out"] - 1) for r in ok if r["out"] > 1 and r["ttft"] == r["ttft"]]
    same = [r["same_replica"] for r in ok if "same_replica" in r]
    replicas = Counter(r["replica"] for r in ok if r.get("replica"))
    return {
        "requests": expected, "ok": len(ok), "errors": len(errs) + not_sent, "not_sent": not_sent,
        "first_error": errs[0] if errs else None, "wall_s": round(wall, 2),
        "req_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "out_tok_per_s": round(sum(r["out"] for r in ok) / wall, 1) if wall > 0 else None,
        "ttft_p50_s": pct([r["ttft"] for r in ok], 50), "ttft_p90_s": pct([r["ttft"] for r in ok], 90),
        "ttft_p99_s": pct([r["ttft"] for r in ok], 99),
        "tpot_p50_ms": pct(tpot, 50),  # ms per output token after the first, per request
        "out_tokens_mean": round(sum(r["out"] for r in ok) / len(ok), 1) if ok else None,
        "e2e_p50_s": pct([r["e2e"] for r in ok], 50), "e2e_p99_s": pct([r["e2e"] for r in ok], 99),
        "ttft_p50_later_turns_s": pct(later, 50) if later else None,
        "cached_tokens_mean_later_turns": round(sum(cached) / len(cached), 1) if cached else None,
        "stages_p50_ms": stages_p50_ms(ok),
        "error_statuses": dict(Counter(str(r["status"]) for r in errs)) or None,
        "json_valid": sum(r["json_ok"] for r in ok) if structured else None,  # answers that parse as an object
        "replicas": dict(replicas) or None,  # ours: requests per LLM replica (x-pixtral-replica)
        "same_replica_later_turns": round(sum(same) / len(same), 3) if same else None,
    }


def parses_as_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def stages_p50_ms(ok: list[dict]) -> dict[str, float] | None:
    """p50 of each Server-Timing stage, and of ``outside``: the client's TTFT minus the server's
    ``total`` (proxy, HTTP, the first SSE events and the network), per request."""
    timed = [r for r in ok if r.get("stages")]
    if not timed:
        return None
    names = list(dict.fromkeys(name for r in timed for name in r["stages"]))
    out = {name: pct([r["stages"][name] for r in timed if name in r["stages"]], 50) for name in names}
    if "total" in names:
        out["outside"] = pct([r["ttft"] * 1000 - r["stages"]["total"] for r in timed if "total" in r["stages"]], 50)
    out["ttft"] = pct([r["ttft"] * 1000 for r in timed], 50)
    return out


# ---------------------------------------------------------------- monitors

class GpuSampler:
    """``nvidia-smi --query-gpu=utilization.gpu -lms 500`` in the background; mean busy %."""

    def __init__(self, interval_ms: int = 500):
        self.interval_ms, self._proc, self._file = interval_ms, None, None

    def start(self) -> "GpuSampler":
        try:
            self._file = tempfile.TemporaryFile(mode="w+")
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", str(self.interval_ms)], stdout=self._file, stderr=subprocess.DEVNULL)
        except OSError:
            self._proc = None
        return self

    def stop(self) -> dict | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._file.seek(0)
        vals = []
        for line in self._file.read().splitlines():
            try:
                vals.append(float(line.split(",")[0]))
            except ValueError:
                pass
        self._file.close()
        return {"gpu_busy_mean_pct": round(sum(vals) / len(vals), 1), "samples": len(vals)} if vals else None


_PID_SUFFIX = re.compile(r"[_\-]?\d+$")
_PROGRAMS = (("vllm.entrypoints", "vllm-serve-main"), ("raylet", "raylet"), ("gcs_server", "gcs_server"),
             ("serve run", "serve-driver"), ("ray_serve_llm.py", "serve-driver"), ("dashboard", "ray-dashboard"),
             ("runtime_env", "ray-runtime-env-agent"), ("log_monitor", "ray-log-monitor"))


def process_group(cmdline: list[str], name: str) -> str:
    """Ray's/vLLM's process title (ray::ServeReplica:pixtral:PixtralServer, VLLM::EngineCore), else the program."""
    first = cmdline[0] if cmdline else name
    if first.startswith(("ray::", "VLLM::")):
        return _PID_SUFFIX.sub("", first.split()[0])
    joined = " ".join(cmdline)
    return next((label for key, label in _PROGRAMS if key in joined), name or "?")


class ProcCpu:
    """CPU seconds (user+system) per process group of the given sessions between start and stop."""

    def __init__(self, sessions: list[int]):
        import psutil

        self._psutil, self._sessions = psutil, set(sessions)
        self._t0: dict[int, tuple[str, float, float]] = {}
        self._wall0 = 0.0

    def _snapshot(self) -> dict[int, tuple[str, float, float]]:
        snap = {}
        for p in self._psutil.process_iter(["pid", "name", "cmdline", "cpu_times", "create_time"]):
            try:
                if os.getsid(p.info["pid"]) not in self._sessions or p.info["cpu_times"] is None:
                    continue
            except OSError:
                continue
            ct = p.info["cpu_times"]
            label = process_group(p.info["cmdline"] or [], p.info["name"] or "")
            snap[p.info["pid"]] = (label, p.info["create_time"] or 0.0, ct.user + ct.system)
        return snap

    def start(self) -> "ProcCpu":
        self._wall0, self._t0 = time.monotonic(), self._snapshot()
        return self

    def stop(self, requests: int) -> dict:
        wall = time.monotonic() - self._wall0
        groups: dict[str, float] = {}
        for pid, (label, created, cpu) in self._snapshot().items():
            before = self._t0.get(pid)
            base = before[2] if before and abs(before[1] - created) < 1e-3 else 0.0
            groups[label] = groups.get(label, 0.0) + max(0.0, cpu - base)
        return {
            "wall_s": round(wall, 2),
            "cpu_ms_per_request": {k: round(1000 * v / max(1, requests), 1)
                                   for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.01},
        }
