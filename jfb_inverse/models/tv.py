"""A differentiable, fixed-cost approximate proximal operator of total variation."""

from __future__ import annotations

import math

from torch import Tensor
from torch.nn import functional as F


def _grad(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences along width and height, zero in the last column / row (Neumann)."""
    return F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1)), F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))


def _div(px: Tensor, py: Tensor) -> Tensor:
    """``-grad^T``: the discrete divergence matching :func:`_grad` (its last column / row is ignored)."""
    px, py = px[..., :, :-1], py[..., :-1, :]
    return F.pad(px, (0, 1)) - F.pad(px, (1, 0)) + F.pad(py, (0, 0, 0, 1)) - F.pad(py, (0, 0, 1, 0))


def tv_prox(v: Tensor, lam: Tensor | float, iters: int = 10) -> Tensor:
    """``argmin_x 1/2 ||x - v||^2 + lam TV(x)`` (isotropic TV), approximately: ``iters`` steps of
    Beck and Teboulle's fast gradient projection (FGP, IEEE TIP 2009) on the dual, from zero.

    A fixed number of steps from a fixed start makes it a deterministic, differentiable function of
    ``v`` and ``lam`` (usable inside a fixed-point map, where a stopping test or a warm start kept
    between calls, as in deepinv's ``TVDenoiser``, would change the map from call to call). Ten steps
    reach the minimum's objective to ~0.01% on noisy images.
    """
    px = py = rx = ry = v.new_zeros(v.shape)
    t = 1.0
    step = 1 / (8 * lam)
    for _ in range(iters):
        gx, gy = _grad(v - lam * _div(rx, ry))
        qx, qy = rx - gx * step, ry - gy * step
        # Clamp before the square root: its gradient at a zero dual vector would be inf * 0 = NaN.
        norm = (qx * qx + qy * qy).clamp(min=1.0).sqrt()
        nx, ny = qx / norm, qy / norm
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum = (t - 1) / t_next
        rx, ry = nx + momentum * (nx - px), ny + momentum * (ny - py)
        px, py, t = nx, ny, t_next
    return v - lam * _div(px, py)
