"""Per-sample stopping that computes only the samples still iterating, against the whole-batch stop.

A batch of training patches (8 x 64^2, the deblur training stream, seed 123) is solved cold from
the Tikhonov start by the trained model with Anderson, once with ``stop="batch"`` (every sample
iterates until the slowest converges) and once with ``stop="sample"``, where the model's map
(a ``SampleSubsetMap``) applies the regulariser to the samples still iterating only. The two are
alternated batch by batch in one process (fp32 and the plain `T`, like the other benchmarks), in
training mode at the
training tolerance and in eval mode at the evaluation tolerance. Reported: the sum of solve times,
the mean iterations per sample, and the largest relative difference between the two results
(the whole-batch solve takes early samples past the tolerance).

    python benchmarks/per_sample_stop.py [--checkpoint builtin:deblur] [--threads 1] [--batches 30]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import statistics
import time
from typing import Any

import benchlib
import torch

from jfb_inverse.implicit import Anderson
from jfb_inverse.problems import simulate
from jfb_inverse.training.data import TrainingSource

KEYS = ("benchmark", "checkpoint", "machine", "setup", "modes")


def measure(model: Any, cfg: Any, cache: Any, training: bool, batches: int) -> dict[str, Any]:
    """Alternate the two stop rules over ``batches`` fresh batches; times, iterations, differences."""
    model.train(training)
    tol, max_iter = (
        (cfg.solver.tol, cfg.solver.max_iter) if training else (cfg.solver.eval_tol, cfg.solver.eval_max_iter)
    )
    rules = ("batch", "sample")
    source = TrainingSource(cfg.data, cfg.training.batch_size, 123, torch.device("cpu"))
    noise = torch.Generator().manual_seed(5)
    times: dict[str, list[float]] = {r: [] for r in rules}
    iterations: dict[str, list[float]] = {r: [] for r in rules}
    worst = 0.0
    for i in range(batches):
        x = source.sample()
        physics, _ = cache.for_measurement(tuple(x.shape[1:]))
        y = simulate(x, physics, cfg.noise, noise)
        out: dict[str, torch.Tensor] = {}
        for rule in rules if i % 2 == 0 else rules[::-1]:
            solver = Anderson(m=cfg.solver.m, tol=tol, max_iter=max_iter, stop=rule)
            if training:
                model.solver = solver
            else:
                model.eval_solver = solver
            with torch.no_grad():
                start = time.perf_counter()
                out[rule] = model(y, physics)
                times[rule].append(time.perf_counter() - start)
            iterations[rule].append(float(model.last_stats.iterations.float().mean()))
        diff = (out["sample"] - out["batch"]).flatten(1).norm(dim=1) / out["batch"].flatten(1).norm(dim=1)
        worst = max(worst, float(diff.max()))
    total = {r: sum(times[r]) for r in rules}
    return {
        "tol": tol,
        "seconds_total": {r: round(total[r], 3) for r in rules},
        "seconds_median": {r: round(statistics.median(times[r]), 4) for r in rules},
        "mean_iterations_per_sample": {r: round(statistics.mean(iterations[r]), 2) for r in rules},
        "time_ratio_sample_over_batch": round(total["sample"] / total["batch"], 3),
        "max_relative_difference": round(worst, 5),
    }


def main() -> None:
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:deblur")
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    device = benchlib.setup(args)
    if device.type != "cpu":
        sys.exit("error: the subset path runs where the stop flags are read at once (the CPU); use --device cpu")
    info = benchlib.machine_info(device)
    model, cfg, cache = benchlib.load_reference(args.checkpoint, device)
    batches = 2 if args.quick else args.batches
    modes = {
        "training": measure(model, cfg, cache, True, batches),
        "inference": measure(model, cfg, cache, False, batches),
    }
    payload = {
        "benchmark": "per_sample_stop",
        "checkpoint": args.checkpoint,
        "machine": benchlib.finish_info(info),
        "setup": {
            "batch": cfg.training.batch_size,
            "patch": cfg.data.patch_size,
            "batches": batches,
            "solver": "anderson",
        },
        "modes": modes,
    }
    path = benchlib.write_json(Path(args.out), "per_sample_stop_deblur", payload)
    print(f"wrote {path}")
    for name, mode in modes.items():
        print(name, mode)


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
