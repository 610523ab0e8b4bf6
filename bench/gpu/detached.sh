#!/usr/bin/env bash
# A bench runner on a GPU machine, detached, so that later commands only poll. First
# `source /tmp/parts/bin/install.sh`: the wheel kit beside the repository (../shared/gpu-kit)
# installs vLLM 0.25.1, Ray 2.60.0, mistral_common 1.13.1 and transformers 5.16.0 from wheels
# into /tmp/site and writes a Pixtral-12B checkpoint stub (params.json, tekken.json; served
# with `load_format: dummy`, random weights) to /tmp/pixtral-12b.
#   bash bench/gpu/detached.sh start RUNNER [args...]  # copy the repo to /tmp/repo, run RUNNER there
#   bash bench/gpu/detached.sh poll [SECONDS]          # progress; results to $OUT
# RUNNER is bench/run.py with a spec (bench/real_traffic.yaml, bench/reliability.yaml, ...); it writes
# /tmp/bench/result.json and its report beside it (--out is added here). The machine's working tree is rebuilt for every command and only
# /tmp is kept, so the run works from its own copy and writes to /tmp/bench.
set -uo pipefail
case "${1:-}" in
  start)
    runner=${2:?usage: $0 start RUNNER [args...]}
    shift 2
    # A new run keeps the compile caches of the runs before it on this machine (work/caches), so a system
    # started again starts warm; everything else of the last run goes (fetch it with poll first).
    rm -rf /tmp/repo && mkdir -p /tmp/repo /tmp/bench/work
    find /tmp/bench -mindepth 1 -maxdepth 1 ! -name work -exec rm -rf {} +
    find /tmp/bench/work -mindepth 1 -maxdepth 1 ! -name caches -exec rm -rf {} +
    tar --exclude=./.git --exclude=./.gpukit --exclude=./.venv --exclude=./.cache -cf - . | tar -C /tmp/repo -xf -
    cd /tmp/repo
    export PYTHONPATH=/tmp/repo:/tmp/site PATH=/tmp/site/bin:$PATH
    export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
    export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
    unset RAY_ADDRESS
    ulimit -n "$(ulimit -Hn)" 2>/dev/null  # thousands of simultaneous client connections
    # Every installed file read once (CUDA libraries included, which an import does not load), so
    # the first system's first start is a cold compile like the others', not also a cold disk; the CUDA
    # toolkit's compilers and headers too, as a cold start JIT-builds FlashInfer's sampling kernels with
    # nvcc (about 2 minutes, after CUDA-graph capture). -H: /usr/local/cuda/include may be a link.
    { python3 -c 'import sys; print("\n".join(sys.path))' | grep -E 'site-packages|/tmp/site' | sort -u
      ls -d /usr/local/cuda/bin /usr/local/cuda/include /usr/local/cuda/nvvm /usr/local/cuda/targets 2>/dev/null
    } | xargs -r -I{} find -H {} -type f -print0 2>/dev/null | xargs -0 -r cat > /dev/null 2>&1
    # The kit installs without bytecode (pip --no-compile): compiled here, not by whichever system
    # imports a package first (which would make the first system's cold start pay for the others').
    python3 -m compileall -q -j 0 /tmp/site > /dev/null 2>&1
    setsid nohup bash -c 'python3 "$@" --out /tmp/bench/result.json > /tmp/bench/run.out 2>&1 < /dev/null;
                          echo "DONE rc=$?" >> /tmp/bench/progress.log' _ "$runner" "$@" > /dev/null 2>&1 &
    echo "started $runner, pid $!"
    ;;
  poll)
    end=$(( $(date +%s) + ${2:-20} ))
    while [ "$(date +%s)" -lt "$end" ] && ! grep -q DONE /tmp/bench/progress.log 2>/dev/null; do sleep 2; done
    tail -n 4 /tmp/bench/progress.log 2>/dev/null; tail -n 3 /tmp/bench/run.out
    if [ -n "${OUT:-}" ]; then
      cp /tmp/bench/result.* /tmp/bench/progress.log /tmp/bench/run.out "$OUT"/ 2>/dev/null
      # one file each (at most 8 files come back): every system's log tail, and every start's timeline
      # (Ray, Serve, engine, weights, compile), which the tails lose
      for f in /tmp/bench/work/*.log; do echo "== $f"; tail -n 200 "$f"; done > "$OUT/tails.txt" 2>/dev/null
      for f in /tmp/bench/work/*.log; do echo "== $f"; grep -E \
        "start-up: |Running config|Started a local Ray|Started Serve|Initializing a V1|took|Starting vLLM|Graph capturing|Kernel JIT|Compiling a graph|FlashInfer|startup complete|We must use|non-default args|Started server process" "$f" | cut -c1-240
      done > "$OUT/timelines.txt" 2>/dev/null
    fi
    ;;
  *) echo "usage: $0 start RUNNER [args...] | poll [SECONDS]"; exit 2 ;;
esac
