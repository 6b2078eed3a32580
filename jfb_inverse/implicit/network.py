"""The implicit network ``N(d) = S(u*)``, ``u* = R(u*, Q(d))``, and the one-call entry point."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from jfb_inverse.implicit.gradients import JFB, GradientStrategy
from jfb_inverse.implicit.solvers import Anderson, FixedPointMap, FixedPointSolver
from jfb_inverse.implicit.stats import SolverStats


def fixed_point(
    fn: FixedPointMap,
    u0: Tensor,
    solver: FixedPointSolver | None = None,
    gradient: GradientStrategy | None = None,
) -> tuple[Tensor, SolverStats]:
    """Find ``u* = fn(u*)`` from ``u0`` with ``solver`` and differentiate it with ``gradient``.

    Defaults: :class:`Anderson` (tol 1e-4, 50 iterations) and :class:`JFB`. Returns the
    equilibrium (carrying the strategy's autograd graph when autograd is on) and the solver's
    statistics.

    Example:
        >>> import torch
        >>> from jfb_inverse.implicit import fixed_point, Picard
        >>> u, stats = fixed_point(lambda u: 0.5 * u + 1.0, torch.zeros(1, 3), Picard(tol=1e-6, max_iter=100))
        >>> bool(torch.allclose(u, torch.full((1, 3), 2.0), atol=1e-5)), stats.all_converged
        (True, True)
    """
    if solver is not None and not isinstance(solver, FixedPointSolver):
        raise ValueError(
            f"solver must be a FixedPointSolver, got {type(solver).__name__} {solver!r}; e.g. Anderson() or "
            "make_solver('anderson')"
        )
    if gradient is not None and not isinstance(gradient, GradientStrategy):
        raise ValueError(
            f"gradient must be a GradientStrategy, got {type(gradient).__name__} {gradient!r}; e.g. JFB() or "
            "make_gradient('jfb')"
        )
    if not callable(fn):
        raise ValueError(f"fn must be a function of the iterate, got {type(fn).__name__}; e.g. lambda u: 0.5 * u + 1")
    return (gradient or JFB())(fn, u0, solver or Anderson())


class ImplicitNetwork(nn.Module):
    """An implicit network: embed ``q = Q(d)``, solve ``u* = R(u*, q)``, return ``S(u*)``.

    Args:
        update: ``R``, a module called as ``update(u, q)`` returning a tensor shaped like ``u``.
        embed: ``Q`` (default: identity).
        readout: ``S`` (default: identity).
        init: builds the starting point ``u0`` from ``q`` (default: ``zeros_like(q)``).
        solver: the forward fixed-point solver (default :class:`Anderson`).
        gradient: the gradient strategy (default :class:`JFB`).

    After each call, ``last_stats`` holds the forward solve's statistics (and, for
    :class:`ImplicitDiff`, ``last_stats.backward`` once ``backward()`` has run).
    """

    def __init__(
        self,
        update: nn.Module,
        embed: nn.Module | None = None,
        readout: nn.Module | None = None,
        init: Callable[[Tensor], Tensor] | None = None,
        solver: FixedPointSolver | None = None,
        gradient: GradientStrategy | None = None,
    ) -> None:
        super().__init__()
        self.update = update
        self.embed = embed if embed is not None else nn.Identity()
        self.readout = readout if readout is not None else nn.Identity()
        self.init = init
        self.solver: FixedPointSolver = solver or Anderson()
        self.gradient: GradientStrategy = gradient or JFB()
        self.last_stats: SolverStats | None = None

    def fixed_point_map(self, q: Tensor) -> FixedPointMap:
        """``T(.; d)`` as a one-argument function for solvers and diagnostics."""
        return lambda u: self.update(u, q)

    def forward(self, d: Tensor, u0: Tensor | None = None) -> Tensor:
        """Compute ``S(u*)`` for the data ``d`` (optionally from a given starting point ``u0``)."""
        q = self.embed(d)
        if u0 is None:
            u0 = self.init(q) if self.init is not None else torch.zeros_like(q)
        u, stats = self.gradient(self.fixed_point_map(q), u0, self.solver)
        self.last_stats = stats
        return self.readout(u)
