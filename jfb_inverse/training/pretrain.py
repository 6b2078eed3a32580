"""Denoiser pretraining of the regulariser ``D`` before fixed-point training.

Gilton, Ongie and Willett ("Deep equilibrium architectures for inverse problems", IEEE TCI 2021)
start their equilibrium networks from a network pretrained as a Gaussian denoiser. A denoising
step costs one forward and one backward of ``D`` on a batch, with no fixed-point solve, so it is
several times cheaper than a training step of the implicit network, and it moves ``D`` from a
mild smoother to a prior of the training images before the first solve.

``D(x + s n) ~ x`` with ``n`` standard Gaussian and ``s`` drawn uniformly in ``[0, sigma]`` per
patch. Adam at the run's learning rate with cosine decay to 5% of it, on a stream of patches and
noise of its own (the fixed-point phase then draws the same batches as a run without pretraining).
With input injection, ``D``'s context is the noisy patch itself (in the fixed-point map it is the
iteration's start, another degraded view of the same image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from jfb_inverse.models.precision import effective_precision
from jfb_inverse.problems.config import ProblemConfig
from jfb_inverse.training.data import TrainingSource

# Offsets of the pretraining streams from the run's seed, so they differ from the fixed-point phase's.
PATCH_SEED_OFFSET = 777
NOISE_SEED_OFFSET = 5


class PretrainingInterruptedError(Exception):
    """A signal arrived during pretraining (before any checkpoint); carries the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class PretrainResult:
    """What the pretraining phase did: steps, seconds, and its mean loss over the last 10% of steps."""

    steps: int
    seconds: float
    final_loss: float


def pretrain_denoiser(
    regularizer: nn.Module,
    cfg: ProblemConfig,
    device: torch.device,
    local: slice,
    world: int = 1,
    on_step: Callable[[int], None] | None = None,
    should_stop: Callable[[], int] | None = None,
) -> PretrainResult:
    """Train ``regularizer`` as a denoiser for ``cfg.training.pretrain_steps`` steps (in place).

    ``local``: this rank's slice of each global batch (every rank draws the same batch; the
    gradients are averaged over ranks by hand, as ``D`` runs outside DistributedDataParallel here).
    ``should_stop``: polled after each step; a non-zero signal number stops the phase with
    :class:`PretrainingInterruptedError`.
    """
    import time

    t = cfg.training
    steps = t.pretrain_steps
    source = TrainingSource(cfg.data, t.batch_size, t.seed + PATCH_SEED_OFFSET, device)
    noise = torch.Generator(device=device).manual_seed(t.seed + NOISE_SEED_OFFSET)
    params = [p for p in regularizer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=t.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=0.05 * t.lr)
    precision = effective_precision(t.precision, device, training=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    context = getattr(regularizer, "context_channels", 0) > 0
    was_training = regularizer.training
    regularizer.train()
    start = time.perf_counter()
    tail: list[float] = []
    tail_len = max(1, math.ceil(steps / 10))
    try:
        for step in range(steps):
            x = source.sample()
            s = t.pretrain_sigma * torch.rand((x.shape[0], 1, 1, 1), generator=noise, device=device, dtype=x.dtype)
            v = x + s * torch.randn(x.shape, generator=noise, device=device, dtype=x.dtype)
            x, v = x[local], v[local]
            with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = regularizer(v, v) if context else regularizer(v)
            loss = F.mse_loss(out.float(), x)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if step >= steps - tail_len:
                tail.append(float(loss.detach()))
            if on_step is not None:
                on_step(step)
            if should_stop is not None and (signum := should_stop()):
                raise PretrainingInterruptedError(signum)
    finally:
        regularizer.train(was_training)
    return PretrainResult(steps, time.perf_counter() - start, sum(tail) / len(tail))
