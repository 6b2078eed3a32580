"""Item 6: against the peer: deepinv 0.5's deep-equilibrium PGD with a Jacobian-free backward.

Everything identical on both sides:

- denoiser: the SAME ``SmoothingResidualCNN`` weights (each side has its own copy, loaded from one
  state dict), wrapped for deepinv as a ``PnP`` prior whose denoiser ignores the noise level;
- data fidelity: ``1/2 ||A u - y||^2`` (deepinv ``L2()``, sigma 1) on the same physics object;
- step: ``stepsize = eta / ||A||^2`` (ours: ``step="gradient"``, ``eta`` in units of ``1/||A||^2``);
  the step size is learnable on both sides;
- iteration ``x <- D(x - stepsize A^T (A x - y))`` from ``A^T y``, K plain fixed-point iterations
  (no early stop; deepinv's ``early_stop=False``, ours ``Picard(tol=1e-30, max_iter=K)``), then one
  tracked application for the Jacobian-free backward (deepinv ``DEQConfig(jacobian_free=True)``,
  ours ``JFB()``);
- inference: deepinv runs K iterations plus its extra DEQ step (K+1 applications of T); ours runs
  a Picard solve of K+1 iterations, so both output ``T^(K+1)(A^T y)``.

Before timing, both outputs (and both JFB gradients) are compared on the same input; the max
absolute differences are reported. ``ours`` runs the denoiser as the package does: convolutions
channels-last on the CPU (``model.memory_format="auto"``, where oneDNN runs them faster) and the
last layer as ``SingleOutputConv2d`` (a faster form without autograd). deepinv's side runs the
same network as plain PyTorch writes it: PyTorch's default layout and ``nn.Conv2d`` layers
throughout. ``ours_same_layout`` runs that plain network in our engine, so that the two engines
alone are compared.
A training step is ``zero_grad + forward + MSE + backward +
Adam.step`` (lr=0 so both stay identical); inference runs under ``torch.no_grad``. Ours and
deepinv's alternate in one process; medians and the ratio ours/deepinv are reported.

    python benchmarks/vs_deepinv.py [--device cpu|cuda] [--quick] [--K 20] [--patch 256 --batch 32]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from typing import Any

import benchlib
import torch
from torch import nn
from torch.nn import functional as F

from jfb_inverse.implicit import JFB, Picard

KEYS = ("benchmark", "machine", "setup", "check", "training_step", "inference", "ratios", "targets")


class NoiseLevelFree(nn.Module):
    """Adapter: a deepinv denoiser ``D(x, sigma)`` that ignores ``sigma``."""

    def __init__(self, regularizer: nn.Module) -> None:
        super().__init__()
        self.regularizer = regularizer

    def forward(self, x: torch.Tensor, sigma: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Apply the wrapped regulariser."""
        return self.regularizer(x)


def build_pair(device: torch.device, patch: int, batch: int, depth: int, eta: float = 1.0, seed: int = 0):
    """``(ours, ours_same_layout, theirs, x, y, physics)``: identical denoiser weights, step, start and
    iterations. ``ours`` lays the denoiser out as the package does (``model.memory_format="auto"``:
    channels-last on the CPU and on CUDA GPUs of compute capability 8.0+); ``ours_same_layout`` keeps
    PyTorch's default layout and plain layers, as deepinv's."""
    import deepinv as dinv
    from deepinv.optim import DEQConfig

    from jfb_inverse.consistency import operator_norm_squared
    from jfb_inverse.models import ImplicitReconstructor, SmoothingResidualCNN, apply_memory_format

    K = depth
    cfg = benchlib.problem_config("deblur", patch=patch, batch=batch)
    x, y, physics = benchlib.training_batch(cfg, device, seed=seed)
    torch.manual_seed(seed)
    reg = SmoothingResidualCNN(channels=cfg.data.channels, width=cfg.model.width, depth=cfg.model.depth)
    # A non-trivial denoiser: the residual CNN's last layer starts at zero, give it small weights.
    with torch.no_grad():
        for p in reg.net[-1].parameters():
            p.normal_(0.0, 0.01)
    reg = reg.to(device)
    reg_theirs = SmoothingResidualCNN(channels=cfg.data.channels, width=cfg.model.width, depth=cfg.model.depth).to(
        device
    )
    reg_theirs.load_state_dict(reg.state_dict())
    reg_same = SmoothingResidualCNN(channels=cfg.data.channels, width=cfg.model.width, depth=cfg.model.depth).to(device)
    reg_same.load_state_dict(reg.state_dict())
    benchlib.plain_layers(reg_theirs)
    benchlib.plain_layers(reg_same)
    apply_memory_format(reg, "auto", device)

    def implicit(regularizer: nn.Module) -> ImplicitReconstructor:
        return ImplicitReconstructor(
            regularizer,
            step="gradient",
            eta_init=eta,
            learn_eta=True,
            init="adjoint",
            solver=Picard(tol=benchlib.TINY_TOL, max_iter=K),
            eval_solver=Picard(tol=benchlib.TINY_TOL, max_iter=K + 1),
            gradient=JFB(),
        ).to(device)

    ours, ours_same = implicit(reg), implicit(reg_same)
    img_size = (cfg.data.channels, patch, patch)
    stepsize = eta / operator_norm_squared(physics, img_size, device)
    theirs = dinv.optim.PGD(
        data_fidelity=dinv.optim.data_fidelity.L2(),
        prior=dinv.optim.prior.PnP(denoiser=NoiseLevelFree(reg_theirs)),
        stepsize=stepsize,
        max_iter=K,
        early_stop=False,
        DEQ=DEQConfig(jacobian_free=True),
        trainable_params=["stepsize"],
    ).to(device)
    return ours, ours_same, theirs, x, y, physics


def run(
    device: torch.device | str = "cpu",
    quick: bool = False,
    out: Path = benchlib.DEFAULT_OUT,
    repeats: int | None = None,
    depth: int | None = None,
    plot: bool = True,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Check equality, then time training steps and inference, alternating; write JSON + PNG.

    ``size``: ``(patch, batch)``, default 64x64 x 8 on CPU, 128x128 x 16 on GPU. The JSON is
    ``vs_deepinv.json``, or ``vs_deepinv_<patch>x<batch>.json`` for a size given.
    """
    device = torch.device(device)
    K = depth or (4 if quick else 20)
    if quick:
        patch, batch = 32, 2
    elif device.type == "cuda":
        patch, batch = 128, 16
    else:
        patch, batch = 64, 8
    if size is not None:
        patch, batch = size
    repeats = repeats or (2 if quick else 7)
    info = benchlib.machine_info(device)
    ours, ours_same, theirs, x, y, physics = build_pair(device, patch, batch, K)

    # --- equality check: outputs (train mode = K+1 applications, with grad) and JFB gradients.
    ours.train()
    theirs.train()
    out_ours = ours(y, physics)
    out_theirs = theirs(y, physics)
    F.mse_loss(out_ours, x).backward()
    F.mse_loss(out_theirs, x).backward()
    out_ours, out_theirs = out_ours.detach(), out_theirs.detach()
    grads_ours = [p.grad for p in ours.regularizer.parameters()]
    grads_theirs = [p.grad for p in theirs.prior[0].denoiser.regularizer.parameters()]
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(grads_ours, grads_theirs, strict=True))
    grad_scale = max(float(a.abs().max()) for a in grads_ours)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        inf_ours, inf_theirs = ours(y, physics), theirs(y, physics)
    check = {
        "train_output_max_abs_diff": float((out_ours - out_theirs).abs().max()),
        "inference_output_max_abs_diff": float((inf_ours - inf_theirs).abs().max()),
        "output_scale": float(out_ours.abs().max()),
        "jfb_grad_max_abs_diff": grad_diff,
        "jfb_grad_scale": grad_scale,
    }
    check["identical_to_float_tolerance"] = bool(
        check["train_output_max_abs_diff"] <= 1e-4
        and check["inference_output_max_abs_diff"] <= 1e-4
        and grad_diff <= 1e-3 * max(grad_scale, 1e-12)
    )

    # --- timing, alternating.
    opt_ours = torch.optim.Adam(ours.parameters(), lr=0.0)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=0.0)
    opt_same = torch.optim.Adam(ours_same.parameters(), lr=0.0)

    def train_step(model: Any, opt: torch.optim.Optimizer) -> Any:
        def step() -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(y, physics), x).backward()
            opt.step()

        return step

    def inference(model: Any) -> Any:
        def infer() -> None:
            model.eval()
            with torch.no_grad():
                model(y, physics)

        return infer

    variants = gpu_variants(ours, K, device)
    with torch.no_grad():  # each variant computes what ours does (eval mode, K+1 applications)
        check["variants_max_abs_diff"] = {
            k: float((m.eval()(y, physics) - inf_ours).abs().max()) for k, m in variants.items()
        }
    train_times = benchlib.alternate(
        {
            "ours": train_step(ours, opt_ours),
            "ours_same_layout": train_step(ours_same, opt_same),
            "deepinv": train_step(theirs, opt_theirs),
            **{k: train_step(m, torch.optim.Adam(m.parameters(), lr=0.0)) for k, m in variants.items()},
        },
        repeats,
        device,
    )
    infer_times = benchlib.alternate(
        {
            "ours": inference(ours),
            "ours_same_layout": inference(ours_same),
            "deepinv": inference(theirs),
            **{k: inference(m) for k, m in variants.items()},
        },
        repeats,
        device,
    )
    train = {k: benchlib.summary(v) for k, v in train_times.items()}
    infer = {k: benchlib.summary(v) for k, v in infer_times.items()}
    ratios = {
        "training_step_ours_over_deepinv": benchlib.ratio(train["ours"]["median_s"], train["deepinv"]["median_s"]),
        "inference_ours_over_deepinv": benchlib.ratio(infer["ours"]["median_s"], infer["deepinv"]["median_s"]),
        # The engines alone: the same layout on both sides (the computation is then the same).
        "training_step_same_layout_over_deepinv": benchlib.ratio(
            train["ours_same_layout"]["median_s"], train["deepinv"]["median_s"]
        ),
        "inference_same_layout_over_deepinv": benchlib.ratio(
            infer["ours_same_layout"]["median_s"], infer["deepinv"]["median_s"]
        ),
        **{
            f"{phase}_{k}_over_deepinv": benchlib.ratio(times[k]["median_s"], times["deepinv"]["median_s"])
            for k in variants
            for phase, times in (("training_step", train), ("inference", infer))
        },
    }
    payload = {
        "benchmark": "vs_deepinv",
        "machine": benchlib.finish_info(info),
        "setup": {
            "problem": "deblur (DEBLUR-G physics)",
            "K": K,
            "batch": batch,
            "patch": patch,
            "repeats": repeats,
            "ours": "the package's layout (model.memory_format='auto': channels-last on CPU and CUDA 8.0+); "
            "ours_same_layout: PyTorch's default layout, as deepinv's; both "
            "ImplicitReconstructor(step='gradient', init='adjoint', solver=Picard(tol=1e-30, max_iter=K), "
            "eval_solver=Picard(tol=1e-30, max_iter=K+1), gradient=JFB())",
            "deepinv": "deepinv.optim.PGD(L2(), PnP(denoiser), stepsize=eta/||A||^2, max_iter=K, early_stop=False, "
            "DEQ=DEQConfig(jacobian_free=True), trainable_params=['stepsize'])",
            "applications_of_T": {"training": K + 1, "inference": K + 1},
            "gpu_variants": {k: GPU_VARIANTS[k] for k in variants},
        },
        "check": check,
        "training_step": train,
        "inference": infer,
        "ratios": ratios,
        "targets": {
            "training_step_ours_over_deepinv_le_0.9": {
                "value": ratios["training_step_ours_over_deepinv"],
                "target": 0.9,
                "met": bool(ratios["training_step_ours_over_deepinv"] <= 0.9),
            },
            "inference_ours_over_deepinv_le_0.9": {
                "value": ratios["inference_ours_over_deepinv"],
                "target": 0.9,
                "met": bool(ratios["inference_ours_over_deepinv"] <= 0.9),
            },
        },
    }
    out = Path(out)
    name = "vs_deepinv" if size is None else f"vs_deepinv_{patch}x{batch}"
    benchlib.write_json(out, name, payload)
    if plot:
        plot_pair(payload, out / f"{name}.png")
    return payload


GPU_VARIANTS = {
    "ours_synced_stop": "ours with the solvers' stop flag read synchronously in every iteration "
    "(lagged_stop=False, as before the lagged check)",
    "ours_contiguous": "ours with the regulariser in PyTorch's default layout (model.memory_format='contiguous'; "
    "'auto' is channels-last on CUDA GPUs of compute capability 8.0+ since the eighth session)",
    "ours_cuda_graph": "ours with T recorded once per solve as a CUDA graph and replayed (cuda_graph=True; "
    "the training step's one tracked application of T and its backward run eagerly)",
}


def gpu_variants(ours: nn.Module, depth: int, device: torch.device) -> dict[str, nn.Module]:
    """CUDA only: copies of ``ours`` that differ in one GPU choice each (see ``GPU_VARIANTS``)."""
    from jfb_inverse.models import apply_memory_format

    if device.type != "cuda":
        return {}
    synced = copy.deepcopy(ours)
    synced.solver = Picard(tol=benchlib.TINY_TOL, max_iter=depth, lagged_stop=False)
    synced.eval_solver = Picard(tol=benchlib.TINY_TOL, max_iter=depth + 1, lagged_stop=False)
    contiguous = copy.deepcopy(ours)
    apply_memory_format(contiguous.regularizer, "contiguous", device)
    graphed = copy.deepcopy(ours)
    graphed.solver = Picard(tol=benchlib.TINY_TOL, max_iter=depth, cuda_graph=True)
    graphed.eval_solver = Picard(tol=benchlib.TINY_TOL, max_iter=depth + 1, cuda_graph=True)
    return {"ours_synced_stop": synced, "ours_contiguous": contiguous, "ours_cuda_graph": graphed}


def plot_pair(payload: dict[str, Any], path: Path) -> None:
    """Median training-step and inference times, ours against deepinv's."""
    plt = benchlib.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, key in zip(axes, ("training_step", "inference"), strict=True):
        names = ["ours", "ours_same_layout", "deepinv"]
        vals = [payload[key][n]["median_s"] for n in names]
        ax.bar(["ours", "ours (same\nlayout)", "deepinv"], vals, color=["#1f77b4", "#9ecae1", "#999999"])
        ax.set_title(f"{key.replace('_', ' ')}: ours/deepinv = {vals[0] / vals[2]:.2f}", fontsize=9)
        ax.set_ylabel("median seconds")
    s = payload["setup"]
    fig.suptitle(f"vs deepinv DEQ-PGD (JFB), K={s['K']}, batch {s['batch']}x{s['patch']}^2", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Command line."""
    parser = benchlib.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=None, help="forward iterations (default 20; 4 with --quick)")
    parser.add_argument("--patch", type=int, default=None, help="image side (default 64 on CPU, 128 on GPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 16 on GPU)")
    args = parser.parse_args()
    if (args.patch is None) != (args.batch is None):
        parser.error("give --patch and --batch together")
    device = benchlib.setup(args)
    size = None if args.patch is None else (args.patch, args.batch)
    payload = run(device, args.quick, args.out, args.repeats, args.K, size=size)
    print("  check:", payload["check"])
    print("  ratios:", payload["ratios"])


if __name__ == "__main__":
    from benchlib import one_line_errors

    with one_line_errors():  # refusals as one "error: ..." line and exit code 2
        main()
