"""A Pixtral-Large-shaped model at tensor parallel N through our Ray Serve app (multi-GPU machine).

Starts a local Ray with the machine's GPUs, deploys a Serve config, waits for
health, sends image requests, samples nvidia-smi while they run, records the
replica's placement group, and optionally runs bench/load.py's unique-1024x768 load at given
concurrencies. Writes <name>.json (and bench JSONs) to $OUT (or .).

    python3 bench/gpu/tp_check.py                                  # TP 2, 12-layer model
    python3 bench/gpu/tp_check.py --config bench/gpu/config.tp4-large.yaml \
        --params bench/gpu/pixtral-large/params.json --name tp4-large --bench 16 64
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("OUT", "."))
START_TIMEOUT_S = 400


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_model(params: Path) -> None:
    import mistral_common

    MODEL.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(params, MODEL / "params.json")
    data = Path(mistral_common.__file__).parent / "data"
    shutil.copyfile(data / "mistral_instruct_tokenizer_241114.model.v7m1", MODEL / "tokenizer.model.v7m1")
    (MODEL / "SYSTEM_PROMPT.txt").write_text("You are {name}. Today is {today}; yesterday was {yesterday}.")


def jpeg_data_url(seed: int, width: int = 1024, height: int = 768) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class GpuSampler:
    def __init__(self) -> None:
        self.samples: list[list[str]] = []
        if shutil.which("nvidia-smi") is None:  # a CPU dry run
            self._proc = subprocess.Popen(["sleep", "3600"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=lambda: None)
            self._thread.start()
            return
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "250"],
            stdout=subprocess.PIPE, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            self.samples.append([part.strip() for part in line.split(",")])

    def stop(self) -> dict:
        self._proc.terminate()
        self._thread.join(timeout=5)
        per_gpu: dict[str, dict] = {}
        for index, util, mem in self.samples:
            entry = per_gpu.setdefault(index, {"util": [], "mem": []})
            entry["util"].append(float(util))
            entry["mem"].append(float(mem))
        return {
            index: {
                "samples": len(v["util"]),
                "util_mean_pct": sum(v["util"]) / len(v["util"]),
                "util_max_pct": max(v["util"]),
                "busy_fraction": sum(u > 0 for u in v["util"]) / len(v["util"]),
                "memory_used_mib_max": max(v["mem"]),
            }
            for index, v in per_gpu.items()
        }


def main() -> int:
    import argparse

    import httpx
    import ray
    import yaml
    from ray import serve

    from serve_app.app import build_app

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="bench/gpu/config.tp2.yaml")
    parser.add_argument("--params", default="bench/gpu/pixtral-large-reduced/params.json")
    parser.add_argument("--name", default="tp2")
    parser.add_argument("--bench", type=int, nargs="*", default=[], help="load concurrencies (unique 1024x768 JPEGs)")
    parser.add_argument("--bench-requests", type=int, default=64)
    parser.add_argument("--sanity", type=int, default=48, help="image requests checked before the benchmark")
    options = parser.parse_args()
    global MODEL
    document = yaml.safe_load((REPO / options.config).read_text())
    args = document["applications"][0]["args"]
    MODEL = Path(args["engine"]["model"])
    served_name = args["served_model_name"]
    result: dict = {"date": time.strftime("%Y-%m-%d"), "config": options.config, "params": options.params}
    if shutil.which("nvidia-smi"):
        result["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip().splitlines()
    prepare_model(REPO / options.params)
    t0 = time.monotonic()
    ray.init(num_cpus=int(os.environ.get("TP_CHECK_CPUS", "16")), include_dashboard=False, log_to_driver=True)
    port = document.get("http_options", {}).get("port", 8000)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    threading.Thread(target=serve.run, args=(build_app(args),), kwargs={"name": "pixtral", "route_prefix": "/"}, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    healthy = False
    while time.monotonic() - t0 < START_TIMEOUT_S:
        try:
            if httpx.get(base + "/ready", timeout=5).status_code == 200:
                healthy = True
                break
        except Exception:
            pass
        time.sleep(2)
    result["healthy"] = healthy
    result["time_to_healthy_s"] = round(time.monotonic() - t0, 1)
    log(f"healthy={healthy} after {result['time_to_healthy_s']} s")

    result["placement_groups"] = [
        {"strategy": pg.get("strategy"), "state": pg.get("state"), "bundles": list(pg.get("bundles", {}).values())}
        for pg in ray.util.placement_group_table().values()
    ]
    log(f"placement groups: {result['placement_groups']}")
    if not healthy:
        (OUT / f"{options.name}.json").write_text(json.dumps(result, indent=2))
        return 1

    sampler = GpuSampler()
    urls = [jpeg_data_url(i) for i in range(options.sanity)]

    def ask(url: str) -> dict:
        started = time.perf_counter()
        response = httpx.post(
            base + "/v1/chat/completions",
            json={
                "model": served_name,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Describe this image."},
                    {"type": "image_url", "image_url": {"url": url}}]}],
                "max_tokens": 64, "ignore_eos": True, "temperature": 0, "return_token_ids": True,
            },
            timeout=300,
        )
        body = response.json()
        return {"status": response.status_code, "seconds": time.perf_counter() - started, "body": body}

    load_started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, urls))
    load_s = time.perf_counter() - load_started
    result["gpus_during_load"] = sampler.stop()
    ok = [a for a in answers if a["status"] == 200]
    result["requests"] = len(answers)
    result["ok"] = len(ok)
    result["errors"] = [a["body"] for a in answers if a["status"] != 200][:3]
    result["load_seconds"] = round(load_s, 2)
    result["req_per_s"] = round(len(ok) / load_s, 2)
    if ok:
        first = ok[0]["body"]
        result["usage_example"] = first["usage"]
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        v7 = MistralTokenizer.from_file(str(MODEL / "tokenizer.model.v7m1"))
        system_open = v7.instruct_tokenizer.tokenizer.get_special_token("[SYSTEM_PROMPT]")
        result["default_system_prompt_applied"] = all(
            a["body"]["prompt_token_ids"][1] == system_open for a in ok
        )
    log(json.dumps({k: result[k] for k in ("ok", "requests", "req_per_s", "gpus_during_load")}))
    (OUT / f"{options.name}.json").write_text(json.dumps(result, indent=2))
    if options.bench:
        import asyncio

        sys.path.insert(0, str(REPO / "bench"))
        import load

        images = load.ImageStore(OUT / "images")
    for concurrency in options.bench:
        convs = load.conversations({"kind": "single", "image": "1024x768", "requests": options.bench_requests},
                                   1000 * concurrency)
        images.ensure([img for c in convs for img in c.images])
        result.setdefault("bench", {})[f"c{concurrency}"] = asyncio.run(load.run_conversations(
            base, served_name, convs, images, concurrency=concurrency,
            request={"max_tokens": 64, "ignore_eos": True}, api_key="unused", timeout_s=240))
        log(f"bench c{concurrency}: done")
    (OUT / f"{options.name}.json").write_text(json.dumps(result, indent=2))
    serve.shutdown()
    ray.shutdown()
    return 0 if len(ok) == len(answers) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
