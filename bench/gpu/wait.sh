#!/usr/bin/env bash
# Follow bench/gpu/run_all.sh: print its progress for up to N seconds (exits early when the
# run is done or gone), then copy /tmp/bench-results/* into $OUT (at most 8 files, each at
# most 16 MiB, names [A-Za-z0-9._-] only).   bash bench/gpu/wait.sh [N=540] [DEST=$OUT]
N=${1:-540}
DEST=${2:-${OUT:-}}
if [ "${BENCH_DRY_RUN:-0}" = 1 ]; then ROOT=${BENCH_ROOT:-/tmp/bench-dry}; else ROOT=/tmp; fi
RESULTS=${BENCH_RESULTS:-$ROOT/bench-results}
WORK=${BENCH_WORK:-$ROOT/bench-work}
END=$((SECONDS + N)); SHOWN=0
while :; do
  if [ -f "$RESULTS/progress.log" ]; then
    LINES=$(wc -l < "$RESULTS/progress.log")
    [ "$LINES" -lt "$SHOWN" ] && SHOWN=0  # a new run started over
    if [ "$LINES" -gt "$SHOWN" ]; then tail -n +"$((SHOWN + 1))" "$RESULTS/progress.log" | head -n "$((LINES - SHOWN))"; SHOWN=$LINES; fi
  fi
  if [ -f "$WORK/DONE" ]; then echo "wait.sh: run finished ($(cat "$WORK/DONE"))"; break; fi
  if [ -f "$WORK/run_all.pid" ] && ! kill -0 "$(cat "$WORK/run_all.pid")" 2>/dev/null; then
    echo "wait.sh: run_all is not running and left no DONE marker; its output:"; tail -40 "$WORK/run_all.out" 2>/dev/null; break
  fi
  if [ ! -f "$WORK/run_all.pid" ]; then echo "wait.sh: no run started ($WORK/run_all.pid missing)"; break; fi
  [ "$SECONDS" -ge "$END" ] && { echo "wait.sh: still running after ${N}s"; break; }
  LEFT=$((END - SECONDS)); sleep $(( LEFT < 10 ? LEFT : 10 ))
done
if [ -n "$DEST" ]; then
  mkdir -p "$DEST"; n=0
  for f in "$RESULTS"/*; do
    [ -f "$f" ] || continue
    b=$(basename "$f")
    [[ "$b" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "wait.sh: skipping odd name $b"; continue; }
    [ $n -ge 8 ] && { echo "wait.sh: more than 8 files, left out $b"; continue; }
    if [ "$(stat -c %s "$f")" -gt 16000000 ]; then tail -c 16000000 "$f" > "$DEST/$b"; else cp "$f" "$DEST/$b"; fi
    n=$((n + 1))
  done
  echo "wait.sh: copied $n files to $DEST"; ls -la "$DEST"
fi
