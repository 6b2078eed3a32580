#!/usr/bin/env bash
# One prepared GPU session (the device tool): train several CT recipes side by side on the one GPU
# for the same wall-clock budget, each with a full cosine schedule, and bring the checkpoints back
# to be ranked on validation phantoms here (benchmarks/validation_score.py), never on the held-out ones.
#
# A short calibration run of every variant (all at once, as in the real run) measures its steps/s;
# the real run then gets steps = rate x budget x 0.85, so the learning rate decays fully within the
# budget instead of being cut off by --max-minutes (which stays as a safety net).
# The GPU tests run beside the trainings. Everything kept lands in $OUT (at most 8 files).
#   BUDGET_S (training seconds per variant), CAL_S, VARIANTS (benchmarks/configs/NAME.json),
#   DEVICE, DRY_RUN=1 (use the packages installed here: a CPU rehearsal)
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-420}
CAL_S=${CAL_S:-25}
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

declare -A STEPS
if [ -n "${FIXED_STEPS:-}" ]; then for v in $VARIANTS; do STEPS[$v]=$FIXED_STEPS; done; fi
[ -z "${FIXED_STEPS:-}" ] && log "calibration (${CAL_S} s each, all at once)"
for v in $([ -z "${FIXED_STEPS:-}" ] && echo $VARIANTS); do
  python3 - "$REPO/benchmarks/configs/$v.json" "/tmp/cal/$v" "$CAL_S" "$DEVICE" > "/tmp/cal_$v.log" 2>&1 <<'EOF' &
import json, sys
from jfb_inverse.problems import config_from_file_or_problem
from jfb_inverse.training.loop import train
cfg = config_from_file_or_problem(None, sys.argv[1], {"training": {
    "steps": 100000, "log_every": 1, "checkpoint_every": 100000, "max_minutes": float(sys.argv[3]) / 60,
    "device": sys.argv[4]}}, preset="full")
result = train(cfg, sys.argv[2])
last = result.history[-1]
print(json.dumps({"steps_per_s": last["step"] / last["seconds"], **last}))
EOF
done
wait
for v in $([ -z "${FIXED_STEPS:-}" ] && echo $VARIANTS); do
  rate=$(tail -1 "/tmp/cal_$v.log" | python3 -c "import json,sys; print(json.load(sys.stdin)['steps_per_s'])" 2>/dev/null)
  if [ -z "$rate" ]; then log "calibration of $v failed:"; tail -5 "/tmp/cal_$v.log" >> "$OUT/log.txt"; continue; fi
  STEPS[$v]=$(python3 -c "print(max(20, int($rate * $BUDGET_S * 0.85)))")
  log "$v: $rate steps/s in calibration -> ${STEPS[$v]} steps"
done

log "training"
cap_min=$(python3 -c "print($BUDGET_S * 1.1 / 60)")
for v in "${!STEPS[@]}"; do
  # SIGINT after the budget and a margin: the trainer then checkpoints and exits cleanly.
  timeout -s INT $((BUDGET_S + 60)) python3 -m jfb_inverse.cli train --config "$REPO/benchmarks/configs/$v.json" \
    --preset full --steps "${STEPS[$v]}" --device "$DEVICE" --out "/tmp/runs/$v" --max-minutes "$cap_min" \
    --lipschitz-every "${LIPSCHITZ_EVERY:-0}" > "/tmp/train_$v.log" 2>&1 &
done
if [ "$DEVICE" = cuda ]; then
  mkdir -p /tmp/t && cp -r "$REPO/tests" /tmp/t/ && (cd /tmp/t && timeout 150 python3 -m pytest -q -m gpu \
    -p no:cacheprovider tests/test_gpu.py > /tmp/pytest_gpu.log 2>&1)
  log "gpu tests rc=$?"
fi
wait
log "trainings done"
for v in "${!STEPS[@]}"; do
  cp "/tmp/runs/$v/model.pt" "$OUT/$v.pt" 2>/dev/null || log "$v: no model.pt"
  sed "s/^{/{\"variant\": \"$v\", /" "/tmp/runs/$v/history.jsonl" >> "$OUT/histories.jsonl" 2>/dev/null
  { echo "== $v"; grep -v "━" "/tmp/train_$v.log" | tail -30; } >> "$OUT/log.txt"
done
[ "$DEVICE" = cuda ] && { echo "== pytest -m gpu"; tail -15 /tmp/pytest_gpu.log; } >> "$OUT/log.txt"
log "done"
