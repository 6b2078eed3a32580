"""GPU scale-out numbers (issue 7): training steps/s and images/s at 256x256 for deblur and CT,
bf16 against fp32, inference images/s, and peak memory of a training step against depth K.

    python benchmarks/gpu_scale.py --device cuda --out results/gpu_scale.json

Each training step uses a fixed number of forward iterations (Anderson with a tolerance it
cannot reach, so every contender does the same work); medians over ``--repeats`` timed steps
after warm-up. Memory is ``torch.cuda.max_memory_allocated`` around one training step (CPU:
saved-tensor bytes instead).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from jfb_inverse.implicit import JFB, Anderson, Picard, Unrolled
from jfb_inverse.models import build_model
from jfb_inverse.problems import resolve_config, simulate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(problem: str, size: int, batch: int, precision: str, iters: int, device: torch.device):
    # The plain T (one D per iteration), as measured before evaluation-time averaging existed.
    overrides = {"training": {"precision": precision}, "model": {"equivariance": "none"}}
    cfg = resolve_config(problem, overrides=overrides)
    model, physics = build_model(cfg, device)
    model.solver = Anderson(tol=1e-12, max_iter=iters)
    model.eval_solver = Anderson(tol=1e-12, max_iter=iters)
    phys = physics.for_image((1, size, size))
    x = torch.rand(batch, 1, size, size, device=device)
    y = simulate(x, phys, cfg.noise, torch.Generator(device=device).manual_seed(0))
    return model, phys, x, y


def training_throughput(
    problem: str, size: int, batch: int, precision: str, iters: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per JFB training step and the derived steps/s and images/s."""
    model, phys, x, y = _setup(problem, size, batch, precision, iters, device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        loss = (model(y, phys) - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 2:  # warm-up: cuDNN autotuning, FFT plans, norm estimate
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"seconds_per_step": step, "steps_per_s": 1 / step, "images_per_s": batch / step}


def inference_throughput(
    problem: str, size: int, batch: int, precision: str, iters: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per batch reconstruction under inference_mode."""
    model, phys, _, y = _setup(problem, size, batch, precision, iters, device)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            _sync(device)
            t0 = time.perf_counter()
            model(y, phys)
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"seconds_per_batch": t, "images_per_s": batch / t}


def memory_vs_depth(size: int, batch: int, depths: list[int], device: torch.device) -> dict[str, dict[int, float]]:
    """Peak memory (MiB) of one deblur training step against forward depth K, JFB vs Unrolled
    (``nan`` where the step ran out of memory)."""
    out: dict[str, dict[int, float]] = {"jfb": {}, "unrolled": {}}
    for k in depths:
        for name in ("jfb", "unrolled"):
            try:
                out[name][k] = _peak_memory(name, size, batch, k, device)
            except torch.OutOfMemoryError:
                out[name][k] = float("nan")
                torch.cuda.empty_cache()
    return out


def _peak_memory(name: str, size: int, batch: int, k: int, device: torch.device) -> float:
    model, phys, x, y = _setup("deblur", size, batch, "fp32", k, device)
    model.solver = Picard(tol=1e-12, max_iter=k)
    model.gradient = JFB() if name == "jfb" else Unrolled(k)
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        (model(y, phys) - x).square().mean().backward()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (model(y, phys) - x).square().mean()
    loss.backward()
    return saved / 2**20


def main() -> None:
    """Run the GPU scale set and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_scale.json"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "forward_iterations": args.iters,
        "train": {},
        "inference": {},
    }
    for problem in ("deblur", "ct"):
        for precision in ("fp32", "bf16"):
            key = f"{problem}_{precision}"
            result["train"][key] = training_throughput(
                problem, args.size, args.batch, precision, args.iters, args.repeats, device
            )
            result["inference"][key] = inference_throughput(
                problem, args.size, args.batch, precision, args.iters, args.repeats, device
            )
            print(key, result["train"][key], result["inference"][key], flush=True)
    # At 128x128 so that Unrolled(200) still fits in memory (it grows ~linearly: ~28 GB at K=200).
    result["memory_size"] = min(args.size, 128)
    result["memory_mib_vs_depth"] = memory_vs_depth(result["memory_size"], args.batch, [10, 50, 100, 200], device)
    print(result["memory_mib_vs_depth"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
