"""Read and write measurements and check that they fit a problem's operator.

Files: ``.npy`` holds the raw measurement, shape ``(H, W)`` or ``(C, ...)`` (no batch dimension;
for CT ``(C, detectors, angles)``); ``.png``/``.tif`` are accepted for image-shaped measurements
(blur, inpainting) and read in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from jfb_inverse.datasets import load_image, save_image
from jfb_inverse.errors import UserError
from jfb_inverse.models.build import PhysicsCache
from jfb_inverse.problems.config import ProblemConfig

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


def read_measurement(path: str | Path, channels: int) -> Tensor:
    """A measurement (C, ...) from ``.npy`` or an image file; NaN/Inf and bad files are :class:`UserError`."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"input {str(p)!r} not found; give an existing .npy or image file")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{str(p)!r} is not a valid .npy array ({exc}); save it with numpy.save") from None
        if arr.dtype.kind not in "fiu" or arr.ndim not in (2, 3):
            raise UserError(
                f"{str(p)!r} holds a {arr.dtype} array of shape {arr.shape}; expected a real (H, W) or (C, ...) array"
            )
        y = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        y = y[None] if y.ndim == 2 else y
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        y = load_image(p, channels=channels)
    else:
        raise UserError(f"{str(p)!r}: unsupported measurement file type; use .npy, .png or .tif")
    if not torch.isfinite(y).all():
        raise UserError(f"{str(p)!r} contains NaN or Inf values; clean the measurement first")
    return y


def check_fits(y: Tensor, cfg: ProblemConfig, physics: PhysicsCache, source: str) -> None:
    """Raise a :class:`UserError` unless ``y`` (C, ...) has the shape the operator produces."""
    try:
        phys, img_size = physics.for_measurement(tuple(y.shape))
        expected = tuple(phys.A(torch.zeros((1, *img_size), device=physics.device)).shape[1:])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"{source}: a measurement of shape {tuple(y.shape)} does not fit the {cfg.problem!r} operator ({exc})"
        ) from None
    if expected != tuple(y.shape):
        raise UserError(
            f"{source}: measurement shape {tuple(y.shape)} does not fit the {cfg.problem!r} operator "
            f"(it produces {expected} for images of {img_size}); use a measurement made for this checkpoint"
        )


def write_array(x: Tensor, path: str | Path) -> None:
    """Save a (C, ...) tensor as ``.npy`` (raw) or as an image file (clipped to [0, 1])."""
    p = Path(path)
    if not p.parent.exists():
        raise UserError(f"output folder {str(p.parent)!r} does not exist; create it first")
    if p.suffix.lower() == ".npy":
        tmp = p.with_name(p.name + ".tmp.npy")
        np.save(tmp, x.detach().cpu().numpy().astype(np.float32))
        tmp.replace(p)
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        if x.dim() != 3 or x.shape[0] not in (1, 3):
            raise UserError(f"{str(p)!r}: a measurement of shape {tuple(x.shape)} is not an image; write .npy instead")
        save_image(x.detach().cpu().clamp(0, 1), p)
    else:
        raise UserError(f"{str(p)!r}: unsupported output type; use .npy, .png or .tif")
