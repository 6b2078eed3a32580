"""Items 1-2: training-step time of every gradient strategy, and what a step applies.

Same network (same weights), same batch and the SAME forward solve for every contender: the
forward solver is Picard (or Anderson, ``--forward anderson``) with a tolerance of 1e-30, so it runs
exactly K iterations (checked: the solver statistics must report K). Contenders:

- ``forward``: the forward solve alone (training mode, autograd off) -- the floor of a JFB step;
- ``jfb``: JFB; ``jfbk5``: JFB-k with k=5;
- ``implicit_picard`` / ``implicit_anderson``: implicit differentiation, backward solved by Picard /
  Anderson VJP iterations to tol 1e-4, at most 50;
- ``unrolled``: backprop through K iterations from the same start.

A step is ``zero_grad + forward + MSE + backward + Adam.step``. Adam runs with lr=0: it does all its
work but leaves the weights unchanged, so every contender sees exactly the same network in every
repeat. Contenders are interleaved with a rotating order; medians and ratios to JFB are reported.

Counts (one extra, untimed step per contender): applications of T (calls of the regulariser,
and the solver's ``evaluations``), vector-Jacobian products (the backward solve's evaluations),
calls of the physics' operators (A, A^T, A^T A, the SVD factors V/V^T of the closed-form prox), and
the bytes autograd saved for backward.

    python benchmarks/training_step.py [--device cpu|cuda] [--quick] [--problem deblur|ct] [--K 40]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import Any

import benchlib
import torch
from torch.nn import functional as F

from jfb_inverse.implicit import JFB, Anderson, ImplicitDiff, JFBk, Picard, Unrolled
from jfb_inverse.models.precision import effective_precision

KEYS = ("benchmark", "problem", "machine", "setup", "contenders", "ratios", "targets")


def sizes(device: torch.device, quick: bool) -> dict[str, int]:
    """Patch size, batch and K: 64x64 x 8 at K=40 on CPU, 128x128 x 16 on GPU, tiny with --quick."""
    if quick:
        return {"patch": 32, "batch": 2, "K": 5, "repeats": 2}
    if device.type == "cuda":
        return {"patch": 128, "batch": 16, "K": 40, "repeats": 10}
    return {"patch": 64, "batch": 8, "K": 40, "repeats": 5}


def strategies(depth: int) -> dict[str, Any]:
    """The contenders' gradient strategies (``forward`` has none: autograd off)."""
    return {
        "jfb": JFB(),
        "jfbk5": JFBk(k=5),
        "implicit_picard": ImplicitDiff(solver="picard", tol=1e-4, max_iter=50),
        "implicit_anderson": ImplicitDiff(solver="anderson", tol=1e-4, max_iter=50),
        "unrolled": Unrolled(K=depth),
    }


def build(
    problem: str,
    device: torch.device,
    patch: int,
    batch: int,
    checkpoint: str | None,
) -> tuple[Any, Any, torch.Tensor, torch.Tensor, Any, dict[str, Any]]:
    """``(model, cfg, x, y, physics, model_note)``: a checkpoint's network, or the problem's untrained one."""
    from jfb_inverse.models import build_model

    cfg = benchlib.problem_config(problem, patch=patch, batch=batch)
    if checkpoint is not None:
        model, ckpt_cfg, _ = benchlib.load_reference(checkpoint, device)
        if ckpt_cfg.problem != problem:
            raise SystemExit(f"error: checkpoint {checkpoint!r} is for {ckpt_cfg.problem!r}, not {problem!r}")
        note = {"weights": checkpoint}
    else:
        torch.manual_seed(0)
        model, _ = build_model(cfg, device)
        note = {"weights": "untrained (the problem's initialisation, seed 0)"}
    x, y, physics = benchlib.training_batch(cfg, device)
    return model, cfg, x, y, physics, note


def make_step(model: Any, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, physics: Any, strategy: Any):
    """One training step with ``strategy`` (None: the forward solve alone, autograd off)."""
    if strategy is None:

        def forward_only() -> None:
            with torch.no_grad():
                model(y, physics)

        return forward_only

    def step() -> None:
        model.gradient = strategy
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(y, physics), x)
        loss.backward()
        opt.step()

    return step


def count_step(model: Any, physics: Any, fn: Any) -> dict[str, Any]:
    """Run ``fn`` once and count T applications, VJPs, operator calls and saved-tensor bytes."""
    ops = benchlib.OperatorCounter(physics)
    reg = benchlib.CallCounter(model.regularizer)
    try:
        with benchlib.saved_tensor_bytes() as saved:
            fn()
    finally:
        ops.restore()
        reg.remove()
    stats = model.last_stats
    back = stats.backward if stats is not None else None
    return {
        "T_applications": reg.calls,
        "solver_evaluations": stats.evaluations if stats is not None else None,
        "forward_iterations": int(stats.iterations.max()) if stats is not None else None,
        "vjps": back.evaluations if back is not None else 0,
        "backward_residual": float(back.residual.max()) if back is not None else None,
        "operator_calls": dict(sorted(ops.counts.items())),
        "saved_tensor_bytes": saved["bytes"],
    }


def run(
    device: torch.device | str = "cpu",
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    repeats: int | None = None,
    problem: str = "deblur",
    checkpoint: str | None = None,
    depth: int | None = None,
    forward: str = "picard",
    plot: bool = True,
    precision: str | None = None,
) -> dict[str, Any]:
    """Measure items 1-2 and write ``training_step_<problem>.json`` / ``.png``; returns the payload."""
    device = torch.device(device)
    size = sizes(device, quick)
    K = depth or size["K"]
    repeats = repeats or size["repeats"]
    info = benchlib.machine_info(device)
    model, cfg, x, y, physics, note = build(problem, device, size["patch"], size["batch"], checkpoint)
    model.train()
    if precision is not None:
        model.precision = precision
    model.solver = (
        Anderson(tol=benchlib.TINY_TOL, max_iter=K)
        if forward == "anderson"
        else Picard(tol=benchlib.TINY_TOL, max_iter=K)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    contenders = {"forward": make_step(model, opt, x, y, physics, None)}
    for name, strategy in strategies(K).items():
        contenders[name] = make_step(model, opt, x, y, physics, strategy)

    contenders["forward"]()  # operator norm etc. computed once, outside the counts
    counts = {name: count_step(model, physics, fn) for name, fn in contenders.items()}
    for name, c in counts.items():
        if name != "unrolled" and c["forward_iterations"] != K:
            raise RuntimeError(f"{name}: the forward solve ran {c['forward_iterations']} iterations, not K={K}")

    times = benchlib.alternate(contenders, repeats, device, warmup=1)
    med = {name: benchlib.summary(t) for name, t in times.items()}
    jfb = med["jfb"]["median_s"]
    results: dict[str, Any] = {}
    for name in contenders:
        results[name] = {
            **med[name],
            "ratio_to_jfb": benchlib.ratio(med[name]["median_s"], jfb),
            "counts": counts[name],
        }
    ratios = {
        "jfb_over_implicit_picard": benchlib.ratio(jfb, med["implicit_picard"]["median_s"]),
        "jfb_over_implicit_anderson": benchlib.ratio(jfb, med["implicit_anderson"]["median_s"]),
        "jfb_over_forward": benchlib.ratio(jfb, med["forward"]["median_s"]),
        "floor_K_plus_3_over_K": round((K + 3) / K, 4),
        "unrolled_over_jfb": benchlib.ratio(med["unrolled"]["median_s"], jfb),
        "jfbk5_over_jfb": benchlib.ratio(med["jfbk5"]["median_s"], jfb),
    }
    best_implicit = min(ratios["jfb_over_implicit_picard"], ratios["jfb_over_implicit_anderson"])
    targets = {
        "jfb_over_implicit_le_0.4": {
            "value_picard_backward": ratios["jfb_over_implicit_picard"],
            "value_anderson_backward": ratios["jfb_over_implicit_anderson"],
            "target": 0.4,
            "met": bool(max(ratios["jfb_over_implicit_picard"], ratios["jfb_over_implicit_anderson"]) <= 0.4),
            "met_by_faster_implicit": bool(best_implicit <= 0.4),
        },
        "jfb_over_forward_le_1.15": {
            "value": ratios["jfb_over_forward"],
            "target": 1.15,
            "met": bool(ratios["jfb_over_forward"] <= 1.15),
        },
    }
    payload = {
        "benchmark": "training_step",
        "problem": problem,
        "machine": benchlib.finish_info(info),
        "setup": {
            "K": K,
            "forward_solver": f"{forward}, tol {benchlib.TINY_TOL:g} (runs exactly K iterations), max_iter K",
            "batch": size["batch"],
            "patch": size["patch"],
            "repeats": repeats,
            "step": "zero_grad + forward + MSE + backward + Adam.step (lr=0: weights unchanged)",
            "model_step": cfg.model.step if checkpoint is None else model.step_kind,
            "precision": f"{model.precision} (regulariser in training mode: "
            f"{effective_precision(model.precision, device, training=True)})",
            **note,
            "order": "interleaved, rotating; median over repeats",
        },
        "contenders": results,
        "ratios": ratios,
        "targets": targets,
    }
    return benchlib.save(out, f"training_step_{problem}", payload, plot_step_times if plot else None)


def plot_step_times(payload: dict[str, Any], path: Path) -> None:
    """Bar chart of median step times, labelled with the ratio to JFB."""
    plt = benchlib.pyplot()
    names = list(payload["contenders"])
    values = [payload["contenders"][n]["median_s"] for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    bars = ax.bar(names, values, color=["#999999", "#1f77b4", "#6baed6", "#d62728", "#ff7f0e", "#2ca02c"][: len(names)])
    for bar, n in zip(bars, names, strict=True):
        ax.annotate(
            f"{payload['contenders'][n]['ratio_to_jfb']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    s = payload["setup"]
    ax.set_ylabel("median seconds per step")
    ax.set_title(
        f"{payload['problem']}: training step, K={s['K']}, batch {s['batch']}x{s['patch']}^2 "
        f"({payload['machine']['device']})",
        fontsize=9,
    )
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--problem", default="deblur")
    parser.add_argument("--checkpoint", default=None, help="model weights (default: the trained reference for deblur)")
    parser.add_argument("--untrained", action="store_true", help="use the untrained network")
    parser.add_argument("--K", type=int, default=None, help="forward iterations (default 40; 5 with --quick)")
    parser.add_argument("--forward", choices=("picard", "anderson"), default="picard")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16", "auto"),
        default=None,
        help="the regulariser's precision (default: the checkpoint's; auto is the training default: "
        "bf16 on a CPU with native bf16)",
    )
    args = parser.parse_args()
    device = benchlib.setup(args)
    checkpoint = args.checkpoint
    if checkpoint is None and not args.untrained and not args.quick and args.problem == "deblur":
        checkpoint, _ = benchlib.reference_checkpoint(args.problem, args.out, None, device, steps=300)
    payload = run(
        device,
        args.quick,
        args.out,
        args.repeats,
        args.problem,
        checkpoint,
        args.K,
        args.forward,
        precision=args.precision,
    )
    print_summary(payload)


def print_summary(payload: dict[str, Any]) -> None:
    """One line per contender."""
    print(f"training step, {payload['problem']}, K={payload['setup']['K']}:")
    for name, r in payload["contenders"].items():
        c = r["counts"]
        print(
            f"  {name:18s} {r['median_s'] * 1e3:9.1f} ms  x{r['ratio_to_jfb']:.3f} JFB   "
            f"T={c['T_applications']} vjp={c['vjps']} ops={c['operator_calls']}"
        )
    print("  ratios:", payload["ratios"])


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
