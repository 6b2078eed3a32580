"""Build deepinv physics (the forward operator ``A``) from an operator definition and an image size.

Each operator kind has one builder ``(definition, img_size, device) -> LinearPhysics``; the
physics carries no noise model of its own (noise is applied by :mod:`jfb_inverse.problems.noise`,
which can scale it per sample), except that ``noise_model`` is set for deepinv pipelines that call
``physics(x)`` themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepinv.physics import BlurFFT, LinearPhysics
from deepinv.physics.functional.blur import gaussian_blur

from jfb_inverse.errors import ConfigError
from jfb_inverse.problems.config import BlurOperator

ImageSize = tuple[int, int, int]
Builder = Callable[[Any, ImageSize, torch.device], LinearPhysics]
_BUILDERS: dict[str, Builder] = {}
# Measurement shape (without batch) -> image shape (C, H, W), per operator kind.
_IMAGE_SHAPES: dict[str, Callable[[Any, tuple[int, ...]], ImageSize]] = {}


def register_operator(
    kind: str, builder: Builder, image_shape: Callable[[Any, tuple[int, ...]], ImageSize] | None = None
) -> None:
    """Register how to build the physics of an operator kind (and infer the image shape from y)."""
    _BUILDERS[kind] = builder
    if image_shape is not None:
        _IMAGE_SHAPES[kind] = image_shape


def build_physics(operator: Any, img_size: ImageSize, device: torch.device | str = "cpu") -> LinearPhysics:
    """The deepinv physics of ``operator`` for images of shape ``img_size = (C, H, W)``."""
    try:
        builder = _BUILDERS[operator.kind]
    except KeyError:
        raise ConfigError(f"no builder for operator kind {operator.kind!r}") from None
    return builder(operator, tuple(int(s) for s in img_size), torch.device(device))  # type: ignore[arg-type]


def image_shape_for(operator: Any, measurement_shape: tuple[int, ...]) -> ImageSize:
    """The image shape ``(C, H, W)`` whose measurements have ``measurement_shape`` (no batch dim)."""
    if operator.kind not in _IMAGE_SHAPES:
        return tuple(int(s) for s in measurement_shape)  # type: ignore[return-value]
    return _IMAGE_SHAPES[operator.kind](operator, tuple(int(s) for s in measurement_shape))


# --- blur ---------------------------------------------------------------------------------


def motion_kernel(length: int, angle: float) -> torch.Tensor:
    """A normalised linear motion-blur kernel of ``length`` px at ``angle`` degrees, shape (1, 1, k, k)."""
    k = length if length % 2 == 1 else length + 1
    c = k // 2
    yy, xx = torch.meshgrid(torch.arange(k) - c, torch.arange(k) - c, indexing="ij")
    theta = math.radians(angle)
    # Distance of each pixel centre to the segment through the centre: anti-aliased line.
    along = xx * math.cos(theta) - yy * math.sin(theta)
    across = xx * math.sin(theta) + yy * math.cos(theta)
    weight = (1 - across.abs()).clamp_min(0) * ((length / 2 + 0.5) - along.abs()).clamp(0, 1)
    weight = weight.float()
    return (weight / weight.sum()).view(1, 1, k, k)


def load_kernel(path: str | Path) -> torch.Tensor:
    """A blur kernel from a .npy or image file, normalised to sum 1, shape (1, 1, h, w)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"kernel file {str(p)!r} not found; give a .npy or .png file with operator.path")
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            from skimage import io

            arr = io.imread(p)
            if arr.ndim == 3:
                arr = arr[..., :3].mean(axis=-1)
    except Exception as exc:
        raise ConfigError(f"kernel file {str(p)!r} could not be read ({exc}); use a 2-D .npy or a PNG") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or not np.isfinite(arr).all() or arr.sum() <= 0:
        raise ConfigError(f"kernel file {str(p)!r} must hold a finite 2-D array with a positive sum")
    kernel = torch.from_numpy(arr / arr.sum()).float()
    return kernel.view(1, 1, *kernel.shape)


def blur_kernel(op: BlurOperator) -> torch.Tensor:
    """The (1, 1, h, w) kernel of a blur definition."""
    if op.kernel == "gaussian":
        return gaussian_blur(sigma=(op.sigma, op.sigma))
    if op.kernel == "motion":
        return motion_kernel(op.length, op.angle)
    if op.kernel == "box":
        return torch.full((1, 1, op.size, op.size), 1.0 / op.size**2)
    return load_kernel(op.path or "")


def _build_blur(op: BlurOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    kernel = blur_kernel(op)
    if kernel.shape[-2] > img_size[-2] or kernel.shape[-1] > img_size[-1]:
        raise ConfigError(
            f"image of {img_size[-2]}x{img_size[-1]} px is smaller than the {kernel.shape[-2]}x{kernel.shape[-1]} "
            "blur kernel; use a larger image or a smaller kernel"
        )
    return BlurFFT(img_size=img_size, filter=kernel, device=device)


register_operator("blur", _build_blur)
