"""Shared helpers of the benchmark scripts: machine notes, fair timing, counters, the reference set-up.

Fairness rules every script follows (the machines this runs on are shared and noisy):

- contenders run in the SAME process, interleaved (A B C, B C A, C A B, ...), never one block after
  another, and each is reported as the median over repeats; comparisons are given as RATIOS of
  medians, which survive a uniformly slower machine far better than absolute times;
- the load average before and after, the CPU model, the thread count and the versions are written
  into every JSON file;
- on CUDA every timed region is bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results"
TINY_TOL = 1e-30  # a forward solve with this tolerance runs exactly max_iter iterations


# --------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (None where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device | str) -> dict[str, Any]:
    """Everything needed to judge a number later: hardware, threads, versions, load, allocator."""
    from jfb_inverse.runtime import malloc_tuned

    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
        "malloc_tuned": malloc_tuned(),
    }
    with contextlib.suppress(ImportError):
        import deepinv

        info["deepinv"] = deepinv.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def finish_info(info: dict[str, Any]) -> dict[str, Any]:
    """Add the load average at the end of a run."""
    info["loadavg_end"] = loadavg()
    return info


# ---------------------------------------------------------------------------------------------- timing
def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | str) -> tuple[float, Any]:
    """Wall time of one call of ``fn`` (synchronised on CUDA) and its result."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def alternate(
    contenders: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device | str,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time every contender ``repeats`` times, interleaved with a rotating order; seconds per call."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, _ = timed(contenders[name], device)
            times[name].append(seconds)
    return times


def summary(samples: list[float]) -> dict[str, Any]:
    """Median, min, max and the raw samples (seconds)."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "samples_s": [round(s, 6) for s in samples],
    }


def ratio(a: float, b: float) -> float:
    """``a / b`` rounded for reports."""
    return round(a / b, 4) if b > 0 else float("nan")


# -------------------------------------------------------------------------------------------- counters
_OPERATOR_METHODS = ("A", "A_adjoint", "A_adjoint_A", "A_A_adjoint", "V", "V_adjoint", "U", "U_adjoint", "prox_l2")


class OperatorCounter:
    """Counts calls of a physics' operator methods (batched calls), outermost calls only.

    ``A_adjoint`` calling ``V`` internally counts as one ``A_adjoint``; a closed-form prox calling
    ``V``/``V_adjoint`` directly counts those. Calls made by autograd in a backward pass are not
    Python calls and are not counted (each VJP through T applies the transpose of T's consistency
    step once).
    """

    def __init__(self, physics: Any) -> None:
        self.physics = physics
        self.counts: dict[str, int] = {}
        self._depth = 0
        self._originals: dict[str, Any] = {}
        for name in _OPERATOR_METHODS:
            method = getattr(physics, name, None)
            if method is None or not callable(method):
                continue
            self._originals[name] = method
            setattr(physics, name, self._wrap(name, method))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.counts[name] = self.counts.get(name, 0) + 1
            self._depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted

    def reset(self) -> None:
        """Zero the counts."""
        self.counts = {}

    def restore(self) -> None:
        """Put the original methods back."""
        for name in self._originals:
            with contextlib.suppress(AttributeError):
                delattr(self.physics, name)


class CallCounter:
    """Counts forward calls of a module (e.g. the regulariser: one call per application of T)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()


@contextlib.contextmanager
def saved_tensor_bytes() -> Iterator[dict[str, int]]:
    """Bytes of the distinct storages autograd saves for backward inside the block (deterministic)."""
    seen: set[tuple[int, int]] = set()
    record = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        record["tensors"] += 1
        if key not in seen:
            seen.add(key)
            record["bytes"] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield record


# ------------------------------------------------------------------------------------------- the set-up
def available_problems() -> list[str]:
    """Registered problem names."""
    from jfb_inverse.problems import list_problems

    return list(list_problems())


def problem_config(problem: str, patch: int | None = None, batch: int | None = None) -> Any:
    """The resolved definition of a registered problem, with the benchmark's patch size / batch.

    Precision fp32: the benchmarks compare strategies and engines doing the same arithmetic
    (deepinv runs fp32); precision ``auto`` would train in bf16 on a CPU with native bf16.
    Equivariance ``none``: evaluation applies the plain ``T`` (one ``D`` per iteration), as
    deepinv's DEQ does, and as the numbers measured before the option existed did.
    """
    from jfb_inverse.problems import resolve_config

    overrides: dict[str, Any] = {"training": {"precision": "fp32"}, "model": {"equivariance": "none"}}
    if patch is not None:
        overrides["data"] = {"patch_size": patch}
    if batch is not None:
        overrides["training"]["batch_size"] = batch
    return resolve_config(problem, overrides=overrides)


def training_batch(cfg: Any, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """One fixed training batch ``(x, y, physics)`` of the definition (patches and noise seeded)."""
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import simulate
    from jfb_inverse.training.data import TrainingSource

    source = TrainingSource(cfg.data, cfg.training.batch_size, seed, device)
    x = source.sample()
    physics = PhysicsCache(cfg, device).for_image((cfg.data.channels, cfg.data.patch_size, cfg.data.patch_size))
    with torch.no_grad():
        y = simulate(x, physics, cfg.noise, torch.Generator(device=device).manual_seed(seed + 1))
    return x, y, physics


def reference_checkpoint(
    problem: str, out_dir: Path, checkpoint: str | None, device: torch.device, steps: int
) -> tuple[str, dict[str, Any]]:
    """A trained model of ``problem``: ``checkpoint`` if given, else ``builtin:<problem>`` if shipped,
    else a short training run (``steps`` Adam steps, cached under ``out_dir``). Returns the path and a
    note for the JSON saying which it was."""
    from jfb_inverse.errors import CheckpointError
    from jfb_inverse.training.checkpoint import resolve_checkpoint_path

    if checkpoint is not None:
        return checkpoint, {"checkpoint": checkpoint, "source": "given"}
    with contextlib.suppress(CheckpointError):
        resolve_checkpoint_path(f"builtin:{problem}")
        return f"builtin:{problem}", {"checkpoint": f"builtin:{problem}", "source": "builtin"}
    run_dir = out_dir / f"reference_{problem}_{steps}steps"
    path = run_dir / "model.pt"
    note = {
        "checkpoint": str(path),
        "source": f"trained here: no builtin:{problem}, so a short {steps}-step run of the problem's "
        "default recipe (JFB, Anderson) was trained by the benchmark and cached",
        "steps": steps,
    }
    if path.is_file():
        note["cached"] = True
        return str(path), note
    from jfb_inverse.training.loop import train

    cfg = problem_config(problem)
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(
                update={"steps": steps, "log_every": max(1, steps // 5), "checkpoint_every": steps}
            )
        }
    )
    start = time.perf_counter()
    train(cfg, run_dir, device=device)
    note["train_seconds"] = round(time.perf_counter() - start, 1)
    return str(path), note


def builtin_checkpoint(problem: str) -> str | None:
    """``builtin:<problem>`` when the package ships that model, else None."""
    from jfb_inverse.errors import CheckpointError
    from jfb_inverse.training.checkpoint import resolve_checkpoint_path

    try:
        resolve_checkpoint_path(f"builtin:{problem}")
    except CheckpointError:
        return None
    return f"builtin:{problem}"


def plain_conv(layer: torch.nn.Conv2d) -> torch.nn.Conv2d:
    """An ``nn.Conv2d`` with ``layer``'s shape, weights, device and memory layout (for a
    ``SingleOutputConv2d`` or ``OneDNNConv2d``: the same layer without its faster no-grad form)."""
    plain = torch.nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        dilation=layer.dilation,  # type: ignore[arg-type]
        groups=layer.groups,
        bias=layer.bias is not None,
    ).to(layer.weight.device)
    plain.load_state_dict(layer.state_dict())
    # The weight's exact strides, not .contiguous(memory_format=...): a one-input-channel weight is
    # "contiguous" in both layouts, so that call keeps NCHW strides, and the convolution then picks
    # NCHW for every later layer too (a layout change, not the layer, would be measured).
    w = layer.weight.detach()
    plain.weight.data = torch.empty_strided(w.shape, w.stride(), dtype=w.dtype, device=w.device).copy_(w)
    return plain


def plain_layers(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``SingleOutputConv2d`` and ``OneDNNConv2d`` inside ``module`` by
    :func:`plain_conv` of it (in place)."""
    from jfb_inverse.models.layers import OneDNNConv2d, SingleOutputConv2d

    for name, child in list(module.named_children()):
        if isinstance(child, (SingleOutputConv2d, OneDNNConv2d)):
            setattr(module, name, plain_conv(child))
        else:
            plain_layers(child)
    return module


def load_reference(checkpoint: str, device: torch.device) -> tuple[Any, Any, Any]:
    """``(model, cfg, physics_cache)`` of a checkpoint (model in eval mode), in fp32 and with the
    plain ``T`` at evaluation, like :func:`problem_config` (a checkpoint trained with precision
    ``auto`` would train in bf16 here)."""
    from jfb_inverse.training.checkpoint import load_model

    model, cfg, cache = load_model(checkpoint, device)
    model.precision = "fp32"
    model.equivariance = "none"
    return model, cfg, cache


# ------------------------------------------------------------------------------------------------ CLI
def _at_least_one(text: str) -> int:
    """An argparse type: an integer of at least 1 (threads, repeats)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (JSON + PNG)")
    parser.add_argument("--threads", type=_at_least_one, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=_at_least_one, default=None, help="timed repeats per contender")
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default allocator thresholds (see jfb_inverse.runtime.tune_malloc)",
    )
    return parser


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """A script's refusals as the CLI gives them: ``error: ...`` on stderr and exit code 2, no
    traceback (missing checkpoints, unknown problems, an --out that is a file)."""
    from jfb_inverse.errors import UserError

    try:
        yield
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        print(exc.code if exc.code.startswith("error: ") else f"error: {exc.code}", file=sys.stderr)
        raise SystemExit(2) from None
    except UserError as exc:  # not OSError: a measurement that fails on a file keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, allocator tuning, output folder, device check; returns the device."""
    from jfb_inverse.runtime import tune_malloc

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for but no CUDA GPU is available; use --device cpu")
    check_out(Path(args.out))
    torch.set_num_threads(max(1, int(args.threads)))
    if not getattr(args, "no_malloc_tuning", False):
        tune_malloc()
    return device  # --out is created by the first file written: a refused run leaves no empty folder


def check_out(out: Path) -> None:
    """``--out`` is, or can become, a folder this process can write: refused before any measuring."""
    from jfb_inverse.cli.common import check_writable_folder

    check_writable_folder(out)


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``name.json`` under ``out_dir`` (pretty, stable key order)."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    return path


def save(
    out_dir: Path | str, name: str, payload: dict[str, Any], plot: Callable[[dict[str, Any], Path], None] | None
) -> dict[str, Any]:
    """Write ``name.json`` and, when ``plot`` is given, ``name.png`` drawn by ``plot(payload, path)``."""
    out = Path(out_dir)
    write_json(out, name, payload)
    if plot is not None:
        plot(payload, out / f"{name}.png")
    return payload


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def pyplot() -> Any:
    """matplotlib's pyplot with the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
