"""Ray Serve LLM (``ray.serve.llm.build_openai_app``) on the same model, as the benchmark's peer.

  python3 bench/ray_serve_llm.py --model /tmp/pixtral-12b --name pixtral --port 8000

Ray Serve LLM's own pre-check loads a Hugging Face ``config.json`` from the model folder,
which a Mistral-native checkpoint (params.json) lacks; the folder is mirrored with an
HF-format Pixtral config beside the original files (bench/pixtral-12b-hf-config.json), and
the engine still reads the Mistral format (``config_format``/``tokenizer_mode: mistral``).
Runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import threading
from pathlib import Path


def hf_view(model: Path) -> Path:
    """The model folder's files (linked) plus config.json, in a sibling folder."""
    view = model.with_name(model.name + "-with-hf-config")
    view.mkdir(exist_ok=True)
    for f in model.iterdir():
        target = view / f.name
        if not target.exists():
            os.symlink(f, target)
    shutil.copy(Path(__file__).with_name("pixtral-12b-hf-config.json"), view / "config.json")
    return view


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default="pixtral")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--load-format", default="dummy")
    ap.add_argument("--engine-kwargs", default="{}", help="JSON merged into engine_kwargs (dry run: CPU settings)")
    ap.add_argument("--replicas", type=int, default=1, help="LLM replicas (one GPU each)")
    ap.add_argument("--prefix-affinity", action="store_true", help="its PrefixCacheAffinityRouter (text only)")
    a = ap.parse_args()

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    deployment_config: dict = {"autoscaling_config": {"min_replicas": a.replicas, "max_replicas": a.replicas}}
    if a.prefix_affinity:
        deployment_config["request_router_config"] = {
            "request_router_class": "ray.serve.llm.request_router.PrefixCacheAffinityRouter"}
    config = LLMConfig(
        model_loading_config={"model_id": a.name, "model_source": str(hf_view(Path(a.model)))},
        engine_kwargs={"tokenizer_mode": "mistral", "config_format": "mistral", "load_format": a.load_format,
                       "max_model_len": a.max_model_len, "limit_mm_per_prompt": {"image": a.images},
                       **json.loads(a.engine_kwargs)},
        deployment_config=deployment_config,
    )
    serve.run(build_openai_app({"llm_configs": [config]}), blocking=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
