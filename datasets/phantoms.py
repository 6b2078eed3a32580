"""Random ellipse phantoms, generated on the fly and reproducible from a seed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jfb_inverse.errors import UserError

# Largest (batch x ellipses x H x W) block evaluated at once: big enough to amortise the
# per-op overhead, small enough to stay in cache-friendly memory at any image size.
_BLOCK_ELEMENTS = 2**20


def ellipse_phantoms(
    n: int,
    size: int,
    seed: int,
    device: str | torch.device = "cpu",
    *,
    mean_ellipses: float = 50.0,
) -> Tensor:
    """Draw ``n`` random ellipse phantoms as an (n, 1, size, size) float32 tensor in [0, 1].

    Each phantom is a sum of a Poisson(``mean_ellipses``) number of filled ellipses on the
    square [-1, 1]^2, clipped to [0, 1]. An ellipse has centre uniform in [-1, 1]^2, semi-axes
    0.2 * Exp(1), angle uniform in [0, 2 pi) and intensity (U - 0.3) * Exp(mean 0.3) with U
    uniform in [0, 1]: the random-ellipse model of Adler & Öktem's learned primal-dual CT
    experiments, as in ``deepinv.utils.phantoms.generate_random_phantom`` (which uses
    (U - 0.5) * Exp(mean 0.4)). Unlike that function this one is seeded by its own
    ``torch.Generator`` (the global RNGs are untouched), batched, and vectorised over ellipses.
    The random parameters are drawn on the CPU, so a seed gives the same phantoms on any device.

    Examples
    --------
    >>> ellipse_phantoms(8, 128, seed=0).shape
    torch.Size([8, 1, 128, 128])
    """
    if n < 1 or size < 1:
        raise UserError(f"n and size must be positive integers, got n={n}, size={size}")
    if mean_ellipses <= 0:
        raise UserError(f"mean_ellipses must be positive, got {mean_ellipses}")
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((n,), float(mean_ellipses)), generator=gen).long()
    k = max(int(counts.max()), 1)
    intensity = (torch.rand(n, k, generator=gen) - 0.3) * torch.empty(n, k).exponential_(1.0 / 0.3, generator=gen)
    axes = 0.2 * torch.empty(n, k, 2).exponential_(1.0, generator=gen)
    centre = 2.0 * torch.rand(n, k, 2, generator=gen) - 1.0
    angle = 2.0 * math.pi * torch.rand(n, k, generator=gen)
    # Every phantom draws k ellipses so the batch stays rectangular; the extra ones get zero intensity.
    intensity = intensity * (torch.arange(k) < counts[:, None])

    # Write each ellipse as the quadratic form a dx^2 + 2 b dx dy + c dy^2 <= 1 around its centre:
    # the squares stay on the (1, W) and (H, 1) axes, and few operations touch the full grid.
    cos, sin = torch.cos(angle), torch.sin(angle)
    inv_a2, inv_b2 = axes[..., 0] ** -2, axes[..., 1] ** -2
    coef = torch.stack(
        [
            centre[..., 0],
            centre[..., 1],
            cos**2 * inv_a2 + sin**2 * inv_b2,
            2 * cos * sin * (inv_a2 - inv_b2),
            sin**2 * inv_a2 + cos**2 * inv_b2,
            intensity,
        ]
    )
    cx, cy, qa, qb, qc, value = (c.to(device)[..., None, None] for c in coef)  # each (n, k, 1, 1)
    grid = torch.linspace(-1.0, 1.0, size, device=device)
    rows, cols = grid.view(1, 1, size, 1), grid.view(1, 1, 1, size)

    out = torch.zeros(n, size, size, device=device)
    step = max(1, _BLOCK_ELEMENTS // (n * size * size))
    for s in (slice(i, i + step) for i in range(0, k, step)):
        dx, dy = cols - cx[:, s], rows - cy[:, s]  # (n, step, 1, W) and (n, step, H, 1)
        form = (qa[:, s] * dx * dx + qc[:, s] * dy * dy).add_(dy * (qb[:, s] * dx))
        out += (form <= 1.0).to(out.dtype).mul_(value[:, s]).sum(dim=1)
    return out.clamp_(0.0, 1.0).unsqueeze(1)
