#!/usr/bin/env bash
# Shared steps of the prepared GPU sessions (gpu_session.sh, gpu_ct_sweep.sh); source it with REPO
# (the checkout) and OUT (what comes back) set. DRY_RUN=1: use the packages installed here.

log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

# Install the carried wheels, then work from /tmp/work: the checkout's jfb_inverse/ lacks cli/ and
# datasets/ (they install into it). Returns non-zero when the imports fail.
gpu_setup() {
  mkdir -p "$OUT"
  if [ -z "${DRY_RUN:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$REPO"/.whl/*.whl || { log "wheel install failed"; return 1; }
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONUNBUFFERED=1
  mkdir -p /tmp/work && cd /tmp/work || return 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/log.txt" 2>&1
  python3 -c "import torch, deepinv, jfb_inverse.cli; print('torch', torch.__version__, 'deepinv', deepinv.__version__)" \
    >> "$OUT/log.txt" 2>&1 || { log "imports failed"; return 1; }
}

# start_training NAME STEPS BUDGET_MIN [train options...]: benchmarks/configs/NAME.json with the full
# preset, in the background. SIGINT after the budget and a margin: the trainer then checkpoints and
# exits cleanly (the cosine schedule is per step; --max-minutes is only a safety net).
start_training() {
  local name=$1 steps=$2 budget=$3
  shift 3
  log "$name: $steps steps"
  timeout -s INT "$(python3 -c "print(int($budget * 60 + 60))")" python3 -m jfb_inverse.cli train \
    --config "$REPO/benchmarks/configs/$name.json" --preset full --steps "$steps" --device "${DEVICE:-cuda}" \
    --out "/tmp/runs/$name" --max-minutes "$budget" "$@" > "/tmp/train_$name.log" 2>&1 &
}

# collect_training NAME: the checkpoint without its optimiser state (two thirds of the file; a
# returned file must stay under 16 MiB), the history tagged with the name, the log's tail.
collect_training() {
  local name=$1
  python3 -c "import sys, torch; d = torch.load(sys.argv[1], map_location='cpu', weights_only=True); \
d.pop('optimizer', None); torch.save(d, sys.argv[2])" "/tmp/runs/$name/model.pt" "$OUT/$name.pt" 2>/dev/null \
    || log "$name: no model.pt"
  sed "s/^{/{\"variant\": \"$name\", /" "/tmp/runs/$name/history.jsonl" >> "$OUT/histories.jsonl" 2>/dev/null
  { echo "== $name"; grep -v "━" "/tmp/train_$name.log" | grep -v "steps before step" | tail -30; } >> "$OUT/log.txt"
}

# run_gpu_tests: tests/test_gpu.py from a copy (no cache, no conftest of the checkout's root), CUDA only.
run_gpu_tests() {
  [ "${DEVICE:-cuda}" = cuda ] || return 0
  mkdir -p /tmp/t && cp -r "$REPO/tests" /tmp/t/ && (cd /tmp/t && timeout 150 python3 -m pytest -q -m gpu \
    -p no:cacheprovider tests/test_gpu.py > /tmp/pytest_gpu.log 2>&1)
  log "gpu tests rc=$?"
  { echo "== pytest -m gpu"; cat /tmp/pytest_gpu.log; } >> "$OUT/log.txt"
}
