"""Item 3: peak memory of one training step against the forward depth K (JFB, ImplicitDiff, Unrolled).

Each point (strategy, K) runs in a FRESH subprocess, so no allocator state carries over:

- CPU: the resident-set peak of the step. The worker builds the model and batch, runs one warm-up
  step (JFB, K=2: libraries initialise their buffers), hands freed memory back to the kernel
  (``malloc_trim``), resets the kernel's peak counter (``/proc/self/clear_refs``), reads ``VmRSS``,
  runs the step and reads ``VmHWM``. Reported: ``VmHWM - VmRSS before`` (MiB). glibc's default
  thresholds are kept in the worker (tuned thresholds would keep freed memory and hide the peak).
- CUDA: ``torch.cuda.max_memory_allocated()`` over the step minus the memory allocated before it.
- Both: the bytes autograd saves for backward (``saved_tensors_hooks``; distinct storages), which
  is deterministic and explains the peak.

The forward solve is Picard with tol 1e-30 (exactly K iterations); ImplicitDiff's backward is
Anderson (tol 1e-4, at most 50 VJPs); Unrolled backpropagates through K iterations.

    python benchmarks/memory.py [--device cpu|cuda] [--quick] [--problem deblur|ct] [--samples 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib
import gc
import json
import os
import subprocess
from typing import Any

import benchlib
import torch
from torch.nn import functional as F

from jfb_inverse.implicit import JFB, ImplicitDiff, Picard, Unrolled

KEYS = ("benchmark", "problem", "machine", "setup", "points", "targets")
STRATEGIES = ("jfb", "implicit", "unrolled")


def depths(quick: bool) -> list[int]:
    """Forward depths measured (40 is the reference depth of the time benchmark)."""
    return [2, 8] if quick else [10, 40, 50, 100, 200]


def _strategy(name: str, depth: int) -> Any:
    if name == "jfb":
        return JFB()
    if name == "implicit":
        return ImplicitDiff(solver="anderson", tol=1e-4, max_iter=50)
    if name == "unrolled":
        return Unrolled(K=depth)
    raise ValueError(f"unknown strategy {name!r}")


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_point(
    strategy: str, depth: int, problem: str, device: torch.device, patch: int, batch: int, checkpoint: str | None
) -> dict[str, Any]:
    """One (strategy, K=depth) point in THIS process (call it in a fresh one)."""
    K = depth
    from jfb_inverse.runtime import release_memory

    model, _, x, y, physics, note = _build(problem, device, patch, batch, checkpoint)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)

    def step(gradient: Any, k: int, count: bool = True) -> dict[str, int]:
        model.gradient = gradient
        model.solver = Picard(tol=benchlib.TINY_TOL, max_iter=k)
        opt.zero_grad(set_to_none=False)
        with benchlib.saved_tensor_bytes() if count else contextlib.nullcontext({}) as saved:
            loss = F.mse_loss(model(y, physics), x)
        loss.backward()
        opt.step()
        return saved

    # Warm-up without the saved-tensor hooks: operator norm, library buffers, Adam state, .grad
    # tensors, and deepinv's lazily built autograd adjoints (torch.func refuses to run under hooks).
    step(JFB(), 2, count=False)
    gc.collect()
    result: dict[str, Any] = {"strategy": strategy, "K": K, **note}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        saved = step(_strategy(strategy, K), K)
        torch.cuda.synchronize()
        result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        result["method"] = "torch.cuda.max_memory_allocated - allocated before"
    else:
        release_memory()
        reset = _reset_peak()
        rss_before = _status_kib("VmRSS") or 0
        saved = step(_strategy(strategy, K), K)
        hwm = _status_kib("VmHWM") or 0
        result["peak_mib"] = (hwm - rss_before) / 1024
        result["rss_before_mib"] = rss_before / 1024
        result["method"] = "VmHWM - VmRSS before (peak counter reset)" if reset else "VmHWM - VmRSS (peak NOT reset)"
    result["saved_tensor_mib"] = saved["bytes"] / 2**20
    stats = model.last_stats
    if stats is not None and stats.backward is not None:
        result["vjps"] = stats.backward.evaluations
    return result


def _build(problem: str, device: torch.device, patch: int, batch: int, checkpoint: str | None):
    from training_step import build

    return build(problem, device, patch, batch, checkpoint)


def _sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    from training_step import sizes

    s = sizes(device, quick)
    return s["patch"], s["batch"]


def run(
    device: torch.device | str = "cpu",
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    problem: str = "deblur",
    checkpoint: str | None = None,
    threads: int = 1,
    plot: bool = True,
    samples: int | None = None,
) -> dict[str, Any]:
    """Measure every (strategy, K) point in its own subprocess, ``samples`` times (rounds over all
    points, default 3, 1 with ``quick``), and keep each point's median peak; write
    ``memory_<problem>.json`` / ``.png``. One RSS sample jitters by tens of MiB on CPU."""
    device = torch.device(device)
    info = benchlib.machine_info(device)
    patch, batch = _sizes(device, quick)
    samples = samples or (1 if quick else 3)
    raw: dict[tuple[str, int], list[dict[str, Any]]] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["JFB_INVERSE_MALLOC"] = "0"
    rounds = [(K, strategy) for _ in range(samples) for K in depths(quick) for strategy in STRATEGIES]
    for K, strategy in rounds:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            f"{strategy}:{K}",
            "--device",
            str(device),
            "--problem",
            problem,
            "--threads",
            str(threads),
            "--patch",
            str(patch),
            "--batch",
            str(batch),
        ]
        if checkpoint is not None:
            cmd += ["--checkpoint", checkpoint]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {strategy}:{K} failed:\n{proc.stderr[-2000:]}")
        raw.setdefault((strategy, K), []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
    points = []
    for runs in raw.values():
        peaks = sorted(r["peak_mib"] for r in runs)
        point = dict(runs[0])
        point["peak_mib"] = peaks[len(peaks) // 2]
        point["peak_mib_samples"] = [r["peak_mib"] for r in runs]
        points.append(point)
    by = {(p["strategy"], p["K"]): p for p in points}
    ks = depths(quick)
    k_ref = 40 if 40 in ks else ks[len(ks) // 2]
    jfb_lo, jfb_hi = by[("jfb", ks[0])]["peak_mib"], by[("jfb", ks[-1])]["peak_mib"]
    targets = {
        f"jfb_peak_K{ks[-1]}_within_10pct_of_K{ks[0]}": {
            "value": round(jfb_hi / jfb_lo, 4) if jfb_lo > 0 else None,
            "saved_tensor_ratio": round(
                by[("jfb", ks[-1])]["saved_tensor_mib"] / by[("jfb", ks[0])]["saved_tensor_mib"], 4
            ),
            "target": 1.10,
            "met": bool(jfb_lo > 0 and jfb_hi <= 1.10 * jfb_lo),
        },
        f"unrolled_over_jfb_at_K{k_ref}_ge_10": {
            "value": round(by[("unrolled", k_ref)]["peak_mib"] / max(by[("jfb", k_ref)]["peak_mib"], 1e-9), 2),
            "saved_tensor_ratio": round(
                by[("unrolled", k_ref)]["saved_tensor_mib"] / by[("jfb", k_ref)]["saved_tensor_mib"], 2
            ),
            "target": 10.0,
            "met": bool(by[("unrolled", k_ref)]["peak_mib"] >= 10 * by[("jfb", k_ref)]["peak_mib"]),
        },
    }
    payload = {
        "benchmark": "memory",
        "problem": problem,
        "machine": benchlib.finish_info(info),
        "setup": {
            "depths": ks,
            "batch": batch,
            "patch": patch,
            "forward_solver": "Picard, tol 1e-30 (exactly K iterations)",
            "implicit_backward": "Anderson, tol 1e-4, max 50",
            "isolation": "one fresh subprocess per point and sample; glibc default thresholds in the workers",
            "samples": samples,
            "weights": points[0].get("weights"),
        },
        "points": points,
        "targets": targets,
    }
    return benchlib.save(out, f"memory_{problem}", payload, plot_memory if plot else None)


def plot_memory(payload: dict[str, Any], path: Path) -> None:
    """Peak step memory (and saved-tensor bytes, dashed) against K, log-log."""
    plt = benchlib.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"jfb": "#1f77b4", "implicit": "#ff7f0e", "unrolled": "#2ca02c"}
    for strategy in STRATEGIES:
        pts = sorted((p for p in payload["points"] if p["strategy"] == strategy), key=lambda p: p["K"])
        ks = [p["K"] for p in pts]
        ax.plot(ks, [max(p["peak_mib"], 1e-3) for p in pts], "o-", color=colors[strategy], label=f"{strategy} peak")
        ax.plot(
            ks,
            [p["saved_tensor_mib"] for p in pts],
            "x--",
            color=colors[strategy],
            alpha=0.6,
            label=f"{strategy} saved",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forward iterations K")
    ax.set_ylabel("MiB")
    s = payload["setup"]
    ax.set_title(
        f"{payload['problem']}: training-step memory vs depth, batch {s['batch']}x{s['patch']}^2 "
        f"({payload['machine']['device']})",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Command line (``--worker strategy:K`` is the internal per-point mode)."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--problem", default="deblur")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--samples", type=int, default=None, help="subprocess samples per point (default 3)")
    parser.add_argument("--worker", default=None, help=argparse_hidden())
    parser.add_argument("--patch", type=int, default=None, help=argparse_hidden())
    parser.add_argument("--batch", type=int, default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.worker:
        device = torch.device(args.device)
        torch.set_num_threads(max(1, args.threads))
        strategy, K = args.worker.split(":")
        result = measure_point(strategy, int(K), args.problem, device, args.patch, args.batch, args.checkpoint)
        print(json.dumps(result))
        return
    device = benchlib.setup(args)
    payload = run(device, args.quick, args.out, args.problem, args.checkpoint, args.threads, samples=args.samples)
    for p in payload["points"]:
        print(
            f"  {p['strategy']:9s} K={p['K']:4d}  peak {p['peak_mib']:9.1f} MiB  saved {p['saved_tensor_mib']:9.1f} MiB"
        )
    print("  targets:", payload["targets"])


def argparse_hidden() -> str:
    """Help text of internal options."""
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
