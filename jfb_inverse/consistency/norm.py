"""Operator norm ``||A||^2 = ||A^T A||`` by power iteration, estimated once per physics and image size."""

from __future__ import annotations

import weakref

import torch
from deepinv.physics import LinearPhysics

from jfb_inverse.errors import OperatorError

# physics -> {(image size, device): (fingerprint of its tensors, ||A||^2)}
_CACHE: weakref.WeakKeyDictionary[LinearPhysics, dict[tuple, tuple[tuple, float]]] = weakref.WeakKeyDictionary()


def _fingerprint(physics: LinearPhysics) -> tuple:
    """Identity and version of every buffer and parameter of ``physics``: deepinv's ``update(...)``
    (and physics generators) replace them, in-place edits bump their version, and either makes a
    cached norm stale. A tensor made under ``torch.inference_mode`` has no version counter (deepinv's
    ``Downsampling`` builds its filter buffers lazily, at its first use, so inside the CLI's
    inference mode): its identity, shape and dtype stand for it."""
    tensors = [*physics.named_buffers(), *physics.named_parameters()]
    return tuple(
        (name, t.data_ptr(), None if t.is_inference() else t._version, tuple(t.shape), t.dtype) for name, t in tensors
    )


def operator_norm_squared(
    physics: LinearPhysics,
    img_size: tuple[int, ...],
    device: torch.device | str = "cpu",
    n_iter: int = 50,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of ``A^T A`` for images of shape ``img_size`` (C, H, W), cached.

    Power iteration from a seeded random image, so the estimate is reproducible; the relative
    change of the eigenvalue below 1e-5 stops it early. The cache is per physics object, image
    size and device, and is refreshed when the physics' tensors change (``physics.update(...)``).
    """
    key = (tuple(img_size), str(device))
    fingerprint = _fingerprint(physics)
    per_physics = _CACHE.setdefault(physics, {})
    cached = per_physics.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
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
    if not value > 0:  # also NaN: every step size is relative to this norm
        raise OperatorError(
            f"the operator maps images of shape {tuple(img_size)} to zero (or to NaN): ||A||^2 = {value:g}, so "
            "nothing can be reconstructed from its measurements; check the operator (e.g. a mask that keeps nothing)"
        )
    per_physics[key] = (fingerprint, value)
    return value
