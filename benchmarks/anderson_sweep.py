"""Anderson's history ``m`` and regularisation ``lam`` against Picard on the trained deblur model,
on tuning images only (never the held-out split): iterations to relative residual 1e-3 and 1e-4
(batch maximum), for the plain map and the default evaluation map (``D`` averaged over
quarter-turns). Issue 5 asks Anderson to reach 1e-3 in at most half of Picard's iterations.

Tuning images: the two validation photos (``grace_hopper``, ``clock``) and the first eight
training images but ``page`` (no attracting fixed point, see the README), 128 px, noise seed 0.

    python benchmarks/anderson_sweep.py [--checkpoint builtin:deblur] [--ms 3,5,8,12] [--lams 1e-6,1e-4,1e-2]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import json
from typing import Any

import torch
from jfb_inverse.datasets.images import BUILTIN_TRAIN, load_builtin
from recipe_ablation import RESULTS, validation_images
from solver_convergence import first_below

from jfb_inverse.implicit import Anderson, Picard
from jfb_inverse.problems import simulate
from jfb_inverse.training.checkpoint import load_model

TOLERANCES = (1e-3, 1e-4)


def tuning_images() -> list[tuple[str, torch.Tensor]]:
    """The validation photos and eight training images (128 px, grey)."""
    train = [(n, load_builtin(n, 1, 128)) for n in BUILTIN_TRAIN if n != "page"][:8]
    return validation_images() + train


def tuning_problem(checkpoint: str) -> tuple[Any, list[str], torch.Tensor, Any]:
    """``(model in eval mode, image names, measurements y, physics)`` of the tuning images, noise seed 0."""
    model, cfg, physics_cache = load_model(checkpoint, "cpu")
    model.eval()
    images = tuning_images()
    x = torch.stack([im for _, im in images])
    physics = physics_cache.for_image(tuple(x.shape[1:]))
    y = simulate(x, physics, cfg.noise, torch.Generator().manual_seed(0))
    return model, [n for n, _ in images], y, physics


def iterations_to(solver: Picard | Anderson, fn, u0: torch.Tensor) -> dict[str, int | None]:
    """First iteration at which the batch-maximum residual reaches each tolerance."""
    with torch.no_grad():
        _, stats = solver.solve(fn, u0)
    return {f"{tol:g}": first_below(stats.trace, tol) for tol in TOLERANCES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:deblur")
    parser.add_argument("--ms", default="3,4,5,8,12")
    parser.add_argument("--lams", default="1e-6,1e-4,1e-2")
    parser.add_argument("--out", type=Path, default=RESULTS / "anderson_sweep_deblur.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, names, y, physics = tuning_problem(args.checkpoint)
    result: dict = {
        "checkpoint": args.checkpoint,
        "images": names,
        "stop": "batch maximum of the relative residual",
        "maps": {},
    }
    for equivariance in ("none", "rotations"):
        model.equivariance = equivariance
        with torch.no_grad():
            fn, u0 = model.fixed_point_map(y, physics)
        picard = iterations_to(Picard(tol=1e-6, max_iter=300), fn, u0)
        rows = {"picard": picard}
        for m in (int(v) for v in args.ms.split(",")):
            for lam in (float(v) for v in args.lams.split(",")):
                counts = iterations_to(Anderson(m=m, lam=lam, tol=1e-6, max_iter=150), fn, u0)
                a, p = counts["0.001"], picard["0.001"]
                rows[f"anderson m={m} lam={lam:g}"] = {
                    **counts,
                    "ratio_1e-3": None if a is None or p is None else round(a / p, 3),
                }
                print(equivariance, f"m={m} lam={lam:g}", counts, rows[f"anderson m={m} lam={lam:g}"]["ratio_1e-3"])
        result["maps"][equivariance] = rows
        print(equivariance, "picard", picard, flush=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
