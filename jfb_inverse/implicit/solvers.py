"""Fixed-point solvers: find ``u* = f(u*)`` without building an autograd graph.

Every solver is a small object with one method, ``solve(f, u0) -> (u*, SolverStats)``, so the
network and the gradient strategies never care which one runs.

Residual: ``r_k = ||f(u_k) - u_k|| / ||f(u_k)||`` per sample. For Picard with ``alpha = 1`` this is
``||u_{k+1} - u_k|| / ||u_{k+1}||``; it agrees with the ratio over ``||u_k||`` to first order near
the fixed point and stays defined for a zero start.

Stopping (``stop``):
- ``"batch"`` (default): the whole batch iterates until every sample has ``r_k <= tol`` (the
  batch maximum), or ``max_iter``.
- ``"sample"``: a sample that reaches ``tol`` is frozen (no further updates, its iteration count
  stops) while the others go on; the map is still evaluated on the full batch.

A solve that does not reach ``tol`` returns, per sample, the iterate with the smallest residual
seen (never a diverged one) and says so in ``stats.converged``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from jfb_inverse.implicit.stats import SolverStats, relative_residual

FixedPointMap = Callable[[Tensor], Tensor]
StopRule = Literal["batch", "sample"]


def _expand(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


class _BestIterate:
    """Keeps, per sample, the iterate with the smallest residual seen so far."""

    def __init__(self, u: Tensor, copy: bool = False) -> None:
        # copy=True: candidates live in buffers that get overwritten, so keep our own buffer.
        self.copy = copy
        self.value = u.clone() if copy else u
        self.residual = torch.full((u.shape[0],), float("inf"), device=u.device)

    def update(self, candidate: Tensor, residual: Tensor) -> None:
        finite = torch.isfinite(residual)
        improved = finite & (residual <= self.residual)
        if bool(improved.all()):
            # The common, monotone case: no new tensor.
            if self.copy:
                self.value.copy_(candidate)
            else:
                self.value = candidate
            self.residual = residual
        elif bool(improved.any()):
            if self.copy:
                self.value[improved] = candidate[improved]
            else:
                self.value = torch.where(_expand(improved, candidate), candidate, self.value)
            self.residual = torch.where(improved, residual, self.residual)


def _validate(u0: Tensor, tol: float, max_iter: int) -> None:
    if u0.dim() < 1 or u0.shape[0] == 0:
        raise ValueError(f"u0 must have a leading batch dimension, got shape {tuple(u0.shape)}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


def _finish(
    best: _BestIterate,
    trace: list[Tensor],
    iterations: Tensor,
    evaluations: int,
    tol: float,
) -> tuple[Tensor, SolverStats]:
    residual = best.residual
    stats = SolverStats(
        iterations=iterations,
        residual=residual,
        converged=residual <= tol,
        trace=torch.stack(trace) if trace else residual.new_zeros(0, residual.shape[0]),
        evaluations=evaluations,
        tol=tol,
    )
    return best.value, stats


class FixedPointSolver(ABC):
    """Interface: ``solve(f, u0)`` returns the fixed point of ``f`` and its statistics."""

    tol: float
    max_iter: int

    @abstractmethod
    def solve(self, f: FixedPointMap, u0: Tensor) -> tuple[Tensor, SolverStats]:
        """Iterate ``f`` from ``u0`` until the relative residual is below ``tol``."""


@dataclass
class Picard(FixedPointSolver):
    """Picard / Krasnoselskii-Mann iteration ``u <- (1 - alpha) u + alpha f(u)``.

    Cheap per step and safe for any contraction (and, with ``alpha < 1``, for any
    non-expansive ``f``), but linear convergence: slow when the contraction factor is near 1.
    """

    alpha: float = 1.0
    tol: float = 1e-4
    max_iter: int = 50
    stop: StopRule = "batch"

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"Picard alpha must be in (0, 1], got {self.alpha}")

    @torch.no_grad()
    def solve(self, f: FixedPointMap, u0: Tensor) -> tuple[Tensor, SolverStats]:
        """Run the (relaxed) Picard iteration from ``u0``."""
        _validate(u0, self.tol, self.max_iter)
        u = u0
        batch = u.shape[0]
        active = torch.ones(batch, dtype=torch.bool, device=u.device)
        iterations = torch.zeros(batch, dtype=torch.long, device=u.device)
        best = _BestIterate(u)
        trace: list[Tensor] = []
        evaluations = 0
        per_sample = self.stop == "sample"
        for _ in range(self.max_iter):
            fu = f(u)
            evaluations += 1
            res = relative_residual(fu, u)
            nxt = fu if self.alpha == 1.0 else torch.lerp(u, fu, self.alpha)
            if per_sample:
                nxt = torch.where(_expand(active, nxt), nxt, u)
                res = torch.where(active, res, best.residual)
            iterations += active
            trace.append(res)
            best.update(nxt, res)
            u = nxt
            # Converged or blown up: nothing more to gain for that sample.
            finished = (res <= self.tol) | ~torch.isfinite(res)
            if per_sample:
                active = active & ~finished
            if bool(finished.all()):
                break
        return _finish(best, trace, iterations, evaluations, self.tol)


@dataclass
class Anderson(FixedPointSolver):
    """Anderson acceleration (type II) with history ``m``, damping ``beta`` and regularisation ``lam``.

    Each step mixes the last ``m`` iterates with weights from a small least-squares problem
    (solved for the whole batch at once). ``lam`` is relative to the mean squared residual, so it
    does not depend on the image scale. A singular or non-finite system falls back to a plain
    Picard step for that sample instead of failing. Typically needs far fewer applications of
    ``f`` than Picard when the contraction factor is close to 1.
    """

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4
    tol: float = 1e-4
    max_iter: int = 50
    stop: StopRule = "batch"

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ValueError(f"Anderson history m must be >= 1, got {self.m}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"Anderson damping beta must be in (0, 1], got {self.beta}")
        if self.lam < 0:
            raise ValueError(f"Anderson regularisation lam must be >= 0, got {self.lam}")

    @torch.no_grad()
    def solve(self, f: FixedPointMap, u0: Tensor) -> tuple[Tensor, SolverStats]:
        """Run Anderson acceleration from ``u0``."""
        _validate(u0, self.tol, self.max_iter)
        shape = u0.shape
        batch = shape[0]
        m = self.m
        x0 = u0.reshape(batch, -1)
        X = x0.new_zeros(batch, m, x0.shape[1])  # noqa: N806 - maths notation
        F = torch.zeros_like(X)  # noqa: N806

        def fx(x: Tensor) -> Tensor:
            return f(x.view(shape)).reshape(batch, -1)

        active = torch.ones(batch, dtype=torch.bool, device=u0.device)
        iterations = torch.zeros(batch, dtype=torch.long, device=u0.device)
        best = _BestIterate(u0, copy=True)
        trace: list[Tensor] = []
        per_sample = self.stop == "sample"
        # Bordered system [[0, 1^T], [1, G G^T + lam I]] [mu; a] = [1; 0] (sum of weights = 1).
        H = x0.new_zeros(batch, m + 1, m + 1)  # noqa: N806
        H[:, 0, 1:] = 1
        H[:, 1:, 0] = 1
        rhs = x0.new_zeros(batch, m + 1, 1)
        rhs[:, 0] = 1
        eye = torch.eye(m, device=x0.device, dtype=x0.dtype)

        slots = m
        X[:, 0] = x0
        prev = 0
        evaluations = 0
        for k in range(self.max_iter):
            cur = k % slots
            if k == 1:
                X[:, cur] = F[:, prev]
            elif k > 1:
                n = min(k, slots)
                G = F[:, :n] - X[:, :n]  # noqa: N806
                gram = torch.bmm(G, G.transpose(1, 2))
                scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)
                H[:, 1 : n + 1, 1 : n + 1] = gram + (self.lam * scale)[:, None, None] * eye[:n, :n]
                sol, info = torch.linalg.solve_ex(H[:, : n + 1, : n + 1], rhs[:, : n + 1])
                weights = sol[:, 1 : n + 1, 0]
                bad = (info != 0) | ~torch.isfinite(weights).all(dim=1)
                if bool(bad.any()):
                    plain = torch.zeros_like(weights)
                    plain[:, prev] = 1.0
                    weights = torch.where(bad[:, None], plain, weights)
                mixed_f = torch.bmm(weights[:, None], F[:, :n])[:, 0]
                if self.beta == 1.0:
                    new = mixed_f
                else:
                    mixed_x = torch.bmm(weights[:, None], X[:, :n])[:, 0]
                    new = self.beta * mixed_f + (1 - self.beta) * mixed_x
                if per_sample:
                    new = torch.where(active[:, None], new, X[:, prev])
                X[:, cur] = new
            F[:, cur] = fx(X[:, cur])
            evaluations += 1
            res = relative_residual(F[:, cur], X[:, cur])
            if per_sample:
                res = torch.where(active, res, best.residual)
            iterations += active
            trace.append(res)
            best.update(F[:, cur].view(shape), res)
            prev = cur
            finished = (res <= self.tol) | ~torch.isfinite(res)
            if per_sample:
                active = active & ~finished
            if bool(finished.all()):
                break
        return _finish(best, trace, iterations, evaluations, self.tol)


def make_solver(name: str, **kwargs: float | int | str) -> FixedPointSolver:
    """Build a solver by name (``"picard"`` or ``"anderson"``); keyword arguments are its fields."""
    solvers: dict[str, type[FixedPointSolver]] = {"picard": Picard, "anderson": Anderson}
    try:
        cls = solvers[name.lower()]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(solvers)}") from None
    return cls(**kwargs)  # type: ignore[arg-type]
