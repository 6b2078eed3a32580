"""The solvers' own cost per iteration: operations launched and time, on a map that costs ~nothing.

Where an iteration of ``T`` is short (a GPU at 128x128 x 16: about 1 ms, bound by kernel launches),
every small kernel of the solver's bookkeeping (residual norms, best iterate, trace, stop test)
counts. This script runs Picard and Anderson for a fixed number of iterations on a one-kernel map
``u -> 0.999 u + c`` and reports, per iteration and after subtracting the map's own:

- ``ops``: operator calls that do work (``aten::`` operators that run a kernel, view and
  allocation operators excluded), counted with ``torch.profiler`` (on CUDA: the device kernels it
  records instead);
- ``us``: wall time (median of repeats, interleaved with the map alone).

Both stop tests run (``lagged``: the CUDA default, where the stop flag is read one iteration late;
``sync``: the CPU default, which reads it at once), for whole-batch and per-sample stopping.

    python benchmarks/solver_kernels.py [--device cpu|cuda] [--quick] [--batch 16 --size 128]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import Any

import benchlib
import torch
from torch.profiler import ProfilerActivity, profile

from jfb_inverse.implicit import Anderson, Picard

KEYS = ("benchmark", "machine", "setup", "map_only_us_per_iteration", "solvers")

# Operators that only make views, allocate or wrap a scalar: no kernel runs.
NO_KERNEL = {
    "aten::as_strided", "aten::view", "aten::select", "aten::slice", "aten::reshape", "aten::expand",
    "aten::unsqueeze", "aten::squeeze", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::new_empty", "aten::_reshape_alias", "aten::alias", "aten::permute", "aten::transpose",
    "aten::t", "aten::mT", "aten::diagonal", "aten::resolve_conj", "aten::resolve_neg", "aten::view_as",
    "aten::detach", "aten::lift_fresh", "aten::result_type", "aten::scalar_tensor", "aten::to",
    "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::resize_", "aten::narrow",
    "aten::__and__", "aten::__or__", "aten::linalg_solve_ex", "aten::isfinite",
}  # fmt: skip
# Composite operators whose work is counted in their children (``isfinite`` = eq, abs, ne, mul;
# ``__or__`` = bitwise_or; ``_to_copy`` = copy_; ``linalg_solve_ex`` = its LU calls) are excluded
# above or here, so that each kernel is counted once.
COMPOSITE = {"aten::_to_copy", "aten::to", "aten::linalg_solve_ex", "aten::_linalg_solve_ex"}


def count_ops(fn: Any, device: torch.device) -> int:
    """Kernels ``fn`` runs: CUDA kernels on a GPU, work-doing ``aten::`` operators on the CPU."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(
        e.count
        for e in prof.key_averages()
        if e.key.startswith("aten::") and e.key not in NO_KERNEL and e.key not in COMPOSITE
    )


def solvers(iters: int) -> dict[str, Any]:
    """The contenders: each solver with each stop test, fixed iteration count (tol ~ 0)."""
    tol = benchlib.TINY_TOL
    out = {}
    for lagged in (True, False):
        tag = "lagged" if lagged else "sync"
        out[f"picard_{tag}"] = Picard(tol=tol, max_iter=iters, lagged_stop=lagged)
        out[f"picard_sample_{tag}"] = Picard(tol=tol, max_iter=iters, lagged_stop=lagged, stop="sample")
        out[f"anderson_{tag}"] = Anderson(tol=tol, max_iter=iters, lam=1e-2, lagged_stop=lagged)
    return out


def run(
    device: torch.device | str = "cpu",
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    repeats: int | None = None,
    shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Count and time each solver's bookkeeping; writes ``solver_kernels[_<device>].json``."""
    device = torch.device(device)
    info = benchlib.machine_info(device)
    batch, size = shape or ((2, 32) if quick else (16, 128) if device.type == "cuda" else (8, 64))
    iters = 10 if quick else 40
    repeats = repeats or (3 if quick else 7)
    u0 = torch.rand(batch, 1, size, size, device=device)
    c = torch.rand_like(u0) * 0.01

    def cheap(u: torch.Tensor) -> torch.Tensor:
        return u.mul(0.999).add_(c)

    def map_only() -> None:
        u = u0
        for _ in range(iters):
            u = cheap(u)

    contenders = solvers(iters)
    calls = {"map_only": map_only} | {k: (lambda s=s: s.solve(cheap, u0)) for k, s in contenders.items()}
    for fn in calls.values():  # warm-up (allocator, lazy CUDA init)
        fn()
    map_ops = count_ops(map_only, device)
    times = {k: benchlib.summary(v)["median_s"] for k, v in benchlib.alternate(calls, repeats, device).items()}
    rows = {}
    for name, fn in calls.items():
        if name == "map_only":
            continue
        rows[name] = {
            "ops_per_iteration": round((count_ops(fn, device) - map_ops) / iters, 2),
            "us_per_iteration": round((times[name] - times["map_only"]) / iters * 1e6, 1),
        }
    payload = {
        "benchmark": "solver_kernels",
        "machine": benchlib.finish_info(info),
        "setup": {
            "shape": [batch, 1, size, size],
            "iterations": iters,
            "repeats": repeats,
            "map": "u -> 0.999 u + c (its own ops and time subtracted)",
            "ops": "CUDA kernels recorded by torch.profiler"
            if device.type == "cuda"
            else "aten operators that run a kernel (views, allocations and composite wrappers excluded)",
        },
        "map_only_us_per_iteration": round(times["map_only"] / iters * 1e6, 1),
        "solvers": rows,
    }
    name = "solver_kernels" if device.type == "cpu" else f"solver_kernels_{device.type}"
    benchlib.write_json(Path(out), name, payload)
    return payload


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="batch (default 8 on CPU, 16 on GPU)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 on CPU, 128 on GPU)")
    args = parser.parse_args()
    if (args.batch is None) != (args.size is None):
        parser.error("give --batch and --size together")
    device = benchlib.setup(args)
    shape = None if args.batch is None else (args.batch, args.size)
    payload = run(device, args.quick, args.out, args.repeats, shape)
    print(f"  map alone: {payload['map_only_us_per_iteration']} us per iteration")
    for name, row in payload["solvers"].items():
        print(f"  {name:22s} {row['ops_per_iteration']:6.2f} ops  {row['us_per_iteration']:8.1f} us per iteration")


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
