"""Re-derive the classical baselines' parameters (``jfb_inverse.baselines.DEBLUR_DEFAULTS`` and,
with ``--problem inpainting|superres|mri``, ``OTHER_DEFAULTS``).

Grid search with :func:`jfb_inverse.baselines.tune` on the built-in TRAINING images only
(``datasets.images.BUILTIN_TRAIN``, grey, centre-cropped and resized to 128 x 128), the problem's
measurements with noise seed 0. The held-out images (``BUILTIN_TEST``) are never looked at.
Deblurring tunes Wiener and TV; the other problems Tikhonov and TV.

    python benchmarks/tune_baselines.py [--problem deblur] [--out FILE] [--tv-iters 1000] [--only tv]

The default ``--out`` is ``benchmarks/results/tune_baselines.json`` for deblur and
``tune_baselines_PROBLEM.json`` for the others.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from jfb_inverse.datasets.images import BUILTIN_TRAIN, load_builtin

from jfb_inverse import baselines as B
from jfb_inverse.problems.noise import simulate
from jfb_inverse.problems.operators import build_physics
from jfb_inverse.problems.registry import resolve_config

RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS = ("deblur", "inpainting", "superres", "mri")


def _counts(text: str) -> list[int]:
    """An argparse type: comma-separated positive iteration counts."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated whole numbers, got {text!r}") from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"iteration counts must be positive, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=PROBLEMS, default="deblur")
    parser.add_argument("--out", type=Path, default=None, help="default: results/tune_baselines[_PROBLEM].json")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument(
        "--tv-iters",
        type=_counts,
        default=[1000],
        help="TV iteration counts to search, comma-separated (default 1000)",
    )
    parser.add_argument("--only", choices=("wiener", "tikhonov", "tv"), default=None, help="tune one method only")
    args = parser.parse_args()
    first = "wiener" if args.problem == "deblur" else "tikhonov"
    if args.only not in (None, first, "tv"):
        parser.error(f"--only {args.only}: {args.problem}'s baselines are {first} and tv")
    if args.out is None:
        suffix = "" if args.problem == "deblur" else f"_{args.problem}"
        args.out = RESULTS / f"tune_baselines{suffix}.json"

    torch.manual_seed(0)
    cfg = resolve_config(args.problem)
    images = torch.stack([load_builtin(name, channels=1, size=args.size) for name in BUILTIN_TRAIN])
    physics = build_physics(cfg.operator, tuple(images.shape[1:]), "cpu")

    def make(x: torch.Tensor):
        return simulate(x, physics, cfg.noise, torch.Generator().manual_seed(0)), physics

    grids = {
        "wiener": (B.wiener, {"nsr": [float(10**k) for k in np.arange(-4, -1 + 1e-9, 0.125)]}),
        "tikhonov": (B.tikhonov, {"lam": [float(f"{10**k:.2g}") for k in np.arange(-4, 0 + 1e-9, 0.25)]}),
        "tv": (
            B.tv_reconstruction,
            {
                "lam": [float(f"{10**k:.2g}") for k in np.arange(-4, -2 + 1e-9, 0.125)],
                "n_iter": args.tv_iters,
            },
        ),
    }
    grids = {name: grids[name] for name in ((args.only,) if args.only else (first, "tv"))}
    report: dict = {
        "problem": args.problem,
        "images": list(BUILTIN_TRAIN),
        "size": args.size,
        "noise_seed": 0,
        "methods": {},
    }
    if args.only is not None and args.out.is_file():
        # One method re-tuned: the other's search stays in the file (baselines.py cites every grid point).
        report["methods"] = json.loads(args.out.read_text()).get("methods", {})
    for name, (method, grid) in grids.items():
        start = time.perf_counter()
        result = B.tune(method, images, make, grid)
        report["methods"][name] = {
            "best": result.best,
            "best_psnr": round(result.best_psnr, 3),
            "seconds": round(time.perf_counter() - start, 1),
            "table": [[params, round(score, 3)] for params, score in result.table],
        }
        print(f"{name}: best {result.best} -> {result.best_psnr:.2f} dB on {len(BUILTIN_TRAIN)} training images")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
