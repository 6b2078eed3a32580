"""Item 4: forward solver on a TRAINED model: iterations and time to relative residual 1e-3 and 1e-4.

Picard (plain fixed-point iteration) against Anderson (the model's evaluation settings: history
m=5) on the held-out evaluation images of the problem (one batch), measurements simulated with a
fixed seed. Iterations: from one long solve per solver (the first iteration whose batch-maximum
residual is at or below the tolerance). Time: separate solves stopping at each tolerance,
interleaved Picard/Anderson, median over repeats, autograd off.

The map: the plain ``T`` (one ``D`` per iteration, ``--equivariance none``, the default here) or
the model's default evaluation map, ``D`` averaged over quarter-turns (``--equivariance
rotations``; written as ``solver_convergence_<problem>_rotations.json``).

The model: ``--checkpoint`` if given, else ``builtin:<problem>`` when the package ships it, else
a short training run (300 steps of the problem's default recipe) done by the benchmark and cached
in the output folder; the JSON says which.

    python benchmarks/solver_convergence.py [--device cpu|cuda] [--quick] [--checkpoint PATH]
        [--equivariance none|rotations|dihedral]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import Any

import benchlib
import torch

from jfb_inverse.implicit import Anderson, Picard

KEYS = ("benchmark", "problem", "machine", "setup", "solvers", "targets")
TOLERANCES = (1e-3, 1e-4)


def first_below(trace: torch.Tensor, tol: float) -> int | None:
    """1-based iteration at which the batch-maximum residual first reaches ``tol`` (None: never)."""
    hits = (trace.max(dim=1).values <= tol).nonzero()
    return int(hits[0, 0]) + 1 if len(hits) else None


def run(
    device: torch.device | str = "cpu",
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    repeats: int | None = None,
    problem: str = "deblur",
    checkpoint: str | None = None,
    train_steps: int = 300,
    plot: bool = True,
    equivariance: str = "none",
) -> dict[str, Any]:
    """Measure item 4 and write ``solver_convergence_<problem>.json`` / ``.png``."""
    from jfb_inverse.problems import simulate
    from jfb_inverse.training.data import evaluation_images

    device = torch.device(device)
    out = Path(out)
    repeats = repeats or (2 if quick else 5)
    info = benchlib.machine_info(device)
    if quick and checkpoint is None:
        from jfb_inverse.models import build_model

        cfg = benchlib.problem_config(problem)
        torch.manual_seed(0)
        model, physics_cache = build_model(cfg, device)
        note: dict[str, Any] = {"checkpoint": None, "source": "untrained (--quick)"}
    else:
        path, note = benchlib.reference_checkpoint(problem, out, checkpoint, device, steps=train_steps)
        model, cfg, physics_cache = benchlib.load_reference(path, device)
    model.equivariance = equivariance
    model.eval()
    images = evaluation_images(cfg.data)
    if quick:
        images = [(n, im[..., :32, :32]) for n, im in images[:2]]
    x = torch.stack([im for _, im in images]).to(device)
    physics = physics_cache.for_image(tuple(x.shape[1:]))
    with torch.no_grad():
        y = simulate(x, physics, cfg.noise, torch.Generator(device=device).manual_seed(0))
        fn, u0 = model.fixed_point_map(y, physics)
    m = getattr(model.eval_solver, "m", 5)
    long_iter = 60 if quick else 1000
    solvers = {
        "picard": lambda tol, it: Picard(tol=tol, max_iter=it),
        "anderson": lambda tol, it: Anderson(m=m, tol=tol, max_iter=it),
    }
    results: dict[str, Any] = {}
    traces: dict[str, list[float]] = {}
    for name, make in solvers.items():
        with torch.no_grad():
            _, stats = make(min(TOLERANCES), long_iter).solve(fn, u0)
        trace = stats.trace
        traces[name] = trace.max(dim=1).values.tolist()
        results[name] = {
            "iterations_to": {f"{tol:g}": first_below(trace, tol) for tol in TOLERANCES},
            "final_residual": float(stats.residual.max()),
            "max_iter": long_iter,
        }
    for tol in TOLERANCES:
        contenders = {}
        for name, make in solvers.items():
            iters = results[name]["iterations_to"][f"{tol:g}"]
            if iters is None:
                continue
            solver = make(tol, long_iter)

            def solve(solver: Any = solver) -> None:
                with torch.no_grad():
                    solver.solve(fn, u0)

            contenders[name] = solve
        times = benchlib.alternate(contenders, repeats, device, warmup=1)
        for name, t in times.items():
            results[name].setdefault("seconds_to", {})[f"{tol:g}"] = benchlib.summary(t)
    ratios: dict[str, Any] = {}
    for tol in TOLERANCES:
        key = f"{tol:g}"
        p, a = results["picard"]["iterations_to"][key], results["anderson"]["iterations_to"][key]
        ratios[f"anderson_over_picard_iterations_{key}"] = round(a / p, 4) if p and a else None
        tp = results["picard"].get("seconds_to", {}).get(key)
        ta = results["anderson"].get("seconds_to", {}).get(key)
        ratios[f"anderson_over_picard_time_{key}"] = (
            benchlib.ratio(ta["median_s"], tp["median_s"]) if tp and ta else None
        )
    r3 = ratios["anderson_over_picard_iterations_0.001"]
    payload = {
        "benchmark": "solver_convergence",
        "problem": problem,
        "machine": benchlib.finish_info(info),
        "setup": {
            "model": note,
            "images": [n for n, _ in images],
            "batch_shape": list(x.shape),
            "anderson_m": m,
            "equivariance": equivariance,
            "stop": "batch (every image below tol)",
            "repeats": repeats,
        },
        "solvers": results,
        "ratios": ratios,
        "residual_trace_batch_max": traces,
        "targets": {
            "anderson_iterations_le_half_picard_at_1e-3": {
                "value": r3,
                "target": 0.5,
                "met": bool(r3 is not None and r3 <= 0.5),
                "note": None
                if results["picard"]["iterations_to"]["0.001"]
                else f"Picard did not reach 1e-3 in {long_iter}",
            }
        },
    }
    stem = f"solver_convergence_{problem}" + ("" if equivariance == "none" else f"_{equivariance}")
    return benchlib.save(out, stem, payload, plot_traces if plot else None)


def plot_traces(payload: dict[str, Any], path: Path) -> None:
    """Batch-maximum residual against iterations, both solvers, with the two tolerances."""
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, trace in payload["residual_trace_batch_max"].items():
        ax.semilogy(range(1, len(trace) + 1), trace, label=name)
    for tol in TOLERANCES:
        ax.axhline(tol, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("iteration (applications of T)")
    ax.set_ylabel("relative residual (batch max)")
    ax.set_title(
        f"{payload['problem']}: forward solve on the trained model ({payload['machine']['device']})", fontsize=9
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--problem", default="deblur")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--equivariance", choices=("none", "rotations", "dihedral"), default="none")
    args = parser.parse_args()
    device = benchlib.setup(args)
    payload = run(
        device,
        args.quick,
        args.out,
        args.repeats,
        args.problem,
        args.checkpoint,
        args.train_steps,
        equivariance=args.equivariance,
    )
    for name, r in payload["solvers"].items():
        secs = {k: round(v["median_s"], 4) for k, v in r.get("seconds_to", {}).items()}
        print(f"  {name:9s} iterations {r['iterations_to']}  seconds {secs}")
    print("  ratios:", payload["ratios"])


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
