"""The built-in problems. Importing this module registers them."""

from __future__ import annotations

from jfb_inverse.problems.config import PLACEHOLDER_TARGET
from jfb_inverse.problems.registry import register_problem

# DEBLUR-G, the reference deblurring task: Gaussian blur sigma 2 px, circular boundary,
# Gaussian noise sigma 0.01, grayscale images in [0, 1].
register_problem(
    "deblur",
    "Deblurring (DEBLUR-G): Gaussian kernel sigma 2 px, circular boundary, noise sigma 0.01",
    {
        "operator": {"kind": "blur", "kernel": "gaussian", "sigma": 2.0},
        "noise": {"kind": "gaussian", "sigma": 0.01},
        "data": {"source": "builtin", "channels": 1, "patch_size": 64, "eval_size": 128},
        "model": {"step": "prox", "width": 32, "depth": 5, "eta_init": 3.0, "init": "tikhonov", "init_lam": 0.01},
        "solver": {"name": "anderson", "tol": 1e-3, "max_iter": 30},
        # 3,600 fresh-batch steps fit the 10-minute budget on a 2-core CPU with native bf16 (precision
        # auto: 1.5x faster steps than fp32). Reusing each batch 4 times, 8 steps apart, with warm
        # starts makes a step 0.84x as long, so 4,300 steps take about as long; at two seeds they
        # scored +0.16 dB on the training images and +0.19 on the validation photos over 3,600
        # fresh ones (README, "Deblurring"). "minutes" guards that budget on slower CPUs (without
        # bf16 a step costs about twice as much): where 4,300 steps would take longer than 9 minutes
        # of training, the step count is fitted to 9 minutes instead. Where they fit, the run is
        # bitwise the one without the guard; --steps (or a preset's steps) lifts it.
        "training": {
            "steps": 4300,
            "minutes": 9.0,
            "batch_size": 8,
            "lr": 2e-3,
            "log_every": 50,
            "checkpoint_every": 250,
            "batch_reuse": 4,
            "reuse_gap": 8,
        },
    },
    presets={
        # The recipe of the shipped builtin:deblur. Longer training is what helps: wider, deeper or
        # U-Net regularisers, other losses, batch sizes and tolerances changed a 700-step score by at
        # most 0.06 dB (benchmarks/results/recipe_ablation.jsonl), 700 -> 2500 steps by +0.6 dB.
        # fp32 and a fresh batch every step: the shipped model predates precision auto and batch
        # reuse, and the preset reproduces it.
        "full": {
            "training": {
                "steps": 8000,
                "log_every": 100,
                "checkpoint_every": 500,
                "lipschitz_every": 500,
                "precision": "fp32",
                "batch_reuse": 1,
            }
        },
        "quick": {"training": {"steps": 20, "log_every": 5, "checkpoint_every": 10}},
    },
)

_QUICK = {"training": {"steps": 20, "log_every": 5, "checkpoint_every": 10}}

# CT-30, the reference tomography task: parallel beam, 30 angles evenly in [0, 180), 128x128 images,
# Gaussian noise with sigma = 1.5% of each clean sinogram's maximum, random-ellipse phantoms.
# Consistency step: F-FPN's relaxed projection with a filtered back-projection (ramp x Hann) as the
# preconditioner, v - eta FBP(A v - y). It costs one A and one A^T per iteration like a gradient
# step, but FBP approximates the pseudo-inverse, so the untrained network already beats FBP and
# converges in ~16 Anderson iterations; the plain gradient step (badly conditioned A^T A) gave
# 1 dB less untrained and, trained, hit the 30-iteration cap on every step. The proximal step has
# no closed form for CT (a conjugate gradient in every iteration: twice the time per step).
register_problem(
    "ct",
    "Sparse-view CT (CT-30): parallel beam, 30 angles in [0, 180), 128x128 phantoms, noise 1.5% of max",
    {
        "operator": {"kind": "ct", "angles": 30, "angular_range": 180.0},
        "noise": {"kind": "gaussian", "sigma": 0.015, "relative": True},
        "data": {"source": "phantoms", "channels": 1, "patch_size": 128, "eval_size": 128},
        "model": {"step": "filtered", "width": 32, "depth": 5, "eta_init": 0.5, "init": "adjoint"},
        "solver": {"name": "anderson", "tol": 1e-3, "max_iter": 30, "eval_tol": 1e-3},
        "training": {"steps": 600, "batch_size": 8, "lr": 2e-3},
    },
    presets={
        # The recipe of the shipped builtin:ct (1,000 steps, 6.6 minutes on an H200 beside three other
        # runs). Of four recipes trained side by side (benchmarks/gpu_ct_sweep.sh) it scored best on
        # validation phantoms; the 48-channel 7-layer dilated CNN 0.19 dB lower, spectral
        # normalisation 0.1-0.2 dB lower (benchmarks/results/ct_gpu_sweep.json).
        "full": {"model": {"arch": "unet", "width": 32}, "training": {"steps": 1000, "batch_size": 16}},
        "quick": _QUICK,
    },
)

# What the image-domain problems below share with deblurring (noise 0.01, grey 64x64 training
# patches, an HQS map with a Tikhonov start, 600 steps); each adds its operator.
_IMAGE_DOMAIN: dict = {
    "noise": {"kind": "gaussian", "sigma": 0.01},
    "data": {"source": "builtin", "channels": 1, "patch_size": 64, "eval_size": 128},
    "model": {"step": "prox", "width": 32, "depth": 5, "eta_init": 3.0, "init": "tikhonov", "init_lam": 0.01},
    "solver": {"name": "anderson", "tol": 1e-3, "max_iter": 30},
    "training": {"steps": 600, "batch_size": 8, "lr": 2e-3},
}

# Inpainting: half of the pixels missing (one random mask per image size), noise sigma 0.01.
# The physics is SVD-diagonal, so the proximal step and the Tikhonov start are closed forms.
register_problem(
    "inpainting",
    "Inpainting: 50% of the pixels missing at random (fixed mask), noise sigma 0.01",
    {
        "operator": {"kind": "inpainting", "missing": 0.5, "mask_seed": 0},
        **_IMAGE_DOMAIN,
    },
    presets={"quick": _QUICK},
)

# Super-resolution x2: Gaussian blur sigma 1 px then decimation, circular boundary (so deepinv's
# FFT prox applies), noise sigma 0.01.
register_problem(
    "superres",
    "Super-resolution x2: Gaussian blur sigma 1 px then downsampling, noise sigma 0.01",
    {
        "operator": {"kind": "superres", "factor": 2, "sigma": 1.0},
        **_IMAGE_DOMAIN,
    },
    presets={"quick": _QUICK},
)

# Single-coil Cartesian MRI x4: a quarter of the k-space columns, the central 8% fully sampled,
# complex Gaussian noise sigma 0.01 (the FFT is orthonormal, so this is the image-domain level).
# A^T A is diagonal in Fourier space, so the proximal step is an FFT closed form.
register_problem(
    "mri",
    "Single-coil Cartesian MRI x4: 25% of k-space columns, 8% centre fully sampled, noise sigma 0.01",
    {
        "operator": {"kind": "mri", "acceleration": 4, "center_fraction": 0.08, "mask_seed": 0},
        **_IMAGE_DOMAIN,
    },
    presets={"quick": _QUICK},
)

# A user's operator (`jfb-inverse train --operator path/to/ops.py:ClassName`): deblurring's data,
# model and training settings with a gradient step, which needs only A and A^T (a proximal step
# would run a conjugate gradient in every iteration for an operator without a closed form). The
# placeholder target makes the problem unusable until an operator is given (a clear error).
register_problem(
    "custom",
    "Your own operator: --operator path/to/ops.py:ClassName [--operator-args JSON]",
    {
        "operator": {"kind": "custom", "target": PLACEHOLDER_TARGET},
        **_IMAGE_DOMAIN,
        "model": {**_IMAGE_DOMAIN["model"], "step": "gradient", "eta_init": 1.0},
    },
    presets={"quick": _QUICK},
)
