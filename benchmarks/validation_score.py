"""Score a checkpoint on validation images that are in neither the training nor the held-out
split, with the problem's baselines, to rank recipes without touching the held-out images.

    python benchmarks/validation_score.py builtin:deblur
    python benchmarks/validation_score.py builtin:ct
    python benchmarks/validation_score.py builtin:deblur --equivariance rotations
    python benchmarks/validation_score.py RUN --train-images
    python benchmarks/validation_score.py RUN --more-photos   # six photos (pip install PyWavelets scikit-learn)

``--train-images`` also scores the 13 built-in training images (128 px, image-domain problems;
seen in training, so they rank recipes, not claim quality). Two photos are few: a bias-free
regulariser led on them by 0.13-0.29 dB and trailed on the training images (and held out) by up
to 0.37 dB, on images with flat or dark backgrounds (README, "Deblurring"). Rank by both.

Image-domain problems: two photos (matplotlib's ``grace_hopper``, scikit-image's ``clock``); with
``--more-photos`` six, adding PyWavelets' ``aero`` and ``ascent`` and scikit-learn's ``china`` and
``flower`` (those packages are not dependencies of jfb-inverse). On the six, the default recipe's
model scores 28.93 dB against TV's 28.05 (seventeenth session).
Phantom-trained problems (CT): 16 ellipse phantoms of a seed that neither the training stream
(seed * 1,000,003 + draw) nor the held-out phantoms (``EVAL_PHANTOM_SEED``) use.
Prints the mean PSNR/SSIM per method and the fixed-point iterations per image (noise seed 0).
"""

from __future__ import annotations

import argparse
import json

import torch
from jfb_inverse.datasets.phantoms import ellipse_phantoms
from recipe_ablation import more_validation_photos, training_images, validation_images

from jfb_inverse.evaluation import evaluate
from jfb_inverse.problems import ProblemConfig
from jfb_inverse.training.checkpoint import load_model
from jfb_inverse.training.data import EVAL_PHANTOM_SEED

VALIDATION_PHANTOM_SEED = 20_000_003
VALIDATION_PHANTOMS = 16
assert VALIDATION_PHANTOM_SEED != EVAL_PHANTOM_SEED


def validation_set(cfg: ProblemConfig, more_photos: bool = False) -> list[tuple[str, torch.Tensor]]:
    """The validation images for a definition: phantoms for phantom-trained problems, else photos
    (with ``more_photos``, the four of :func:`recipe_ablation.more_validation_photos` too)."""
    if cfg.data.source == "phantoms":
        x = ellipse_phantoms(VALIDATION_PHANTOMS, cfg.data.eval_size, seed=VALIDATION_PHANTOM_SEED)
        return [(f"val_phantom{i}", x[i].expand(cfg.data.channels, -1, -1).clone()) for i in range(len(x))]
    if not more_photos:
        return validation_images()
    more = more_validation_photos()
    if not more:
        raise SystemExit("--more-photos needs PyWavelets and scikit-learn: pip install PyWavelets scikit-learn")
    return validation_images() + more


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="builtin:deblur, builtin:ct, a run folder or a model.pt")
    parser.add_argument(
        "--equivariance", choices=("none", "rotations", "dihedral"), default=None, help="override the checkpoint's"
    )
    parser.add_argument(
        "--train-images", action="store_true", help="also score the built-in training images (image-domain problems)"
    )
    parser.add_argument(
        "--more-photos",
        action="store_true",
        help="six validation photos instead of two (needs PyWavelets and scikit-learn; grey image problems)",
    )
    args = parser.parse_args()
    model, cfg, physics = load_model(args.checkpoint, "cpu")
    if args.equivariance is not None:
        model.equivariance = args.equivariance
    if args.train_images and cfg.data.source == "phantoms":
        parser.error("--train-images scores image-domain problems; this checkpoint trains on phantoms")
    report = evaluate(model, physics, cfg, validation_set(cfg, args.more_photos), seed=0, with_baselines=True)
    result = {
        "checkpoint": args.checkpoint,
        "equivariance": model.equivariance,
        "psnr": report.report["mean"]["psnr"],
        "ssim": report.report["mean"]["ssim"],
        "iterations": report.iterations,
        "converged": sum(report.converged),
    }
    if args.train_images:
        seen = evaluate(model, physics, cfg, training_images(cfg.data.channels), seed=0, with_baselines=True).report
        result["train_images_psnr"] = seen["mean"]["psnr"]
        result["train_images_model_minus_best_baseline"] = {
            row["name"]: round(
                row["psnr"]["model"] - max(v for k, v in row["psnr"].items() if k not in ("model", "measurement")), 3
            )
            for row in seen["images"]
        }
    print(json.dumps(result))


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
