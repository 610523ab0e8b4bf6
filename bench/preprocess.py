"""CPU preprocessing throughput: our ImageLoader decode+resize vs mistral_common.

Not a test. One process, one thread (OpenCV pinned to 1 thread for both), the
same encoded bytes for both sides:

* ours: ``decode_and_resize`` (what ImageLoader runs in its thread pool) plus
  the sha256 of the bytes;
* mistral_common: ``MistralTokenizer.encode_chat_completion`` with the image as
  a data URL, as vLLM's OpenAI server runs it (base64 decode, full decode,
  float32 cubic resize, normalise, tokenise).

Usage: python bench/preprocess.py [--seconds 3] [--out bench/results]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mistral_common  # noqa: E402
from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk  # noqa: E402
from mistral_common.protocol.instruct.messages import UserMessage  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

from serve_app.images import ImageGrid  # noqa: E402
from serve_app.images.decode import decode_and_resize  # noqa: E402


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = xx / width, yy / height
    arr = np.stack(
        [128 + 100 * np.sin(6.0 * fx + 2.0 * fy), 128 + 100 * np.cos(4.0 * fy - 3.0 * fx), 255 * fx * fy], -1
    )
    arr[(fx > 0.3) & (fx < 0.5) & (fy > 0.2) & (fy < 0.6)] = (240, 30, 30)
    arr += rng.normal(0, 2, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rate(fn, seconds: float) -> tuple[float, float]:
    """(images per second, median ms) over at least ``seconds`` and 5 runs, after one warm-up."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return len(times) / sum(times), float(np.median(times)) * 1e3


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    grid = ImageGrid()
    tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    tokenizer = MistralTokenizer.from_file(str(tekken))

    cases = [
        ("JPEG 1024x768", encode(photo_like(1024, 768), "JPEG"), "image/jpeg"),
        ("JPEG 4032x3024 (12 MP)", encode(photo_like(4032, 3024), "JPEG"), "image/jpeg"),
        ("PNG 2048x1536", encode(photo_like(2048, 1536), "PNG"), "image/png"),
    ]
    rows = []
    for name, data, mime in cases:
        url = f"data:{mime};base64," + base64.b64encode(data).decode()

        def ours(data=data):
            hashlib.sha256(data).hexdigest()
            return decode_and_resize(data, grid, 50_000_000)

        def reference(url=url):
            request = ChatCompletionRequest(
                messages=[UserMessage(content=[ImageURLChunk(image_url=url), TextChunk(text="hi")])]
            )
            return tokenizer.encode_chat_completion(request)

        pixels, w, h = ours()
        ref = reference()
        assert ref.images[0].shape[1:] == pixels.shape[:2], (ref.images[0].shape, pixels.shape)
        ours_ips, ours_ms = rate(ours, args.seconds)
        ref_ips, ref_ms = rate(reference, args.seconds)
        rows.append(
            {
                "image": name,
                "bytes": len(data),
                "target": f"{pixels.shape[1]}x{pixels.shape[0]}",
                "ours_img_per_s": round(ours_ips, 1),
                "ours_ms": round(ours_ms, 2),
                "mistral_common_img_per_s": round(ref_ips, 1),
                "mistral_common_ms": round(ref_ms, 2),
                "speedup": round(ours_ips / ref_ips, 2),
            }
        )
        print(rows[-1], flush=True)

    today = dt.date.today().isoformat()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    versions = {
        "pillow": Image.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "mistral_common": mistral_common.__version__,
    }
    lines = [
        f"# CPU image preprocessing, {today}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (one thread used, OpenCV pinned to 1 thread). "
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        "ours = `serve_app.images.decode.decode_and_resize` + sha256 on the bytes (ImageLoader's thread-pool work); "
        "mistral_common = `MistralTokenizer(tekken_240911).encode_chat_completion` with the image as a data URL. "
        "Synthetic photo-like images (gradients, an edge, mild noise), JPEG quality 90.",
        "",
        "| image | bytes | model size | ours img/s (ms) | mistral_common img/s (ms) | speedup |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['bytes']:,} | {r['target']} | {r['ours_img_per_s']} ({r['ours_ms']}) "
            f"| {r['mistral_common_img_per_s']} ({r['mistral_common_ms']}) | {r['speedup']}x |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{today}-cpu-preprocess.md").write_text(table)
    (args.out / f"{today}-cpu-preprocess.json").write_text(
        json.dumps({"date": today, "machine": machine, "versions": versions, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
