#!/usr/bin/env bash
# Second pass of our app only, with a changed config (same machine, after run_all.sh):
#   bash bench/gpu/rerun_ours.sh CONFIG LABEL
set -u
CONFIG=$1; LABEL=$2
source /tmp/parts/bin/install.sh >/dev/null
export PYTHONPATH=$PWD:/tmp/site RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 NO_PROXY=127.0.0.1,localhost
T0=$(date +%s)
setsid python3 bench/gpu/launch_app.py "$CONFIG" --num-cpus 16 --temp-dir /tmp/ray-$LABEL > /tmp/app-$LABEL.log 2>&1 < /dev/null &
APP=$!
for _ in $(seq 1 170); do
  sleep 2
  if curl -sf 127.0.0.1:8000/ready >/dev/null; then break; fi
done
echo "healthy after $(( $(date +%s) - T0 )) s"; nvidia-smi --query-gpu=memory.used --format=csv,noheader
for size in 1024x768 4032x3024 512x384; do
  python3 bench/bench_openai.py --model pixtral --image-size $size --requests 120 --warmup 16 --concurrency 64 \
    --gpu-sample --proc-cpu --image-dir /tmp/bench-work/img-$size --label "$LABEL-$size" --out "$OUT/$LABEL-$size.json" 2>&1 | tail -3
done
kill -TERM -- -$APP 2>/dev/null; sleep 10; kill -KILL -- -$APP 2>/dev/null
grep -E "KV cache size|max_num_batched_tokens=" /tmp/app-$LABEL.log | head -3 | cut -c1-200
