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
. "$REPO/benchmarks/gpu_lib.sh"
gpu_setup || exit 1
export OMP_NUM_THREADS=3

log "training $VARIANTS: $STEPS steps each"
budget_min=$(python3 -c "print($BUDGET_S / 60)")  # --max-minutes; SIGINT 60 s later
for v in $VARIANTS; do
  start_training "$v" "$STEPS" "$budget_min" --lipschitz-every "${LIPSCHITZ_EVERY:-0}"
done
run_gpu_tests
wait
log "trainings done"
for v in $VARIANTS; do collect_training "$v"; done
log "done"
