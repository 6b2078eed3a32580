"""Deblur training-recipe ablations, scored on TRAINING images (the held-out split is never used).

Each run trains the default ``deblur`` definition with some overrides for a short budget, then
reports the mean PSNR of its reconstructions of the 13 built-in training images (128 x 128, noise
seed 0; tuned TV scores ~27.45 dB on them). The images' patches were seen in training, so the
numbers rank recipes; they are not a held-out quality claim.

    python benchmarks/recipe_ablation.py NAME '{"training": {"steps": 700}, "model": {"depth": 7}}'

Appends one JSON line to ``benchmarks/results/recipe_ablation.jsonl``. Overrides apply to the
definition of the time: lines before the fourteenth session's ``S14_reuse*`` ran with a fresh
batch every step (add ``"batch_reuse": 1`` under ``training`` to reproduce them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from jfb_inverse.datasets.images import BUILTIN_TRAIN, load_builtin, load_image

from jfb_inverse.evaluation import evaluate
from jfb_inverse.models.precision import effective_precision
from jfb_inverse.problems.registry import deep_merge, resolve_config
from jfb_inverse.training.checkpoint import load_model
from jfb_inverse.training.loop import train

RESULTS = Path(__file__).resolve().parent / "results"


def validation_images() -> list[tuple[str, torch.Tensor]]:
    """Natural photos in neither the training nor the held-out split, to rank recipes without
    touching the held-out images: matplotlib's ``grace_hopper`` and scikit-image's ``clock``
    (its motion blur mostly vanishes at 128 px), grey, central square at 128 px."""
    import matplotlib
    from skimage.data import data_dir

    paths = {
        "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
        "clock": Path(data_dir) / "clock_motion.png",
    }
    return [(name, load_image(path, channels=1, size=128)) for name, path in paths.items()]


def more_validation_photos() -> list[tuple[str, torch.Tensor]]:
    """Four more photos in neither split, for ranking recipes with less noise than two photos give:
    PyWavelets' ``aero`` and ``ascent`` and scikit-learn's ``china`` and ``flower`` (grey, central
    square at 128 px), bundled in those packages' wheels. They are not dependencies of jfb-inverse
    (``pip install PyWavelets scikit-learn``); without them this returns ``[]``."""
    import tempfile

    import numpy as np

    try:
        import pywt.data
        from sklearn.datasets import load_sample_image
    except ImportError:
        return []
    from skimage.color import rgb2gray

    arrays = {
        "aero": pywt.data.aero() / 255.0,
        "ascent": pywt.data.ascent() / 255.0,
        "china": rgb2gray(load_sample_image("china.jpg")),
        "flower": rgb2gray(load_sample_image("flower.jpg")),
    }
    with tempfile.TemporaryDirectory() as folder:  # through load_image: the same crop and resize as the others
        out = []
        for name, array in arrays.items():
            path = Path(folder) / f"{name}.npy"
            np.save(path, array[None].astype(np.float32))
            out.append((name, load_image(path, channels=1, size=128)))
    return out


def training_images(channels: int = 1) -> list[tuple[str, torch.Tensor]]:
    """The 13 built-in training images at 128 px: seen in training, so they rank recipes only."""
    return [(name, load_builtin(name, channels=channels, size=128)) for name in BUILTIN_TRAIN]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("overrides", type=json.loads, help="definition fields as JSON")
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--out", type=Path, default=RESULTS / "recipe_ablation.jsonl")
    args = parser.parse_args()
    quiet = {"training": {"log_every": 100, "checkpoint_every": 100_000}}
    asked = args.overrides.get("training", {})
    if "steps" not in asked and "minutes" not in asked:
        # The default's step count, exactly: deblur's 9-minute guard would fit fewer steps to a
        # slow machine, and an ablation compares recipes at equal steps unless it asks for time.
        quiet["training"]["steps"] = resolve_config("deblur").training.steps
    cfg = resolve_config("deblur", overrides=deep_merge(quiet, args.overrides))
    run = args.runs / args.name
    start = time.perf_counter()
    train(cfg, run)
    seconds = time.perf_counter() - start
    model, cfg, physics = load_model(str(run / "model.pt"), "cpu")
    ev = evaluate(model, physics, cfg, training_images(), seed=0, with_baselines=False)
    val = evaluate(model, physics, cfg, validation_images(), seed=0, with_baselines=True)
    more = more_validation_photos()
    six = evaluate(model, physics, cfg, more, seed=0, with_baselines=True).report if more else None
    result = {
        "name": args.name,
        "overrides": args.overrides,
        "train_seconds": round(seconds, 1),
        "train_images_psnr": round(ev.report["mean"]["psnr"]["model"], 3),
        "iterations": ev.iterations,
        "validation_psnr": {k: round(v, 3) for k, v in val.report["mean"]["psnr"].items()},
        # The two photos above and the four of more_validation_photos (when installed), per image.
        "validation6_psnr": None
        if six is None
        else {row["name"]: round(row["psnr"]["model"], 3) for row in val.report["images"] + six["images"]},
        # What training ran in: precision auto is bf16 on a CPU with native bf16 (earlier lines: fp32).
        "precision": effective_precision(cfg.training.precision, torch.device("cpu"), training=True),
        # How the scores were made: D averaged over quarter-turns by default (earlier lines: plain T).
        "equivariance": cfg.model.equivariance,
    }
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
