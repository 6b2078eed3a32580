#!/usr/bin/env bash
# One prepared GPU session (the device tool) for `cuda_graph=True` (tenth session), kept under $OUT:
#   1. the GPU tests (tests/test_gpu.py), the new CUDA-graph tests among them;
#   2. ours against deepinv's DEQ-PGD (vs_deepinv.py, whose CUDA variants include ours with
#      cuda_graph=True) at SIZES (default: 128x16 twice, then 256x32).
# DRY_RUN=1 DEVICE=cpu SIZES="32x2" rehearses it on a CPU with what is installed.
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-"128x16 128x16 256x32"}
REPO=$(pwd)
. "$REPO/benchmarks/gpu_lib.sh"
gpu_setup || exit 1
export OMP_NUM_THREADS=4
mkdir -p /tmp/res
log "1. gpu tests"
run_gpu_tests
log "2. vs deepinv: $SIZES"
n=0
for size in $SIZES; do
  n=$((n + 1))
  timeout 120 python3 "$REPO/benchmarks/vs_deepinv.py" --device "$DEVICE" --patch "${size%x*}" --batch "${size#*x}" \
    --out "/tmp/res/vs${size}_$n" > "/tmp/res/vs${size}_$n.log" 2>&1
  log "vs $size ($n) rc=$?"
  grep -v "━\|USDT\|^ERROR:" "/tmp/res/vs${size}_$n.log" | tail -4 >> "$OUT/log.txt"
done
find /tmp/res -name "*.png" -delete
tar czf "$OUT/results.tgz" -C /tmp res 2>/dev/null
log "done"
