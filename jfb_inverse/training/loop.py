"""The training loop: patches -> simulated measurements -> implicit reconstruction -> MSE, with JFB.

Writes into the output folder: ``model.pt`` (weights, resolved definition, training state),
``problem.toml`` (the definition), ``history.jsonl`` (one JSON line per logged step) and
``training.png`` (curves and held-out reconstructions).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from jfb_inverse.metrics import psnr
from jfb_inverse.models.build import build_model
from jfb_inverse.problems.config import ProblemConfig
from jfb_inverse.problems.noise import simulate
from jfb_inverse.training.checkpoint import save_checkpoint
from jfb_inverse.training.data import TrainingSource

LogCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    steps: int
    seconds: float
    history: list[dict[str, Any]]


def _lr_lambda(total: int, warmup: int = 20) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 5% of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def train(
    cfg: ProblemConfig,
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    on_log: LogCallback | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the definition's implicit network with its gradient strategy; see the module docstring."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    t = cfg.training
    torch.manual_seed(t.seed)
    model, physics_cache = build_model(cfg, device)
    model.train()
    source = TrainingSource(cfg.data, t.batch_size, t.seed, device)
    img_size = (cfg.data.channels, cfg.data.patch_size, cfg.data.patch_size)
    physics = physics_cache.for_image(img_size)
    noise_gen = torch.Generator(device=device).manual_seed(t.seed + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(t.steps))
    history: list[dict[str, Any]] = []
    history_path = out / "history.jsonl"
    history_path.write_text("")
    start = time.perf_counter()
    window: list[dict[str, float]] = []

    def state() -> dict[str, Any]:
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step + 1,
            "data": source.state_dict(),
            "noise_rng": noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    step = -1
    for step in range(t.steps):
        x = source.sample()
        with torch.no_grad():
            y = simulate(x, physics, cfg.noise, noise_gen)
        x_hat = model(y, physics)
        loss = F.mse_loss(x_hat, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        stats = model.last_stats
        assert stats is not None
        window.append(
            {
                "loss": loss.item(),
                "psnr": float(psnr(x_hat.detach().clamp(0, 1), x).mean()),
                "iterations": float(stats.iterations.float().mean()),
                "residual": float(stats.residual.max()),
                "converged": float(stats.converged.float().mean()),
            }
        )
        if on_step is not None:
            on_step(step)
        last = step + 1 == t.steps
        if (step + 1) % t.log_every == 0 or last:
            record: dict[str, Any] = {"step": step + 1, "seconds": round(time.perf_counter() - start, 3)}
            for key in window[0]:
                record[key] = sum(w[key] for w in window) / len(window)
            record["lr"] = scheduler.get_last_lr()[0]
            record["eta"] = float(model.eta.detach())
            record["not_converged_steps"] = sum(w["converged"] < 1 for w in window)
            window.clear()
            history.append(record)
            with history_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            if on_log is not None:
                on_log(record)
        if (step + 1) % t.checkpoint_every == 0 and not last:
            save_checkpoint(out / "model.pt", cfg, model.state_dict(), **state())
        if t.max_minutes is not None and time.perf_counter() - start > 60 * t.max_minutes:
            break
    seconds = time.perf_counter() - start
    save_checkpoint(out / "model.pt", cfg, model.state_dict(), **state(), seconds=seconds)
    return TrainResult(out, step + 1, seconds, history)
