"""Dead-leaves images: an offline, unlimited source of images with natural-image statistics.

Occluding disks with power-law radii reproduce the scale invariance, the edges and the 1/f^2
power spectrum of natural photographs (Lee, Mumford & Huang 2001). Training restoration networks
on them alone was found to come close to training on natural images (Achddou, Gousseau & Ladjal,
"Synthetic images as a regularity prior for image restoration neural networks", SSVM 2021).
Here they complement the 13 bundled training images, which are mostly textures and microscopy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from jfb_inverse.errors import UserError


def dead_leaves(
    n: int,
    size: int,
    seed: int,
    device: str | torch.device = "cpu",
    *,
    r_min: float = 1.0,
    r_max: float | None = None,
    alpha: float = 3.0,
    disks: int | None = None,
    supersample: int = 2,
) -> Tensor:
    """Draw ``n`` dead-leaves images as an (n, 1, size, size) float32 tensor in [0, 1].

    ``disks`` disks (default: enough to cover the image about 6 times over) fall one after
    another, each under the ones before, so the first drawn is on top; pixels no disk covers keep a
    random background level. Radii follow the density ``r^-alpha`` on [``r_min``, ``r_max``]
    pixels (``alpha = 3`` is the scale-invariant model; ``r_max`` defaults to ``size / 4``),
    centres are uniform over the image grown by ``r_max``, grey levels uniform in [0, 1] with a
    random linear shading of up to +-0.15 across a disk (smooth gradients, not only flat regions).
    Rendering at ``supersample`` times the resolution then averaging anti-aliases the edges as in
    a downscaled photograph. Seeded by its own ``torch.Generator``, drawn on the CPU: a seed gives
    the same images on any device.

    Examples
    --------
    >>> dead_leaves(4, 64, seed=0).shape
    torch.Size([4, 1, 64, 64])
    """
    r_max = size / 4 if r_max is None else r_max
    if n < 1 or size < 1:
        raise UserError(f"n and size must be positive integers, got n={n}, size={size}")
    if not (0 < r_min < r_max) or alpha <= 1 or supersample < 1 or (disks is not None and disks < 1):
        raise UserError(
            f"need 0 < r_min < r_max, alpha > 1, supersample >= 1, disks >= 1; got r_min={r_min}, "
            f"r_max={r_max}, alpha={alpha}, supersample={supersample}, disks={disks}"
        )
    ss = supersample
    s = size * ss
    lo, hi = r_min ** (1 - alpha), r_max ** (1 - alpha)
    if disks is None:
        # E[r^2] under the power law; 6 times the grown square's area over E[pi r^2] disks leave
        # about e^-6 = 0.25% of the image to the background.
        if alpha == 3:
            m2 = 2 * math.log(r_max / r_min) / (lo - hi)
        else:
            m2 = (alpha - 1) * (r_max ** (3 - alpha) - r_min ** (3 - alpha)) / ((3 - alpha) * (lo - hi))
        disks = int(6 * (size + 2 * r_max) ** 2 / (math.pi * m2)) + 1
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 1, s, s, device=device)
    for i in range(n):
        p = torch.rand(disks, 6, generator=gen).to(device)
        background = float(torch.rand((), generator=gen))
        radius = (lo + p[:, 0] * (hi - lo)) ** (1 / (1 - alpha)) * ss
        cx = (p[:, 1] * (size + 2 * r_max) - r_max) * ss
        cy = (p[:, 2] * (size + 2 * r_max) - r_max) * ss
        top = _topmost_disk(cx, cy, radius, s)  # (s, s) disk index, or `disks` where uncovered
        covered = top < disks
        k = top.clamp(max=disks - 1)
        # Grey level plus a linear shading of at most +-0.15 from the centre to the rim.
        grid = torch.arange(s, device=device, dtype=torch.float32) + 0.5
        gx, gy = (p[:, 4] * 2 - 1) * 0.15 / radius, (p[:, 5] * 2 - 1) * 0.15 / radius
        value = p[k, 3] + gx[k] * (grid.view(1, s) - cx[k]) + gy[k] * (grid.view(s, 1) - cy[k])
        out[i, 0] = torch.where(covered, value, torch.full_like(value, background))
    img = out.clamp_(0.0, 1.0)
    return F.avg_pool2d(img, ss) if ss > 1 else img


def _topmost_disk(cx: Tensor, cy: Tensor, radius: Tensor, s: int) -> Tensor:
    """For each pixel of an (s, s) grid, the smallest index of the disks covering its centre
    (``len(radius)`` where none does)."""
    device, n = radius.device, radius.numel()
    ids = torch.arange(n, device=device)
    top = torch.full((s * s,), n, dtype=torch.long, device=device)
    # Rasterise each disk in its bounding box, grouped by radius in octaves: under the power law
    # an octave of radius R holds ~1/R^2 of the disks with windows of ~R^2 pixels, so every octave
    # costs about the same and the whole image costs O(disks), not O(disks * pixels).
    lower, upper, largest = 0.0, 1.0, float(radius.max())
    while lower < largest:
        group = (radius > lower) & (radius <= upper)
        if group.any():
            w = int(upper) + 1
            off = torch.arange(-w, w + 1, device=device)
            gx, gy, gr, gid = cx[group], cy[group], radius[group], ids[group]
            px = gx.floor().long().view(-1, 1, 1) + off.view(1, 1, -1)
            py = gy.floor().long().view(-1, 1, 1) + off.view(1, -1, 1)
            dx, dy = px + 0.5 - gx.view(-1, 1, 1), py + 0.5 - gy.view(-1, 1, 1)
            keep = (dx * dx + dy * dy <= (gr * gr).view(-1, 1, 1)) & (px >= 0) & (px < s) & (py >= 0) & (py < s)
            flat = (py * s + px).expand_as(keep)[keep]
            top.scatter_reduce_(0, flat, gid.view(-1, 1, 1).expand_as(keep)[keep], reduce="amin")
        lower, upper = upper, 2 * upper
    return top.view(s, s)
