#!/usr/bin/env bash
# One prepared GPU session (the device tool): install carried wheels, train the shipped models
# (deblur full preset and CT) side by side on the one GPU, run the GPU tests meanwhile, then the
# GPU scale benchmark on a quiet GPU. Everything kept lands in $OUT (at most 8 files).
# Sizes come from the environment so the same script can be dry-run on a CPU:
#   DEBLUR_STEPS, CT_STEPS, DEBLUR_MIN, CT_MIN, DEVICE, SCALE_ARGS
set -u
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }
if [ -z "${DRY_RUN:-}" ]; then  # DRY_RUN=1: use the packages already installed (a CPU rehearsal)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >> "$OUT/log.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/log.txt" 2>&1
python3 -c "import torch, deepinv; print('torch', torch.__version__, 'deepinv', deepinv.__version__)" >> "$OUT/log.txt" 2>&1
log "start trainings"
python3 -m jfb_inverse.cli train --problem deblur --preset full --steps "${DEBLUR_STEPS:-1800}" --device "$DEVICE" \
  --out /tmp/runs/deblur --max-minutes "${DEBLUR_MIN:-1.5}" > /tmp/deblur.log 2>&1 &
P1=$!
python3 -m jfb_inverse.cli train --problem ct --preset full --steps "${CT_STEPS:-500}" --device "$DEVICE" \
  --out /tmp/runs/ct --max-minutes "${CT_MIN:-1.3}" > /tmp/ct.log 2>&1 &
P2=$!
mkdir -p /tmp/t && cp -r tests /tmp/t/ && (cd /tmp/t && timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_gpu.py > /tmp/pytest_gpu.log 2>&1)
log "gpu tests rc=$?"
wait $P1; log "deblur rc=$?"
cp /tmp/runs/deblur/model.pt "$OUT/deblur.pt" 2>/dev/null; cp /tmp/runs/deblur/history.jsonl "$OUT/deblur_history.jsonl" 2>/dev/null
wait $P2; log "ct rc=$?"
cp /tmp/runs/ct/model.pt "$OUT/ct.pt" 2>/dev/null; cp /tmp/runs/ct/history.jsonl "$OUT/ct_history.jsonl" 2>/dev/null
{ echo "== pytest -m gpu"; tail -15 /tmp/pytest_gpu.log; echo "== deblur"; grep -v "━" /tmp/deblur.log | tail -25;
  echo "== ct"; grep -v "━" /tmp/ct.log | tail -25; } >> "$OUT/log.txt"
log "scale benchmark"
timeout 70 python3 benchmarks/gpu_scale.py --device "$DEVICE" --out "$OUT/gpu_scale.json" --repeats 3 ${SCALE_ARGS:-} \
  >> "$OUT/log.txt" 2>&1
log "done rc=$?"
