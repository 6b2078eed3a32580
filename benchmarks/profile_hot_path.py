"""The hot path: where a JFB training step and an inference forward spend their time, and what helps.

1. ``torch.profiler`` tables (top operators by self time) of a JFB training step (K=40 Picard,
   batch 8x64^2) and of an inference forward (one 128x128 image, Anderson, 30 iterations), written
   as text and JSON.
2. Solver overhead per iteration: Picard and Anderson on a cheap linear map, minus the map's own
   time, against the time of one application of the deblur T at the same size (the share the
   solver's bookkeeping costs).
3. ``torch.no_grad`` against ``torch.inference_mode`` for an inference forward (interleaved).
4. The regulariser's layout and compilation, on one application of D (interleaved): ``plain``
   (PyTorch's default NCHW layout), ``channels_last`` (what the package uses on the CPU,
   ``model.memory_format="auto"``) and ``compiled`` (channels-last plus ``torch.compile``, not in
   the package), with the one-off compile time and the max output difference. ``--no-compile``
   skips compiling (it takes tens of seconds on CPU).
5. The regulariser's last layer (many channels to one), ``nn.Conv2d`` against the package's
   ``SingleOutputConv2d`` (9 planes by one matrix product, then a shifted sum, when autograd is off),
   at two sizes: without autograd (the forward solves), and the input-only VJP of each form
   (implicit differentiation's backward; the package keeps the plain convolution under autograd);
   then a 40-iteration Picard solve of the deblur ``T`` with each last layer.
6. The regulariser's first layer (one channel to many), ``nn.Conv2d`` against ``OneDNNConv2d``
   without autograd at batch 1 (where PyTorch takes its slow path) and batch 8, and a one-image
   30-iteration Anderson solve in eval mode with the package's layers against plain ones.

    python benchmarks/profile_hot_path.py [--device cpu|cuda] [--quick] [--no-compile]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import copy
import time
from typing import Any

import benchlib
import torch
from torch.nn import functional as F

from jfb_inverse.implicit import JFB, Anderson, Picard

KEYS = (
    "benchmark",
    "machine",
    "profiles",
    "solver_overhead",
    "grad_mode",
    "regularizer_variants",
    "last_layer",
    "first_layer",
)


def _model(device: torch.device) -> tuple[Any, Any, Any]:
    from jfb_inverse.models import build_model

    cfg = benchlib.problem_config("deblur")
    torch.manual_seed(0)
    model, cache = build_model(cfg, device)
    with torch.no_grad():  # a non-trivial residual CNN (its last layer starts at zero)
        for p in model.regularizer.net[-1].parameters():
            p.normal_(0.0, 0.01)
    return model, cache, cfg


def _data(cache: Any, cfg: Any, device: torch.device, batch: int, size: int) -> tuple[Any, Any, Any]:
    from jfb_inverse.problems import simulate

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=gen, device=device)
    physics = cache.for_image((1, size, size))
    return x, simulate(x, physics, cfg.noise, gen), physics


def profile_table(fn: Any, device: torch.device, rows: int = 15) -> tuple[str, list[dict[str, Any]]]:
    """Profile one call of ``fn``: the text table and the top ``rows`` operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        fn()
        benchlib.sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    total = sum(getattr(e, key, 0) for e in averages) or 1
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:rows]
    table = averages.table(sort_by=key, row_limit=rows)
    return table, [
        {
            "op": e.key,
            "calls": e.count,
            "self_ms": round(getattr(e, key) / 1e3, 3),
            "self_share": round(getattr(e, key) / total, 4),
        }
        for e in top
    ]


def solver_overhead(device: torch.device, quick: bool, model: Any, cache: Any, cfg: Any) -> list[dict[str, Any]]:
    """Per-iteration bookkeeping of the solvers on a cheap map, next to one application of the real T."""
    rows = []
    shapes = [(2, 1, 32, 32)] if quick else [(8, 1, 64, 64), (1, 1, 128, 128), (4, 1, 256, 256)]
    iters = 10 if quick else 60
    for shape in shapes:
        c = torch.rand(shape, device=device) * 0.01
        u0 = torch.rand(shape, device=device)

        def cheap(u: torch.Tensor, c: torch.Tensor = c) -> torch.Tensor:
            return u.mul(0.999).add_(c)

        _, y, physics = _data(cache, cfg, device, shape[0], shape[-1])
        model.eval()
        with torch.no_grad():
            fn, start = model.fixed_point_map(y, physics)
        contenders = {
            "map_only": lambda cheap=cheap, u0=u0: [cheap(u0) for _ in range(iters)],
            "picard": lambda cheap=cheap, u0=u0: Picard(tol=benchlib.TINY_TOL, max_iter=iters).solve(cheap, u0),
            "anderson": lambda cheap=cheap, u0=u0: Anderson(tol=benchlib.TINY_TOL, max_iter=iters, lam=1e-2).solve(
                cheap, u0
            ),
        }

        def one_t(fn: Any = fn, start: Any = start) -> None:
            with torch.no_grad():
                fn(start)

        times = benchlib.alternate(contenders, 3 if quick else 7, device)
        t_app = benchlib.summary(benchlib.alternate({"T": one_t}, 3 if quick else 7, device)["T"])["median_s"]
        med = {k: benchlib.summary(v)["median_s"] for k, v in times.items()}
        for solver in ("picard", "anderson"):
            per_iter = (med[solver] - med["map_only"]) / iters
            rows.append(
                {
                    "shape": list(shape),
                    "solver": solver,
                    "overhead_us_per_iteration": round(per_iter * 1e6, 1),
                    "T_application_ms": round(t_app * 1e3, 3),
                    "overhead_share_of_T": round(per_iter / t_app, 5),
                }
            )
    return rows


def grad_modes(device: torch.device, quick: bool, model: Any, cache: Any, cfg: Any) -> dict[str, Any]:
    """``no_grad`` vs ``inference_mode`` on an inference forward (interleaved medians)."""
    size, iters = (32, 5) if quick else (128, 30)
    _, y, physics = _data(cache, cfg, device, 1, size)
    model.eval()
    model.eval_solver = Anderson(tol=benchlib.TINY_TOL, max_iter=iters)

    def under(ctx: Any) -> Any:
        def call() -> None:
            with ctx():
                model(y, physics)

        return call

    times = benchlib.alternate(
        {"no_grad": under(torch.no_grad), "inference_mode": under(torch.inference_mode)}, 3 if quick else 9, device
    )
    med = {k: benchlib.summary(v)["median_s"] for k, v in times.items()}
    return {
        "image": [1, 1, size, size],
        "iterations": iters,
        "median_s": med,
        "inference_mode_over_no_grad": benchlib.ratio(med["inference_mode"], med["no_grad"]),
    }


def regularizer_variants(device: torch.device, quick: bool, model: Any, compile_it: bool) -> dict[str, Any]:
    """Plain (NCHW) vs channels_last vs compiled regulariser: one application, forward and forward+backward."""
    from jfb_inverse.models import apply_memory_format

    batch, size = (2, 32) if quick else (8, 64)
    v = torch.rand(batch, 1, size, size, device=device)
    plain = apply_memory_format(copy.deepcopy(model.regularizer), "contiguous", device)
    variants: dict[str, Any] = {"plain": plain}
    variants["channels_last"] = apply_memory_format(copy.deepcopy(plain), "channels_last", device)
    notes: dict[str, Any] = {}
    if compile_it:
        compiled = copy.deepcopy(variants["channels_last"])
        compiled.compile()
        start = time.perf_counter()
        try:
            with torch.no_grad():
                compiled(v)
            compiled(v.clone().requires_grad_()).sum().backward()
            benchlib.sync(device)
            variants["compiled"] = compiled
            notes["compile_seconds"] = round(time.perf_counter() - start, 1)
        except Exception as exc:
            notes["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    with torch.no_grad():
        ref = plain(v)
        notes["max_abs_diff"] = {k: float((m(v) - ref).abs().max()) for k, m in variants.items()}

    def fwd(m: Any) -> Any:
        def call() -> None:
            with torch.no_grad():
                m(v)

        return call

    def fwd_bwd(m: Any) -> Any:
        def call() -> None:
            F.mse_loss(m(v), v).backward()

        return call

    reps = 3 if quick else 15
    t_fwd = benchlib.alternate({k: fwd(m) for k, m in variants.items()}, reps, device)
    t_bwd = benchlib.alternate({k: fwd_bwd(m) for k, m in variants.items()}, reps, device)
    out: dict[str, Any] = {"input": list(v.shape), **notes, "forward": {}, "forward_backward": {}}
    for label, times in (("forward", t_fwd), ("forward_backward", t_bwd)):
        med = {k: benchlib.summary(t)["median_s"] for k, t in times.items()}
        out[label] = {k: {"median_s": med[k], "speedup_over_plain": benchlib.ratio(med["plain"], med[k])} for k in med}
    return out


def _no_grad_call(layer: torch.nn.Module, x: torch.Tensor) -> Any:
    """A timed call: ``layer(x)`` without autograd."""

    def call() -> None:
        with torch.no_grad():
            layer(x)

    return call


def last_layer(device: torch.device, quick: bool, width: int = 32) -> dict[str, Any]:
    """``nn.Conv2d(width, 1, 3)`` against ``SingleOutputConv2d``: the layer without autograd, the
    input-only VJP of each form (the package keeps the plain one under autograd), and a 40-iteration
    Picard solve of the deblur ``T`` with each last layer (interleaved medians)."""
    from jfb_inverse.models import apply_memory_format
    from jfb_inverse.models.layers import SingleOutputConv2d, shifted_sum_conv2d

    torch.manual_seed(0)
    plain = apply_memory_format(torch.nn.Conv2d(width, 1, 3, padding=1).to(device), "auto", device)
    fast = apply_memory_format(SingleOutputConv2d(width, 1, 3, padding=1).to(device), "auto", device)
    fast.load_state_dict(plain.state_dict())
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    reps = 3 if quick else 21
    rows = []
    for batch, size in [(2, 32)] if quick else [(8, 64), (1, 256)]:
        x = torch.rand(batch, width, size, size, device=device).contiguous(memory_format=layout)
        with torch.no_grad():
            diff = float((fast(x) - plain(x)).abs().max())

        xg = x.clone().requires_grad_()
        outs = {
            "conv2d": plain(xg),
            "shifted_sum": shifted_sum_conv2d(xg, plain.weight, plain.bias, (1, 1), (1, 1)),
        }
        v = torch.randn_like(outs["conv2d"])

        def vjp(out: torch.Tensor, xg: torch.Tensor = xg, v: torch.Tensor = v) -> Any:
            return lambda: torch.autograd.grad(out, xg, v, retain_graph=True)

        calls = {"conv2d": _no_grad_call(plain, x), "single_output": _no_grad_call(fast, x)}
        t_fwd = benchlib.alternate(calls, reps, device)
        t_vjp = benchlib.alternate({k: vjp(o) for k, o in outs.items()}, reps, device)
        med_f = {k: benchlib.summary(t)["median_s"] for k, t in t_fwd.items()}
        med_v = {k: benchlib.summary(t)["median_s"] for k, t in t_vjp.items()}
        rows.append(
            {
                "input": list(x.shape),
                "no_grad_ms": {k: round(t * 1e3, 3) for k, t in med_f.items()},
                "no_grad_speedup": benchlib.ratio(med_f["conv2d"], med_f["single_output"]),
                "input_vjp_ms": {k: round(t * 1e3, 3) for k, t in med_v.items()},
                "input_vjp_shifted_over_conv2d": benchlib.ratio(med_v["shifted_sum"], med_v["conv2d"]),
                "max_abs_diff": diff,
            }
        )
    return {"layer": rows, "forward_solve": _solve_with_last_layers(device, quick, reps=3 if quick else 7)}


def first_layer(device: torch.device, quick: bool, width: int = 32) -> dict[str, Any]:
    """``nn.Conv2d(1, width, 3)`` against ``OneDNNConv2d`` without autograd (PyTorch's slow path at
    batch 1), and a one-image Anderson solve of the deblur ``T`` in eval mode with the package's
    layers against plain ``nn.Conv2d`` ones (both channels-last; interleaved medians)."""
    from jfb_inverse.models import apply_memory_format
    from jfb_inverse.models.layers import OneDNNConv2d

    torch.manual_seed(0)
    plain = apply_memory_format(torch.nn.Conv2d(1, width, 3, padding=1).to(device), "auto", device)
    fast = apply_memory_format(OneDNNConv2d(1, width, 3, padding=1).to(device), "auto", device)
    fast.load_state_dict(plain.state_dict())
    reps = 3 if quick else 21
    rows = []
    for batch, size in [(1, 32)] if quick else [(1, 128), (8, 64)]:
        x = torch.rand(batch, 1, size, size, device=device)
        with torch.no_grad():
            diff = float((fast(x) - plain(x)).abs().max())

        times = benchlib.alternate({"conv2d": _no_grad_call(plain, x), "onednn": _no_grad_call(fast, x)}, reps, device)
        med = {k: benchlib.summary(t)["median_s"] for k, t in times.items()}
        rows.append(
            {
                "input": list(x.shape),
                "no_grad_ms": {k: round(t * 1e3, 3) for k, t in med.items()},
                "no_grad_speedup": benchlib.ratio(med["conv2d"], med["onednn"]),
                "max_abs_diff": diff,
            }
        )
    model, cache, cfg = _model(device)
    iters, size = (5, 32) if quick else (30, 128)
    _, y, physics = _data(cache, cfg, device, 1, size)
    plain_model = copy.deepcopy(model)
    benchlib.plain_layers(plain_model.regularizer)
    solver = Anderson(tol=benchlib.TINY_TOL, max_iter=iters)

    def solve(m: Any) -> Any:
        m.eval()
        fn, u0 = m.fixed_point_map(y, physics)

        def call() -> None:
            with torch.no_grad():
                solver.solve(fn, u0)

        return call

    times = benchlib.alternate({"plain_layers": solve(plain_model), "package": solve(model)}, 3 if quick else 7, device)
    med = {k: benchlib.summary(t)["median_s"] for k, t in times.items()}
    inference = {
        "iterations": iters,
        "image": [1, 1, size, size],
        "median_s": med,
        "speedup": benchlib.ratio(med["plain_layers"], med["package"]),
    }
    return {"layer": rows, "inference_solve": inference}


def _solve_with_last_layers(device: torch.device, quick: bool, reps: int) -> dict[str, Any]:
    """A K-iteration Picard solve (batch 8 of 64x64, no autograd) of the deblur ``T``, its last layer
    the package's ``SingleOutputConv2d`` or a plain ``nn.Conv2d`` with the same weights."""
    model, cache, cfg = _model(device)
    K, batch, size = (5, 2, 32) if quick else (40, 8, 64)
    _, y, physics = _data(cache, cfg, device, batch, size)
    model.train()
    fn, u0 = model.fixed_point_map(y, physics)
    net = model.regularizer.net
    fast = net[-1]
    plain = benchlib.plain_conv(fast)
    solver = Picard(tol=benchlib.TINY_TOL, max_iter=K)

    def with_layer(layer: torch.nn.Module) -> Any:
        def call() -> None:
            net[-1] = layer
            solver.solve(fn, u0)

        return call

    times = benchlib.alternate({"conv2d": with_layer(plain), "single_output": with_layer(fast)}, reps, device)
    net[-1] = fast
    med = {k: benchlib.summary(t)["median_s"] for k, t in times.items()}
    return {
        "K": K,
        "batch": [batch, 1, size, size],
        "median_s": med,
        "speedup": benchlib.ratio(med["conv2d"], med["single_output"]),
    }


def run(
    device: torch.device | str = "cpu",
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    compile_it: bool = True,
) -> dict[str, Any]:
    """All six parts; writes ``hot_path.json`` and ``hot_path_profiles.txt``."""
    device = torch.device(device)
    info = benchlib.machine_info(device)
    model, cache, cfg = _model(device)
    K, batch, size = (5, 2, 32) if quick else (40, 8, 64)
    x, y, physics = _data(cache, cfg, device, batch, size)
    opt = torch.optim.Adam(model.parameters(), lr=0.0)

    def train_step() -> None:
        model.train()
        model.solver = Picard(tol=benchlib.TINY_TOL, max_iter=K)
        model.gradient = JFB()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(y, physics), x).backward()
        opt.step()

    isize, iiters = (32, 5) if quick else (128, 30)
    _, y1, physics1 = _data(cache, cfg, device, 1, isize)

    def inference() -> None:
        model.eval()
        model.eval_solver = Anderson(tol=benchlib.TINY_TOL, max_iter=iiters)
        with torch.no_grad():
            model(y1, physics1)

    table_train, top_train = profile_table(train_step, device)
    table_infer, top_infer = profile_table(inference, device)
    payload = {
        "benchmark": "hot_path",
        "machine": info,
        "profiles": {
            "jfb_training_step": {"K": K, "batch": [batch, 1, size, size], "top_ops": top_train},
            "inference_forward": {"iterations": iiters, "image": [1, 1, isize, isize], "top_ops": top_infer},
        },
        "solver_overhead": solver_overhead(device, quick, model, cache, cfg),
        "grad_mode": grad_modes(device, quick, model, cache, cfg),
        "regularizer_variants": regularizer_variants(device, quick, model, compile_it),
        "last_layer": last_layer(device, quick),
        "first_layer": first_layer(device, quick),
    }
    benchlib.finish_info(info)
    out = Path(out)
    benchlib.write_json(out, "hot_path", payload)
    (out / "hot_path_profiles.txt").write_text(
        f"JFB training step (K={K}, batch {batch}x{size}^2)\n{table_train}\n\n"
        f"Inference forward ({iiters} Anderson iterations, 1x{isize}^2)\n{table_infer}\n"
    )
    return payload


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    device = benchlib.setup(args)
    payload = run(device, args.quick, args.out, compile_it=not args.no_compile)
    for part in ("jfb_training_step", "inference_forward"):
        top = payload["profiles"][part]["top_ops"][:4]
        print(f"  {part}: " + ", ".join(f"{t['op']} {t['self_share']:.0%}" for t in top))
    for row in payload["solver_overhead"]:
        print(f"  overhead {row}")
    print("  grad mode:", payload["grad_mode"])
    print("  regulariser variants:", payload["regularizer_variants"])
    for row in payload["last_layer"]["layer"]:
        print(f"  last layer {row}")
    print(f"  forward solve with each last layer: {payload['last_layer']['forward_solve']}")
    for row in payload["first_layer"]["layer"]:
        print(f"  first layer {row}")
    print(f"  one-image inference, package layers vs plain: {payload['first_layer']['inference_solve']}")


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
