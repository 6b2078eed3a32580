"""The built-in problems. Importing this module registers them."""

from __future__ import annotations

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
        "training": {"steps": 600, "batch_size": 8, "lr": 2e-3},
    },
    presets={
        "full": {"model": {"width": 48, "depth": 7}, "training": {"steps": 6000, "batch_size": 16}},
        "quick": {"training": {"steps": 20, "log_every": 5, "checkpoint_every": 10}},
    },
)
