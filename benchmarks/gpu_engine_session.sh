#!/usr/bin/env bash
# One prepared GPU session (the device tool) for the solvers' per-iteration bookkeeping (tenth
# session), everything kept under $OUT (at most 8 files):
#   1. benchmarks/solver_kernels.py with this engine and with the previous one (the wheel in
#      .whl/old/, built from the commit before the change): kernels and microseconds per iteration;
#   2. ours against deepinv's DEQ-PGD at 128x128 x 16, the previous engine and this one
#      alternating by process, twice each (the size where launches bound an iteration);
#   3. issue 5's standard set (`run_all.py --only step,deepinv`) and vs_deepinv at 256x32 and
#      512x16 with this engine and today's `auto` layout;
#   4. the GPU tests (tests/test_gpu.py).
# DRY_RUN=1 DEVICE=cpu QUICK=--quick rehearses it on a CPU with what is installed.
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
REPO=$(pwd)
. "$REPO/benchmarks/gpu_lib.sh"
gpu_setup || exit 1
export OMP_NUM_THREADS=4
B="$REPO/benchmarks"
OLD=/tmp/site_old
if [ -z "${DRY_RUN:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$OLD" "$REPO"/.whl/old/*.whl \
    || log "old wheel install failed"
  OLDPATH="$OLD:$PYTHONPATH"
else
  OLDPATH=${OLDPATH:-}
fi
mkdir -p /tmp/res
# py NAME TIMEOUT PYTHONPATH ARGS...: one benchmark run, its output kept in /tmp/res/NAME.log.
py() {
  local name=$1 limit=$2 path=$3
  shift 3
  PYTHONPATH=$path timeout "$limit" python3 "$@" > "/tmp/res/$name.log" 2>&1
  log "$name rc=$?"
  grep -v "━\|USDT\|^ERROR:" "/tmp/res/$name.log" | tail -12 >> "$OUT/log.txt"
}

log "1. solver kernels"
for engine in new old; do
  path=${PYTHONPATH:-}
  [ "$engine" = old ] && path=$OLDPATH
  py "kernels_$engine" 90 "$path" "$B/solver_kernels.py" --device "$DEVICE" $QUICK --out "/tmp/res/kernels_$engine"
done

log "2. vs deepinv 128x16, previous engine / this one, alternating"
for run in 1 2; do
  for engine in old new; do
    path=${PYTHONPATH:-}
    [ "$engine" = old ] && path=$OLDPATH
    py "vs128_${engine}_$run" 120 "$path" "$B/vs_deepinv.py" --device "$DEVICE" $QUICK --patch 128 --batch 16 \
      --out "/tmp/res/vs128_${engine}_$run"
  done
done

log "3. standard set and larger sizes, this engine"
py standard 240 "${PYTHONPATH:-}" "$B/run_all.py" --device "$DEVICE" $QUICK --only step,deepinv --out /tmp/res/standard
for size in "256 32" "512 16"; do
  set -- $size
  py "vs$1" 150 "${PYTHONPATH:-}" "$B/vs_deepinv.py" --device "$DEVICE" $QUICK --patch "$1" --batch "$2" \
    --out "/tmp/res/vs$1"
done

log "4. gpu tests"
run_gpu_tests
find /tmp/res -name "*.png" -delete
tar czf "$OUT/results.tgz" -C /tmp res 2>/dev/null
log "done"
