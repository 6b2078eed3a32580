"""Fine-tuning a shipped model on another operator, against training the same network from scratch.

Both runs train the same definition (default: the deblur problem with a motion blur, 11 px at 30
degrees, instead of DEBLUR-G's Gaussian) for the same steps; one starts from ``builtin:deblur``
(``training.init_from``), the other from the untrained network. Both are scored on the held-out
split with the classical baselines (noise seed 0), with the models' default evaluation map (``D``
averaged over quarter-turns; recorded as ``equivariance``).

    python benchmarks/fine_tune.py [--steps 300] [--source builtin:deblur] [--optimizer adam|muon]

Writes ``benchmarks/results/fine_tune_motion.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from jfb_inverse.evaluation import evaluate
from jfb_inverse.problems.registry import resolve_config
from jfb_inverse.training.checkpoint import load_model
from jfb_inverse.training.data import evaluation_images
from jfb_inverse.training.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
MOTION = {"operator": {"kind": "blur", "kernel": "motion", "length": 11, "angle": 30.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--source", default="builtin:deblur")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer", choices=("adam", "muon"), default="adam", help="training.optimizer")
    parser.add_argument("--out", type=Path, default=RESULTS / "fine_tune_motion.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # fp32 as recorded in results/fine_tune_motion.json (measured before precision auto existed).
    quiet = {
        "training": {
            "steps": args.steps,
            "log_every": 50,
            "checkpoint_every": 100_000,
            "precision": "fp32",
            "optimizer": args.optimizer,
        }
    }
    runs = {"scratch": {}, "fine_tuned": {"training": {"init_from": args.source}}}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in runs.items():
            overrides = {**MOTION, "training": {**quiet["training"], **extra.get("training", {})}}
            cfg = resolve_config("deblur", overrides=overrides)
            start = time.perf_counter()
            train(cfg, Path(tmp) / name)
            seconds = time.perf_counter() - start
            model, cfg, physics = load_model(Path(tmp) / name / "model.pt", "cpu")
            report = evaluate(model, physics, cfg, evaluation_images(cfg.data), seed=0, with_baselines=True)
            results[name] = {
                "train_seconds": round(seconds, 1),
                "held_out_psnr": report.report["mean"]["psnr"],
                "held_out_ssim": report.report["mean"]["ssim"],
                "iterations": report.iterations,
                "converged": sum(report.converged),
            }
            print(name, json.dumps(results[name]))
    payload = {
        "what": __doc__.splitlines()[0],
        "operator": MOTION["operator"],
        "steps": args.steps,
        "source": args.source,
        "threads": args.threads,
        "precision": "fp32",
        "optimizer": args.optimizer,
        # How the held-out split was scored: the model's evaluation map (D averaged over
        # quarter-turns by default; results before the fifth session used the plain T).
        "equivariance": cfg.model.equivariance,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
