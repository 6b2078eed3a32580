"""Measurement-consistency steps on any deepinv ``LinearPhysics`` (gradient, proximal, relaxed projection)."""

from jfb_inverse.consistency.norm import operator_norm_squared
from jfb_inverse.consistency.steps import GradientStep, ProximalStep, RelaxedProjection, make_step

__all__ = ["GradientStep", "ProximalStep", "RelaxedProjection", "make_step", "operator_norm_squared"]
