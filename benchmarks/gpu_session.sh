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
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
if [ -z "${DRY_RUN:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >> "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
# Run from elsewhere: the checkout's jfb_inverse/ lacks cli/ and datasets/ (they install into it).
mkdir -p /tmp/work && cd /tmp/work || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/log.txt" 2>&1
python3 -c "import torch, deepinv, jfb_inverse.cli; print('torch', torch.__version__, 'deepinv', deepinv.__version__)" \
  >> "$OUT/log.txt" 2>&1 || { log "imports failed"; exit 1; }

log "1. benchmarks: $BENCH_ITEMS"
timeout 200 python3 "$REPO/benchmarks/run_all.py" --device "$DEVICE" --only "$BENCH_ITEMS" --out /tmp/bench \
  ${BENCH_ARGS:-} > /tmp/bench.log 2>&1
log "benchmarks rc=$?"
tail -40 /tmp/bench.log >> "$OUT/log.txt"
cp /tmp/bench.log /tmp/bench/run.log 2>/dev/null
tar czf "$OUT/bench.tgz" -C /tmp bench 2>/dev/null

log "2. training $VARIANTS"
for v in $VARIANTS; do
  key=STEPS_$(echo "${v#deblur_}" | tr a-z A-Z)
  steps=${!key:-${STEPS_DEFAULT:-2000}}  # e.g. STEPS_UNET32 for deblur_unet32
  log "$v: $steps steps"
  # SIGINT after the budget and a margin: the trainer then checkpoints and exits cleanly.
  timeout -s INT $(python3 -c "print(int($BUDGET_MIN * 60 + 45))") python3 -m jfb_inverse.cli train \
    --config "$REPO/benchmarks/configs/$v.json" --preset full --steps "$steps" --device "$DEVICE" \
    --out "/tmp/runs/$v" --max-minutes "$BUDGET_MIN" > "/tmp/train_$v.log" 2>&1 &
done
if [ "$DEVICE" = cuda ]; then
  mkdir -p /tmp/t && cp -r "$REPO/tests" /tmp/t/ && (cd /tmp/t && timeout 150 python3 -m pytest -q -m gpu \
    -p no:cacheprovider tests/test_gpu.py > /tmp/pytest_gpu.log 2>&1)
  log "3. gpu tests rc=$?"
fi
wait
log "trainings done"
for v in $VARIANTS; do
  # Without the optimiser state (two thirds of the file; a returned file must stay under 16 MiB).
  python3 -c "import sys, torch; d = torch.load(sys.argv[1], map_location='cpu', weights_only=True); \
d.pop('optimizer', None); torch.save(d, sys.argv[2])" "/tmp/runs/$v/model.pt" "$OUT/$v.pt" 2>/dev/null \
    || log "$v: no model.pt"
  sed "s/^{/{\"variant\": \"$v\", /" "/tmp/runs/$v/history.jsonl" >> "$OUT/histories.jsonl" 2>/dev/null
  { echo "== $v"; grep -v "━" "/tmp/train_$v.log" | tail -30; } >> "$OUT/log.txt"
done
[ "$DEVICE" = cuda ] && { echo "== pytest -m gpu"; cat /tmp/pytest_gpu.log; } >> "$OUT/log.txt"
log "done"
