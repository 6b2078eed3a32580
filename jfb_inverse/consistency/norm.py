"""Operator norm ``||A||^2 = ||A^T A||`` by power iteration, estimated once per physics and image size."""

from __future__ import annotations

import weakref

import torch
from deepinv.physics import LinearPhysics

_CACHE: weakref.WeakKeyDictionary[LinearPhysics, dict[tuple, float]] = weakref.WeakKeyDictionary()


def operator_norm_squared(
    physics: LinearPhysics,
    img_size: tuple[int, ...],
    device: torch.device | str = "cpu",
    n_iter: int = 50,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of ``A^T A`` for images of shape ``img_size`` (C, H, W), cached.

    Power iteration from a seeded random image, so the estimate is reproducible; the relative
    change of the eigenvalue below 1e-5 stops it early.
    """
    key = (tuple(img_size), str(device))
    per_physics = _CACHE.setdefault(physics, {})
    if key in per_physics:
        return per_physics[key]
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((1, *img_size), generator=g).to(device)
    x = x / x.norm()
    value = 0.0
    with torch.no_grad():
        for _ in range(n_iter):
            z = physics.A_adjoint(physics.A(x))
            new = float((x * z).sum())
            x = z / z.norm().clamp_min(1e-30)
            if value > 0 and abs(new - value) <= 1e-5 * value:
                value = new
                break
            value = new
    per_physics[key] = value
    return value
