"""Learned regularisers and the ``ImplicitReconstructor`` (a deepinv ``Reconstructor``)."""

from jfb_inverse.models.build import PhysicsCache, apply_memory_format, build_model
from jfb_inverse.models.reconstructor import ImplicitReconstructor
from jfb_inverse.models.regularizers import SmoothingResidual, SmoothingResidualCNN, SmoothingResidualUNet

__all__ = [
    "ImplicitReconstructor",
    "PhysicsCache",
    "SmoothingResidual",
    "SmoothingResidualCNN",
    "SmoothingResidualUNet",
    "apply_memory_format",
    "build_model",
]
