"""Score a checkpoint on validation images that are in neither the training nor the held-out
split, with the problem's baselines, to rank recipes without touching the held-out images.

    python benchmarks/validation_score.py builtin:deblur
    python benchmarks/validation_score.py builtin:ct
    python benchmarks/validation_score.py builtin:deblur --equivariance rotations

Image-domain problems: two photos (matplotlib's ``grace_hopper``, scikit-image's ``clock``).
Phantom-trained problems (CT): 16 ellipse phantoms of a seed that neither the training stream
(seed * 1,000,003 + draw) nor the held-out phantoms (``EVAL_PHANTOM_SEED``) use.
Prints the mean PSNR/SSIM per method and the fixed-point iterations per image (noise seed 0).
"""

from __future__ import annotations

import argparse
import json

import torch
from jfb_inverse.datasets.phantoms import ellipse_phantoms
from recipe_ablation import validation_images

from jfb_inverse.evaluation import evaluate
from jfb_inverse.problems import ProblemConfig
from jfb_inverse.training.checkpoint import load_model
from jfb_inverse.training.data import EVAL_PHANTOM_SEED

VALIDATION_PHANTOM_SEED = 20_000_003
VALIDATION_PHANTOMS = 16
assert VALIDATION_PHANTOM_SEED != EVAL_PHANTOM_SEED


def validation_set(cfg: ProblemConfig) -> list[tuple[str, torch.Tensor]]:
    """The validation images for a definition: phantoms for phantom-trained problems, else photos."""
    if cfg.data.source == "phantoms":
        x = ellipse_phantoms(VALIDATION_PHANTOMS, cfg.data.eval_size, seed=VALIDATION_PHANTOM_SEED)
        return [(f"val_phantom{i}", x[i].expand(cfg.data.channels, -1, -1).clone()) for i in range(len(x))]
    return validation_images()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="builtin:deblur, builtin:ct, a run folder or a model.pt")
    parser.add_argument(
        "--equivariance", choices=("none", "rotations", "dihedral"), default=None, help="override the checkpoint's"
    )
    args = parser.parse_args()
    model, cfg, physics = load_model(args.checkpoint, "cpu")
    if args.equivariance is not None:
        model.equivariance = args.equivariance
    report = evaluate(model, physics, cfg, validation_set(cfg), seed=0, with_baselines=True)
    print(
        json.dumps(
            {
                "checkpoint": args.checkpoint,
                "equivariance": model.equivariance,
                "psnr": report.report["mean"]["psnr"],
                "ssim": report.report["mean"]["ssim"],
                "iterations": report.iterations,
                "converged": sum(report.converged),
            }
        )
    )


if __name__ == "__main__":
    main()
