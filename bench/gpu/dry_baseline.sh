#!/usr/bin/env bash
# Dry-run stand-in for gpu-kit's serve_baseline.sh (no GPU vLLM on the CPU machine): the same
# interface (PORT, extra flags, own process session, pgid file, waits for /health, prints
# "healthy after N s"), serving bench/gpu/fake_openai.py instead of `vllm serve`.
PORT=${PORT:-8100}
PGID_FILE=${BENCH_BASELINE_PGID_FILE:?}
LOG=${BENCH_BASELINE_LOG:?}
if [ -f "$PGID_FILE" ]; then kill -- -"$(cat "$PGID_FILE")" 2>/dev/null; sleep 1; fi
setsid nohup "${BENCH_PYTHON:-python3}" "$(dirname "$0")/fake_openai.py" --port "$PORT" "$@" > "$LOG" 2>&1 < /dev/null &
echo $! > "$PGID_FILE"
T0=$(date +%s)
for _ in $(seq 1 60); do
  sleep 1
  if curl -sf "127.0.0.1:$PORT/health" >/dev/null; then echo "fake vllm serve healthy after $(( $(date +%s) - T0 )) s"; exit 0; fi
  if ! kill -0 "$(cat "$PGID_FILE")" 2>/dev/null; then echo "fake vllm serve died:"; tail -30 "$LOG"; exit 1; fi
done
echo "fake vllm serve not healthy after 60 s"; exit 1
