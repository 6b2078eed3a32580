"""Pick the compute device from ``auto|cpu|cuda`` with a clear error when CUDA is missing."""

from __future__ import annotations

import torch

from jfb_inverse.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present else CPU; ``cuda`` without a GPU is a :class:`UserError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
