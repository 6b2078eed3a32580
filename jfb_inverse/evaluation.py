"""Evaluate a model against classical baselines on clean images: PSNR / SSIM per image and mean.

Report schema (``--json``)::

    {"images": [{"name": str, "psnr": {method: float}, "ssim": {method: float}}],
     "mean": {"psnr": {method: float}, "ssim": {method: float}}}

The model's key is ``"model"``; the measurement itself (when image-shaped) is ``"measurement"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from jfb_inverse import baselines
from jfb_inverse.errors import UserError
from jfb_inverse.metrics import SSIM_MIN_SIZE, psnr, ssim
from jfb_inverse.models.build import PhysicsCache
from jfb_inverse.models.reconstructor import ImplicitReconstructor
from jfb_inverse.problems.config import ProblemConfig
from jfb_inverse.problems.noise import simulate

Baseline = Callable[[Tensor, LinearPhysics], Tensor]


def baselines_for(cfg: ProblemConfig) -> dict[str, Baseline]:
    """The classical reconstructions compared with the model, with their documented parameters."""
    return baselines.baselines_for(cfg.operator.kind, cfg.noise.sigma)


@dataclass
class Evaluation:
    """Per-image metrics, reconstructions (for figures) and solver statistics."""

    report: dict[str, Any]
    examples: list[dict[str, Tensor]] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)


def evaluate(
    model: ImplicitReconstructor,
    physics_cache: PhysicsCache,
    cfg: ProblemConfig,
    images: list[tuple[str, Tensor]],
    seed: int = 0,
    with_baselines: bool = True,
    keep_examples: int = 4,
) -> Evaluation:
    """Simulate measurements of each clean (C, H, W) image (noise seeded by ``seed``), reconstruct
    with the model and the baselines, and score each with PSNR and SSIM."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    methods = baselines_for(cfg) if with_baselines else {}
    rows: list[dict[str, Any]] = []
    result = Evaluation(report={})
    for name, x in images:  # every image must fit the operator and SSIM: checked before any work, named
        try:
            physics_cache.for_image(tuple(x.shape))
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from None
        if min(x.shape[-2:]) < SSIM_MIN_SIZE:
            raise UserError(
                f"{name}: image of {x.shape[-2]}x{x.shape[-1]} px is too small to score (SSIM needs at least "
                f"{SSIM_MIN_SIZE}x{SSIM_MIN_SIZE}); leave it out of the images"
            )
    for name, x in images:
        x = x[None].to(device)
        physics = physics_cache.for_image(tuple(x.shape[1:]), device)  # where the model is now
        with torch.no_grad():
            y = simulate(x, physics, cfg.noise, gen)
            outputs: dict[str, Tensor] = {}
            if y.shape == x.shape:
                outputs["measurement"] = y
            for method, fn in methods.items():
                outputs[method] = fn(y, physics)
            outputs["model"] = model(y, physics)
        stats = model.last_stats
        assert stats is not None
        result.iterations.append(int(stats.iterations.max()))
        result.converged.append(stats.all_converged)
        clipped = {k: v.clamp(0, 1) for k, v in outputs.items()}
        rows.append(
            {
                "name": name,
                "psnr": {k: round(float(psnr(v, x)), 4) for k, v in clipped.items()},
                "ssim": {k: round(float(ssim(v, x)), 5) for k, v in clipped.items()},
                "iterations": result.iterations[-1],
                "converged": result.converged[-1],
            }
        )
        if len(result.examples) < keep_examples:
            result.examples.append({"truth": x.cpu(), **{k: v.cpu() for k, v in clipped.items()}})
    keys = rows[0]["psnr"].keys() if rows else []
    mean = {
        # Each mean to its metric's per-image precision: a one-image report must not read 0.7045 beside 0.70445.
        metric: {k: round(sum(r[metric][k] for r in rows) / len(rows), digits) for k in keys}
        for metric, digits in (("psnr", 4), ("ssim", 5))
    }
    # How the model was run, so that a report says which evaluation map and stopping rule made it.
    solver = model.eval_solver
    settings = {
        "noise_seed": seed,
        "equivariance": model.equivariance,
        "solver": type(solver).__name__.lower(),
        "tol": solver.tol,
        "max_iter": solver.max_iter,
    }
    result.report = {"images": rows, "mean": mean, "settings": settings}
    return result


def comparison_figure(evaluation: Evaluation, path: str | Path, names: list[str] | None = None) -> None:
    """Side-by-side PNG: truth / measurement / baselines / model, one row per example, PSNR in titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = evaluation.examples
    if not examples:
        return
    columns = list(examples[0].keys())
    fig, axes = plt.subplots(
        len(examples), len(columns), figsize=(2.4 * len(columns), 2.5 * len(examples)), squeeze=False
    )
    for i, ex in enumerate(examples):
        row = evaluation.report["images"][i]
        for j, key in enumerate(columns):
            img = ex[key][0]
            ax = axes[i][j]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            if key == "truth":  # names the row's image (a y label would not show on an axis turned off)
                title = f"{row['name']} (truth)"
            else:
                title = f"{key}\n{row['psnr'][key]:.2f} dB" if i == 0 else f"{row['psnr'][key]:.2f} dB"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
