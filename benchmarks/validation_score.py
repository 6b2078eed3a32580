"""Score a deblur checkpoint on the two validation photos (in neither the training nor the held-out
split: matplotlib's ``grace_hopper``, scikit-image's ``clock``), with the Wiener and TV baselines.

    python benchmarks/validation_score.py builtin:deblur

Prints the mean PSNR per method and the fixed-point iterations per image (noise seed 0).
"""

from __future__ import annotations

import argparse
import json

from recipe_ablation import validation_images

from jfb_inverse.evaluation import evaluate
from jfb_inverse.training.checkpoint import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="builtin:deblur, a run folder or a model.pt")
    args = parser.parse_args()
    model, cfg, physics = load_model(args.checkpoint, "cpu")
    report = evaluate(model, physics, cfg, validation_images(), seed=0, with_baselines=True)
    print(
        json.dumps(
            {"checkpoint": args.checkpoint, "psnr": report.report["mean"]["psnr"], "iterations": report.iterations}
        )
    )


if __name__ == "__main__":
    main()
