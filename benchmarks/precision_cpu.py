"""CPU training in bf16 (``precision auto`` on a CPU with native bf16) against fp32.

On the trained ``builtin:deblur`` network and one fixed batch (8 x 64x64, seed 0), interleaved,
median of the repeats:

- ``regulariser``: one forward + backward of ``D`` alone;
- ``step_K20``: a JFB training step whose forward solve runs exactly 20 Picard iterations in both
  precisions (tol 1e-30), so both do the same work;
- ``step_tol``: a JFB training step with the training solver (Anderson, tol 1e-3, at most 30), so
  bf16's rounding may cost extra iterations: the counts are reported.

Adam runs with lr=0, so every repeat sees the same weights.

    python benchmarks/precision_cpu.py [--threads 2] [--repeats 7]

Writes ``precision_cpu.json`` under ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import Any

import benchlib
import torch
from torch.nn import functional as F

from jfb_inverse.implicit import Anderson, Picard
from jfb_inverse.models.precision import native_bf16_cpu

PRECISIONS = ("fp32", "bf16")


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    device = benchlib.setup(args)
    if device.type != "cpu":
        sys.exit("error: this benchmark is about CPUs; see benchmarks/gpu_scale.py for CUDA")
    repeats = args.repeats or (2 if args.quick else 7)
    model, _, _ = benchlib.load_reference("builtin:deblur", device)
    cfg = benchlib.problem_config("deblur", patch=32 if args.quick else 64, batch=2 if args.quick else 8)
    x, y, physics = benchlib.training_batch(cfg, device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    solvers = {"step_K20": Picard(tol=1e-30, max_iter=20), "step_tol": Anderson(tol=1e-3, max_iter=30)}
    iterations: dict[str, int] = {}

    def regulariser(precision: str):
        dtype = torch.bfloat16 if precision == "bf16" else None

        def run() -> None:
            v = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                out = model.regularizer(v)
            out.float().sum().backward()

        return run

    def step(precision: str, solver_key: str):
        def run() -> None:
            model.precision = precision
            model.solver = solvers[solver_key]
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(y, physics), x).backward()
            opt.step()
            iterations[f"{solver_key}_{precision}"] = int(model.last_stats.iterations.max())

        return run

    contenders: dict[str, Any] = {}
    for p in PRECISIONS:
        contenders[f"regulariser_{p}"] = regulariser(p)
        for key in solvers:
            contenders[f"{key}_{p}"] = step(p, key)
    times = benchlib.alternate(contenders, repeats, device)
    medians = {name: benchlib.summary(t)["median_s"] for name, t in times.items()}
    groups = ("regulariser", *solvers)
    payload = {
        "benchmark": "precision_cpu",
        "machine": benchlib.finish_info(benchlib.machine_info(device)),
        "setup": {
            "weights": "builtin:deblur",
            "batch_shape": list(x.shape),
            "repeats": repeats,
            "native_bf16_cpu": native_bf16_cpu(),
            "order": "interleaved, rotating; median over repeats",
        },
        "contenders": {name: benchlib.summary(t) for name, t in times.items()},
        "iterations": iterations,
        "ratios": {f"{g}_fp32_over_bf16": benchlib.ratio(medians[f"{g}_fp32"], medians[f"{g}_bf16"]) for g in groups},
    }
    benchlib.save(args.out, "precision_cpu", payload, None)
    for g in groups:
        print(
            f"{g:12s} fp32 {medians[g + '_fp32'] * 1e3:8.1f} ms  bf16 {medians[g + '_bf16'] * 1e3:8.1f} ms  "
            f"x{payload['ratios'][g + '_fp32_over_bf16']:.2f}"
        )
    print("iterations:", iterations)


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
