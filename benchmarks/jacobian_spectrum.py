"""Why Anderson does not reach half of Picard's iterations on the trained deblur model: the
Jacobian's spectrum at the fixed point, and the iteration counts it allows.

On tuning images only (the validation photos and eight training images, as
``anderson_sweep.py``; never the held-out split), for the plain map and the default evaluation
map (``D`` averaged over quarter-turns):

- the leading Ritz values of ``J = dT/du`` at each image's fixed point (``jacobian_eigenvalues``,
  40 Arnoldi steps);
- iterations to relative residual 1e-3 and 1e-4 (batch maximum) on the map itself, for Picard,
  Anderson (the default m=5; m=30, near-full memory; m=5 damped, beta=0.6, which shrinks the
  negative eigenvalues);
- the same on the map linearised at the fixed point, ``L(u) = u* + J (u - u*)``, from the same
  start: there Anderson with full memory is GMRES (Walker and Ni, SIAM J. Numer. Anal. 2011), the
  best any Krylov-type acceleration can do with that many applications of ``J``.

    python benchmarks/jacobian_spectrum.py [--checkpoint builtin:deblur] [--arnoldi 40]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import json
from typing import Any

import torch
from anderson_sweep import iterations_to, tuning_problem
from recipe_ablation import RESULTS

from jfb_inverse.implicit import Anderson, Picard, jacobian_eigenvalues

SOLVERS = {
    "picard": lambda: Picard(tol=1e-6, max_iter=300),
    "anderson m=5": lambda: Anderson(m=5, tol=1e-6, max_iter=150),
    "anderson m=30": lambda: Anderson(m=30, tol=1e-6, max_iter=150),
    "anderson m=5 beta=0.6": lambda: Anderson(m=5, beta=0.6, tol=1e-6, max_iter=150),
}
LINEAR_SOLVERS = {
    "picard": lambda: Picard(tol=1e-6, max_iter=300),
    "anderson m=5": lambda: Anderson(m=5, tol=1e-6, max_iter=150),
    "anderson m=60 (GMRES)": lambda: Anderson(m=60, lam=1e-10, tol=1e-6, max_iter=60),
}


def linearised(fn, u_star: torch.Tensor):
    """``u -> u* + J (u - u*)`` with ``J v`` the central difference of ``jacobian_eigenvalues``."""
    batch = u_star.shape[0]
    shape = (-1, *([1] * (u_star.dim() - 1)))
    base = u_star.reshape(batch, -1).norm(dim=1).view(shape)

    def apply(u: torch.Tensor) -> torch.Tensor:
        d = u - u_star
        scale = d.reshape(batch, -1).norm(dim=1).view(shape).clamp_min(1e-30)
        step = 1e-5 * base / scale  # a difference of size 1e-5 ||u*||, as the Ritz values use
        return u_star + (fn(u_star + step * d) - fn(u_star - step * d)) / (2 * step)

    return apply


def ratio(counts: dict[str, dict[str, int | None]], name: str, tol: str) -> float | None:
    a, p = counts[name][tol], counts["picard"][tol]
    return None if a is None or p is None else round(a / p, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:deblur")
    parser.add_argument("--arnoldi", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "jacobian_spectrum_deblur.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, names, y, physics = tuning_problem(args.checkpoint)
    result: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "images": names,
        "stop": "batch maximum of the relative residual",
        "arnoldi_steps": args.arnoldi,
        "maps": {},
    }
    for equivariance in ("none", "rotations"):
        model.equivariance = equivariance
        with torch.no_grad():
            fn, u0 = model.fixed_point_map(y, physics)
            u_star, stats = Anderson(m=5, tol=1e-6, max_iter=300).solve(fn, u0)
        ritz = jacobian_eigenvalues(fn, u_star, k=args.arnoldi)
        per_image = {
            name: {
                "leading": [[round(v.real, 4), round(v.imag, 4)] for v in ritz[i, :12].tolist()],
                "largest_real": round(float(ritz[i].real.max()), 4),
                "smallest_real": round(float(ritz[i].real.min()), 4),
            }
            for i, name in enumerate(names)
        }
        nonlinear = {name: iterations_to(make(), fn, u0) for name, make in SOLVERS.items()}
        with torch.no_grad():
            lin = linearised(fn, u_star)
            linear = {name: iterations_to(make(), lin, u0) for name, make in LINEAR_SOLVERS.items()}
        rows = {
            "fixed_point_residual": float(stats.residual.max()),
            "ritz_values": per_image,
            "iterations": nonlinear,
            "ratio_to_picard_1e-3": {k: ratio(nonlinear, k, "0.001") for k in SOLVERS if k != "picard"},
            "linearised_iterations": linear,
            "linearised_ratio_to_picard_1e-3": {k: ratio(linear, k, "0.001") for k in LINEAR_SOLVERS if k != "picard"},
        }
        result["maps"][equivariance] = rows
        print(equivariance, json.dumps({k: v for k, v in rows.items() if k != "ritz_values"}), flush=True)
        for name, values in per_image.items():
            print(f"  {name}: real part in [{values['smallest_real']}, {values['largest_real']}]")
    args.out.write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
