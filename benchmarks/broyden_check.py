"""Limited-memory Broyden (torchdeq's default solver) against Anderson and Picard on the trained
deblur model, on tuning images only (never the held-out split): iterations to relative residual
1e-3 and 1e-4 (batch maximum), for the plain map and the default evaluation map (``D`` averaged
over quarter-turns). The Broyden solver here is a reference implementation for this comparison,
not part of the package: it needed more iterations than Anderson (README, "Performance").

    python benchmarks/broyden_check.py [--checkpoint builtin:deblur] [--ms 10,30]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import json

import torch
from anderson_sweep import TOLERANCES, tuning_problem
from recipe_ablation import RESULTS
from solver_convergence import first_below
from torch import Tensor

from jfb_inverse.implicit import Anderson, Picard
from jfb_inverse.implicit.stats import residual_from_norms


@torch.no_grad()
def broyden_trace(f, u0: Tensor, m: int, max_iter: int, tol: float) -> Tensor:
    """``(iterations, B)`` residuals of "good" Broyden on ``g(u) = f(u) - u`` with an inverse-Jacobian
    estimate ``-I + U V^T`` of rank ``m`` (oldest pair overwritten), unit steps, per sample, as in
    torchdeq's ``broyden_solver`` without line search."""
    shape, batch = u0.shape, u0.shape[0]
    x = u0.reshape(batch, -1).clone()
    fx = f(x.view(shape)).reshape(batch, -1)
    g = fx - x
    us = x.new_zeros(batch, m, x.shape[1])
    vs = x.new_zeros(batch, m, x.shape[1])
    n = 0

    def apply(v: Tensor) -> Tensor:  # B v
        k = min(n, m)
        return -v + torch.einsum("bkd,bk->bd", us[:, :k], torch.einsum("bkd,bd->bk", vs[:, :k], v))

    def apply_t(v: Tensor) -> Tensor:  # v^T B
        k = min(n, m)
        return -v + torch.einsum("bk,bkd->bd", torch.einsum("bd,bkd->bk", v, us[:, :k]), vs[:, :k])

    trace = [residual_from_norms(g.norm(dim=1), fx.norm(dim=1))]
    step = g.clone()  # B_0 = -I: the first step is a Picard step
    for _ in range(1, max_iter):
        x_new = x + step
        fx = f(x_new.view(shape)).reshape(batch, -1)
        g_new = fx - x_new
        trace.append(residual_from_norms(g_new.norm(dim=1), fx.norm(dim=1)))
        if trace[-1].max() <= tol:
            break
        dx, dg = x_new - x, g_new - g
        x, g = x_new, g_new
        vt = apply_t(dx)
        u = (dx - apply(dg)) / torch.einsum("bd,bd->b", vt, dg)[:, None]
        us[:, n % m], vs[:, n % m] = torch.nan_to_num(u), torch.nan_to_num(vt)
        n += 1
        step = -apply(g)
    return torch.stack(trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:deblur")
    parser.add_argument("--ms", default="10,30")
    parser.add_argument("--out", type=Path, default=RESULTS / "broyden_check_deblur.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, names, y, physics = tuning_problem(args.checkpoint)
    tol, cap = min(TOLERANCES), 150
    result: dict = {
        "checkpoint": args.checkpoint,
        "images": names,
        "stop": "batch maximum of the relative residual",
        "max_iter": {"picard": 300, "anderson": cap, "broyden": cap},
        "maps": {},
    }
    for equivariance in ("none", "rotations"):
        model.equivariance = equivariance
        with torch.no_grad():
            fn, u0 = model.fixed_point_map(y, physics)
            traces = {
                "picard": Picard(tol=tol, max_iter=300).solve(fn, u0)[1].trace,
                "anderson m=5": Anderson(m=5, tol=tol, max_iter=cap).solve(fn, u0)[1].trace,
            }
            for m in (int(v) for v in args.ms.split(",")):
                traces[f"broyden m={m}"] = broyden_trace(fn, u0, m, cap, tol)
        rows = {name: {f"{t:g}": first_below(trace, t) for t in TOLERANCES} for name, trace in traces.items()}
        result["maps"][equivariance] = rows
        print(equivariance, rows, flush=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
