#!/usr/bin/env bash
# The real-traffic benchmark on the lent GPU machine (after `source /tmp/parts/bin/install.sh`):
#   bash bench/gpu/real_traffic.sh start [run.py args...]  # copy the repo to /tmp/repo, run detached
#   bash bench/gpu/real_traffic.sh poll [SECONDS]          # progress; results to $OUT once DONE
# The device rebuilds the working tree for every call and keeps only /tmp, so the run works
# from its own copy and writes to /tmp/bench.
set -uo pipefail
case "${1:-}" in
  start)
    shift
    rm -rf /tmp/repo /tmp/bench && mkdir -p /tmp/repo /tmp/bench
    tar --exclude=./.git --exclude=./.gpukit --exclude=./.venv --exclude=./.cache -cf - . | tar -C /tmp/repo -xf -
    cd /tmp/repo
    export PYTHONPATH=/tmp/repo:/tmp/site PATH=/tmp/site/bin:$PATH
    export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
    export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    unset RAY_ADDRESS
    setsid nohup python3 bench/run.py --out /tmp/bench/result.json "$@" > /tmp/bench/run.out 2>&1 < /dev/null &
    echo "started pid $!"
    ;;
  poll)
    end=$(( $(date +%s) + ${2:-20} ))
    while [ "$(date +%s)" -lt "$end" ] && ! grep -q DONE /tmp/bench/progress.log 2>/dev/null; do sleep 2; done
    tail -n 4 /tmp/bench/progress.log 2>/dev/null; tail -n 2 /tmp/bench/run.out
    if [ -n "${OUT:-}" ]; then
      cp /tmp/bench/result.json /tmp/bench/progress.log /tmp/bench/run.out "$OUT"/ 2>/dev/null
      for f in /tmp/bench/work/*.log; do tail -n 200 "$f" > "$OUT/$(basename "$f" .log)-tail.txt"; done 2>/dev/null
    fi
    ;;
  *) echo "usage: $0 start|poll"; exit 2 ;;
esac
