"""The equilibrium engine: fixed-point solvers, gradient strategies and the implicit network.

Independent of imaging (it never imports deepinv): everything here works on any tensor map
``u -> T(u; d)`` with a leading batch dimension.
"""

from jfb_inverse.implicit.contractivity import jacobian_eigenvalues, lipschitz_estimate, spectral_normalize
from jfb_inverse.implicit.gradients import (
    JFB,
    GradientStrategy,
    ImplicitDiff,
    JFBk,
    Unrolled,
    make_gradient,
)
from jfb_inverse.implicit.network import ImplicitNetwork, fixed_point
from jfb_inverse.implicit.solvers import Anderson, FixedPointSolver, Picard, SampleSubsetMap, make_solver
from jfb_inverse.implicit.stats import SolverStats, relative_residual

__all__ = [
    "JFB",
    "Anderson",
    "FixedPointSolver",
    "GradientStrategy",
    "ImplicitDiff",
    "ImplicitNetwork",
    "JFBk",
    "Picard",
    "SampleSubsetMap",
    "SolverStats",
    "Unrolled",
    "fixed_point",
    "jacobian_eigenvalues",
    "lipschitz_estimate",
    "make_gradient",
    "make_solver",
    "relative_residual",
    "spectral_normalize",
]
