#!/usr/bin/env bash
# One prepared GPU session (the device tool): train several CT recipes side by side on the one GPU,
# each for STEPS steps with its full cosine schedule (--max-minutes only as a safety net), and bring
# the checkpoints back to be ranked on validation phantoms here (benchmarks/validation_score.py),
# never on the held-out ones. The GPU tests run beside the trainings. Everything kept lands in $OUT
# (at most 8 files: one checkpoint per variant, histories.jsonl, log.txt).
#
# STEPS comes from a measured rate, not from a calibration run: on a fresh machine the first run's
# CUDA kernel JIT made a 25-second calibration read 0.16 steps/s against ~2.5 steps/s in the real
# run (4 CT U-Net trainings sharing an H200, 1,000 steps in 6.6 minutes, 2026-11-27).
#   STEPS, BUDGET_S (the --max-minutes safety net), VARIANTS (benchmarks/configs/NAME.json),
#   LIPSCHITZ_EVERY, DEVICE, DRY_RUN=1 (use the packages installed here: a CPU rehearsal)
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-1000}
BUDGET_S=${BUDGET_S:-420}
VARIANTS=${VARIANTS:-"ct_full ct_full_sn ct_unet ct_unet_sn"}
REPO=$(pwd)
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
if [ -z "${DRY_RUN:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >> "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3
# Run from elsewhere: the checkout's jfb_inverse/ lacks cli/ and datasets/ (they install into it).
mkdir -p /tmp/work && cd /tmp/work || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/log.txt" 2>&1
python3 -c "import torch, deepinv, jfb_inverse.cli; print('torch', torch.__version__, 'deepinv', deepinv.__version__)" \
  >> "$OUT/log.txt" 2>&1 || { log "imports failed"; exit 1; }

log "training $VARIANTS: $STEPS steps each"
cap_min=$(python3 -c "print($BUDGET_S * 1.1 / 60)")
for v in $VARIANTS; do
  # SIGINT after the budget and a margin: the trainer then checkpoints and exits cleanly.
  timeout -s INT $((BUDGET_S + 60)) python3 -m jfb_inverse.cli train --config "$REPO/benchmarks/configs/$v.json" \
    --preset full --steps "$STEPS" --device "$DEVICE" --out "/tmp/runs/$v" --max-minutes "$cap_min" \
    --lipschitz-every "${LIPSCHITZ_EVERY:-0}" > "/tmp/train_$v.log" 2>&1 &
done
if [ "$DEVICE" = cuda ]; then
  mkdir -p /tmp/t && cp -r "$REPO/tests" /tmp/t/ && (cd /tmp/t && timeout 150 python3 -m pytest -q -m gpu \
    -p no:cacheprovider tests/test_gpu.py > /tmp/pytest_gpu.log 2>&1)
  log "gpu tests rc=$?"
fi
wait
log "trainings done"
for v in $VARIANTS; do
  cp "/tmp/runs/$v/model.pt" "$OUT/$v.pt" 2>/dev/null || log "$v: no model.pt"
  sed "s/^{/{\"variant\": \"$v\", /" "/tmp/runs/$v/history.jsonl" >> "$OUT/histories.jsonl" 2>/dev/null
  { echo "== $v"; grep -v "━" "/tmp/train_$v.log" | tail -30; } >> "$OUT/log.txt"
done
[ "$DEVICE" = cuda ] && { echo "== pytest -m gpu"; tail -15 /tmp/pytest_gpu.log; } >> "$OUT/log.txt"
log "done"
