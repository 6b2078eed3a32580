"""The glibc allocator on CPU: inference and training-step time with and without tuned thresholds.

Each variant runs in its own subprocess (allocator settings are per process and environment
variables only act at process start); the variants are interleaved round by round (A B C D,
B C D A, ...) and each worker reports the median of its calls plus the minor page faults per call
(a load-independent witness: a fault is the kernel zero-filling a page the allocator gave back).

Variants:

- ``default``: glibc's defaults (dynamic mmap threshold, trimming);
- ``env``: ``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=536870912`` set before start;
- ``env_top_pad``: ``MALLOC_TOP_PAD_=268435456`` only;
- ``mallopt``: ``jfb_inverse.runtime.tune_malloc()`` called inside the process after the imports
  (what the CLI does; no environment variable, no re-exec).

Workloads (deblur network, fixed iteration counts): ``infer_1x128`` (one 128x128 image, Anderson,
30 iterations: what ``jfb-inverse reconstruct`` does), ``infer_8x64`` (a batch of 8 64x64, 30
iterations) and ``train_8x64`` (a JFB training step, 20 iterations).

    python benchmarks/malloc_env.py [--quick] [--rounds N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import json
import os
import resource
import statistics
import subprocess
import time
from typing import Any

import benchlib

KEYS = ("benchmark", "machine", "setup", "variants", "ratios_to_default", "recommendation")
MIB = 1 << 20


def variant_env(name: str) -> dict[str, str]:
    """The environment of a variant's worker."""
    from jfb_inverse.runtime import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["JFB_INVERSE_MALLOC"] = "0"  # nothing applied implicitly; the worker decides
    if name == "env":
        env.update(MALLOC_ENV)
    elif name == "env_top_pad":
        env["MALLOC_TOP_PAD_"] = str(256 * MIB)
    return env


VARIANTS = ("default", "env", "env_top_pad", "mallopt")


def worker(variant: str, quick: bool, threads: int) -> dict[str, Any]:
    """Measure the workloads in this process."""
    import torch
    from torch.nn import functional as F

    from jfb_inverse.implicit import JFB, Anderson
    from jfb_inverse.models import build_model
    from jfb_inverse.problems import simulate

    applied = False
    if variant == "mallopt":
        from jfb_inverse.runtime import tune_malloc

        applied = tune_malloc(force=True)
    torch.set_num_threads(threads)
    cfg = benchlib.problem_config("deblur")
    torch.manual_seed(0)
    model, cache = build_model(cfg, "cpu")
    size_big, size_small, batch = (48, 24, 2) if quick else (128, 64, 8)
    iters_infer, iters_train = (6, 4) if quick else (30, 20)
    model.eval_solver = Anderson(tol=benchlib.TINY_TOL, max_iter=iters_infer)
    model.solver = Anderson(tol=benchlib.TINY_TOL, max_iter=iters_train)
    model.gradient = JFB()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(0)
    data = {}
    for name, b, s in (("1x128", 1, size_big), ("8x64", batch, size_small)):
        x = torch.rand(b, 1, s, s, generator=gen)
        physics = cache.for_image((1, s, s))
        data[name] = (x, simulate(x, physics, cfg.noise, gen), physics)

    def infer(name: str):
        _, y, physics = data[name]

        def call() -> None:
            model.eval()
            with torch.no_grad():
                model(y, physics)

        return call

    def train() -> None:
        x, y, physics = data["8x64"]
        model.train()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(y, physics), x).backward()
        opt.step()

    workloads = {"infer_1x128": infer("1x128"), "infer_8x64": infer("8x64"), "train_8x64": train}
    calls = 2 if quick else 3
    result: dict[str, Any] = {"variant": variant, "mallopt_applied": applied}
    for name, fn in workloads.items():
        fn()  # warm-up
        times = []
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        result[name] = {"median_s": statistics.median(times), "minor_faults_per_call": faults / calls}
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run(
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    rounds: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Run the variants' workers interleaved; write ``malloc.json`` / ``.png``."""
    rounds = rounds or (1 if quick else 3)
    info = benchlib.machine_info("cpu")
    info["glibc"] = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    names = ("default", "mallopt") if quick else VARIANTS
    per_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for variant in order:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--threads", str(threads)]
            if quick:
                cmd.append("--quick")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=variant_env(variant), check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"malloc worker {variant} failed:\n{proc.stderr[-2000:]}")
            per_variant[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    workloads = ("infer_1x128", "infer_8x64", "train_8x64")
    variants: dict[str, Any] = {}
    for v, results in per_variant.items():
        variants[v] = {
            w: {
                "median_s": statistics.median(r[w]["median_s"] for r in results),
                "minor_faults_per_call": statistics.median(r[w]["minor_faults_per_call"] for r in results),
                "round_medians_s": [round(r[w]["median_s"], 5) for r in results],
            }
            for w in workloads
        }
        variants[v]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    ratios = {
        v: {w: benchlib.ratio(variants["default"][w]["median_s"], variants[v][w]["median_s"]) for w in workloads}
        for v in names
        if v != "default"
    }
    payload = {
        "benchmark": "malloc",
        "machine": benchlib.finish_info(info),
        "setup": {
            "rounds": rounds,
            "workloads": list(workloads),
            "isolation": "one subprocess per variant and round, interleaved",
            "env": {v: {k: e for k, e in variant_env(v).items() if k.startswith("MALLOC_")} for v in names},
        },
        "variants": variants,
        "ratios_to_default": {"meaning": "default time / variant time (>1: variant faster)", **ratios},
        "recommendation": (
            "call jfb_inverse.runtime.tune_malloc() at CLI start-up (mallopt through ctypes: "
            "M_MMAP_THRESHOLD=256 MiB, M_TRIM_THRESHOLD=512 MiB); equivalent environment variables: "
            "MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=536870912"
        ),
    }
    out = Path(out)
    benchlib.write_json(out, "malloc", payload)
    plot_malloc(payload, out / "malloc.png")
    return payload


def plot_malloc(payload: dict[str, Any], path: Path) -> None:
    """Grouped bars: median time per workload and variant."""
    plt = benchlib.pyplot()
    workloads = payload["setup"]["workloads"]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    names = list(payload["variants"])
    width = 0.8 / len(names)
    for i, v in enumerate(names):
        vals = [payload["variants"][v][w]["median_s"] for w in workloads]
        ax.bar([j + i * width for j in range(len(workloads))], vals, width, label=v)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(workloads))], workloads)
    ax.set_ylabel("median seconds")
    ax.set_title("glibc allocator thresholds (CPU)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Command line (``--worker VARIANT`` is the internal per-process mode)."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=__import__("argparse").SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.quick, args.threads)))
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    payload = run(args.quick, args.out, args.rounds, args.threads)
    for v, r in payload["variants"].items():
        print(
            f"  {v:12s} "
            + "  ".join(
                f"{w} {r[w]['median_s'] * 1e3:8.1f} ms ({r[w]['minor_faults_per_call']:.0f} faults)"
                for w in payload["setup"]["workloads"]
            )
            + f"  peak RSS {r['peak_rss_mib']:.0f} MiB"
        )
    print("  default/variant:", payload["ratios_to_default"])


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
