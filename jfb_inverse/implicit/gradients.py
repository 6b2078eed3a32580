"""Gradient strategies: how an implicit layer is differentiated.

All strategies are called the same way, ``strategy(fn, u0, solver) -> (u, stats)``, where ``fn`` is
the fixed-point map ``T(.; d)`` closing over the data and the parameters. At inference (autograd
off) every strategy simply runs the solver, so a model's output does not depend on how it was
trained.

=================  =====================================================  ======================
strategy           backward                                               memory of a step
=================  =====================================================  ======================
``JFB()``          through one application of T at the fixed point        one layer
``JFBk(k)``        through the last k applications                        k layers
``ImplicitDiff``   solves ``g = J_T(u*)^T g + dL/du`` (VJP iterations)     one layer
``Unrolled(K)``    through all K iterations (no solver in training)      K layers
=================  =====================================================  ======================

JFB's descent guarantee (Fung et al., AAAI 2022, Thm. 3.1) needs T to be a contraction in u and
its derivative in the parameters to be well conditioned (full column rank, condition number
bounded in terms of the contraction factor): then ``-JFB gradient`` is a descent direction for the
loss. A contraction alone is not enough. Check the contraction with
:func:`jfb_inverse.implicit.lipschitz_estimate`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from jfb_inverse.implicit.solvers import (
    Anderson,
    FixedPointMap,
    FixedPointSolver,
    Picard,
    check_bounds,
    check_iterate,
    check_output,
    check_settings,
)
from jfb_inverse.implicit.stats import SolverStats, relative_residual


class GradientStrategy(ABC):
    """Interface: return the equilibrium (with the strategy's autograd graph) and its stats."""

    @abstractmethod
    def __call__(self, fn: FixedPointMap, u0: Tensor, solver: FixedPointSolver) -> tuple[Tensor, SolverStats]:
        """Solve ``u = fn(u)`` from ``u0`` and attach the strategy's graph to the result."""


def _solve_detached(fn: FixedPointMap, u0: Tensor, solver: FixedPointSolver) -> tuple[Tensor, SolverStats]:
    # Parametrized weights (torch's spectral norm) are computed once per solve: in training mode the
    # spectral norm runs a power-iteration step at every application, so T would change from one
    # iteration to the next (Anderson then needed 43 instead of 20 iterations to reach 1e-5 on a
    # spectral-norm deblur model). The tracked applications after the solve compute them again,
    # with autograd.
    check_iterate(u0)  # before u0.detach(): a list would fail as an AttributeError
    with torch.no_grad(), parametrize.cached():
        return solver.solve(fn, u0.detach())


@dataclass
class JFB(GradientStrategy):
    """Jacobian-free backpropagation: backprop through ``T(u*)`` only, ``u*`` detached.

    The gradient is the implicit gradient with the ``(I - J_T)^{-1}`` factor dropped; it costs one
    extra application of T and the memory of one layer, whatever the number of iterations.
    """

    def __call__(self, fn: FixedPointMap, u0: Tensor, solver: FixedPointSolver) -> tuple[Tensor, SolverStats]:
        """Solve without autograd, then apply ``fn`` once with autograd at the fixed point."""
        u_star, stats = _solve_detached(fn, u0, solver)
        if not torch.is_grad_enabled():
            return u_star, stats
        stats.evaluations += 1
        return fn(u_star), stats


@dataclass
class JFBk(GradientStrategy):
    """JFB-k / phantom gradient: backprop through the last ``k`` applications of T (k=1 is JFB)."""

    k: int = 5

    def __post_init__(self) -> None:
        check_settings("JFBk", {"k": self.k}, {})
        if self.k < 1:
            raise ValueError(f"JFBk needs k >= 1, got {self.k}")

    def __call__(self, fn: FixedPointMap, u0: Tensor, solver: FixedPointSolver) -> tuple[Tensor, SolverStats]:
        """Solve without autograd, then apply ``fn`` ``k`` times with autograd."""
        u, stats = _solve_detached(fn, u0, solver)
        if not torch.is_grad_enabled():
            return u, stats
        for _ in range(self.k):
            u = fn(u)
        stats.evaluations += self.k
        return u, stats


@dataclass
class Unrolled(GradientStrategy):
    """Plain backprop through ``K`` iterations from ``u0`` (the memory-hungry baseline)."""

    K: int = 20

    def __post_init__(self) -> None:
        check_settings("Unrolled", {"K": self.K}, {})
        if self.K < 1:
            raise ValueError(f"Unrolled needs K >= 1, got {self.K}")

    def __call__(self, fn: FixedPointMap, u0: Tensor, solver: FixedPointSolver) -> tuple[Tensor, SolverStats]:
        """Apply ``fn`` ``K`` times with autograd (inference falls back to the solver)."""
        if not torch.is_grad_enabled():
            return _solve_detached(fn, u0, solver)
        check_iterate(u0)  # what the solver checks in the no-grad branch above
        u = u0
        trace = []
        for i in range(self.K):
            fu = fn(u)
            if i == 0:
                check_output(fu, u)
            trace.append(relative_residual(fu.detach(), u.detach()))
            u = fu
        res = trace[-1]
        stats = SolverStats(
            iterations=torch.full_like(res, self.K, dtype=torch.long),
            residual=res,
            converged=res <= solver.tol,
            trace=torch.stack(trace),
            evaluations=self.K,
            tol=solver.tol,
        )
        return u, stats


class _ImplicitBackward(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass replaces ``v`` by ``(I - J^T)^{-1} v``."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, backward_fn: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        ctx.backward_fn = backward_fn
        # A copy, not a view: autograd forbids in-place edits (u.clamp_(0, 1)) of a Function's view output.
        return u.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.backward_fn(grad), None


@dataclass
class ImplicitDiff(GradientStrategy):
    """Exact implicit differentiation: solve ``g = J_T(u*)^T g + dL/du`` with VJP iterations.

    The adjoint fixed-point problem is solved by ``solver`` (``"picard"``, ``"anderson"`` or a
    :class:`FixedPointSolver`) to ``tol`` (default 1e-4) in at most ``max_iter`` (default 50)
    vector-Jacobian products (``None``: those defaults); a solver instance brings its own ``tol`` and
    ``max_iter``, and giving others here as well is an error rather than silently ignored. The
    backward solver is built from the fields when ``backward()`` runs, so an edited field takes
    effect. Its statistics land in ``stats.backward`` once ``backward()`` has run.
    """

    solver: FixedPointSolver | str = "anderson"
    tol: float | None = None
    max_iter: int | None = None

    def __post_init__(self) -> None:
        self.backward_solver()  # bad settings fail here, not inside loss.backward()

    def backward_solver(self) -> FixedPointSolver:
        """The solver of the adjoint equation, from the current fields."""
        if isinstance(self.solver, FixedPointSolver):
            if (self.tol, self.max_iter) != (None, None):
                raise ValueError(
                    "ImplicitDiff got tol/max_iter and a solver instance; set them on the instance, "
                    "e.g. ImplicitDiff(Picard(tol=1e-6, max_iter=200))"
                )
            return self.solver
        name = self.solver.lower() if isinstance(self.solver, str) else None
        tol = 1e-4 if self.tol is None else self.tol
        max_iter = 50 if self.max_iter is None else self.max_iter
        check_settings("ImplicitDiff", {"max_iter": max_iter}, {"tol": tol})
        check_bounds("ImplicitDiff", tol, max_iter)
        if name in ("picard", "fixed_point", "fixed-point"):
            return Picard(tol=tol, max_iter=max_iter)
        if name == "anderson":
            return Anderson(tol=tol, max_iter=max_iter)
        raise ValueError(f"unknown backward solver {self.solver!r}; use 'picard', 'anderson' or a FixedPointSolver")

    def __call__(self, fn: FixedPointMap, u0: Tensor, solver: FixedPointSolver) -> tuple[Tensor, SolverStats]:
        """Solve without autograd, apply ``fn`` once with autograd and attach the implicit backward."""
        u_star, stats = _solve_detached(fn, u0, solver)
        if not torch.is_grad_enabled():
            return u_star, stats
        # One tracked application serves both the parameter gradient and the VJPs in u.
        z = u_star.detach().requires_grad_()
        u = fn(z)
        stats.evaluations += 1
        backward_solver = self.backward_solver()

        def implicit_backward(v: Tensor) -> Tensor:
            def adjoint_map(g: Tensor) -> Tensor:
                # materialize_grads: a T that ignores u (a zero Jacobian) gives zeros, not an error.
                (vjp,) = torch.autograd.grad(u, z, g, retain_graph=True, allow_unused=True, materialize_grads=True)
                return vjp + v

            g, back_stats = backward_solver.solve(adjoint_map, v)
            stats.backward = back_stats
            if not bool(back_stats.converged.all()):
                # Its best iterate is then no gradient at all where the adjoint iteration diverges.
                worst, steps = float(back_stats.residual.max()), int(back_stats.iterations.max())
                warnings.warn(
                    f"ImplicitDiff: the backward solve did not converge (residual {worst:.2e} > tol "
                    f"{backward_solver.tol:g} after {steps} iterations); the gradient is inexact: raise its "
                    "max_iter, or use JFB where T is not a contraction",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return g

        return _ImplicitBackward.apply(u, implicit_backward), stats


def make_gradient(name: str, **kwargs: Any) -> GradientStrategy:
    """Build a strategy by name: ``jfb``, ``jfbk`` (k), ``implicit`` (solver, tol, max_iter), ``unrolled`` (K)."""
    strategies: dict[str, type[GradientStrategy]] = {
        "jfb": JFB,
        "jfbk": JFBk,
        "implicit": ImplicitDiff,
        "unrolled": Unrolled,
    }
    try:
        cls = strategies[name.lower()]
    except KeyError:
        raise ValueError(f"unknown gradient {name!r}; choose one of {sorted(strategies)}") from None
    return cls(**kwargs)
