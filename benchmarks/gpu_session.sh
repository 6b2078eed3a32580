#!/usr/bin/env bash
# One prepared GPU session (the device tool), in three parts, everything kept under $OUT (at most
# 8 files):
#   1. issue 5's standard set on a quiet GPU (`run_all.py --device cuda`, items BENCH_ITEMS:
#      training-step ratios and counts for deblur and CT, ours vs deepinv), tarred as bench.tgz;
#   2. deblur recipes (benchmarks/configs/NAME.json, VARIANTS) trained side by side for their given
#      STEPS_<NAME> (--max-minutes BUDGET_MIN only as a safety net: the cosine schedule is per step),
#      checkpoints brought back to be ranked here on the validation photos, never the held-out ones;
#   3. the GPU tests (tests/test_gpu.py) beside the trainings.
# DRY_RUN=1 DEVICE=cpu BENCH_ARGS=--quick STEPS_DEFAULT=3 rehearses it on a CPU with what is installed.
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
BENCH_ITEMS=${BENCH_ITEMS:-step,deepinv}
VARIANTS=${VARIANTS-"deblur_unet32 deblur_unet64 deblur_b16"}  # VARIANTS="": no training
BUDGET_MIN=${BUDGET_MIN:-4.0}
REPO=$(pwd)
. "$REPO/benchmarks/gpu_lib.sh"
gpu_setup || exit 1
export OMP_NUM_THREADS=4

log "1. benchmarks: $BENCH_ITEMS"
timeout 200 python3 "$REPO/benchmarks/run_all.py" --device "$DEVICE" --only "$BENCH_ITEMS" --out /tmp/bench \
  ${BENCH_ARGS:-} > /tmp/bench.log 2>&1
log "benchmarks rc=$?"
tail -40 /tmp/bench.log >> "$OUT/log.txt"
cp /tmp/bench.log /tmp/bench/run.log 2>/dev/null
tar czf "$OUT/bench.tgz" -C /tmp bench 2>/dev/null

log "2. training $VARIANTS"
for v in $VARIANTS; do
  key=STEPS_$(echo "${v#deblur_}" | tr a-z A-Z)  # e.g. STEPS_UNET32 for deblur_unet32
  start_training "$v" "${!key:-${STEPS_DEFAULT:-2000}}" "$BUDGET_MIN"
done
log "3. gpu tests"
run_gpu_tests
wait
log "trainings done"
for v in $VARIANTS; do collect_training "$v"; done
log "done"
