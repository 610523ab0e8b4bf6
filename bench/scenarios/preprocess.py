"""CPU preprocessing throughput, no system: our decode+resize vs mistral_common, one process, one
thread (OpenCV pinned to 1 thread for both), the same encoded bytes for both sides:

* ours: ``decode_and_resize`` (what ImageLoader runs in its thread pool) plus the sha256 of the bytes;
* mistral_common: ``MistralTokenizer.encode_chat_completion`` with the image as a data URL, as vLLM's
  OpenAI server runs it (base64 decode, full decode, float32 cubic resize, normalise, tokenise).
"""

from __future__ import annotations

import base64
import hashlib
import statistics
import time

import load


def rate(fn, seconds: float) -> tuple[float, float]:
    """(images per second, median ms) over at least ``seconds`` and 5 runs, after one warm-up."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return len(times) / sum(times), statistics.median(times) * 1e3


def run(bench) -> int:
    from pathlib import Path

    import cv2
    import mistral_common
    import numpy as np
    from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
    from PIL import Image

    from serve_app.images import ImageGrid
    from serve_app.images.decode import decode_and_resize

    cfg = bench.spec["preprocess"]
    cv2.setNumThreads(1)
    grid = ImageGrid()
    tokenizer = MistralTokenizer.from_file(str(Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"))
    bench.result.update(rows=[], versions={**bench.result["versions"], "pillow": Image.__version__,
                                           "opencv": cv2.__version__, "numpy": np.__version__,
                                           "mistral_common": mistral_common.__version__})
    for case in cfg["images"]:
        data = load.make_image(case["image"], 0, case["format"])
        url = f"data:image/{case['format'].lower()};base64," + base64.b64encode(data).decode()

        def ours(data=data):
            hashlib.sha256(data).hexdigest()
            return decode_and_resize(data, grid, 50_000_000)

        def reference(url=url):
            request = ChatCompletionRequest(messages=[UserMessage(content=[ImageURLChunk(image_url=url),
                                                                           TextChunk(text="hi")])])
            return tokenizer.encode_chat_completion(request)

        pixels, _, _ = ours()
        assert reference().images[0].shape[1:] == pixels.shape[:2]
        ours_ips, ours_ms = rate(ours, cfg["seconds"])
        ref_ips, ref_ms = rate(reference, cfg["seconds"])
        bench.result["rows"].append({
            "image": case["name"], "bytes": len(data), "target": f"{pixels.shape[1]}x{pixels.shape[0]}",
            "ours_img_per_s": round(ours_ips, 1), "ours_ms": round(ours_ms, 2),
            "mistral_common_img_per_s": round(ref_ips, 1), "mistral_common_ms": round(ref_ms, 2),
            "speedup": round(ours_ips / ref_ips, 2)})
        bench.log(str(bench.result["rows"][-1]))
        bench.save()
    return 0
