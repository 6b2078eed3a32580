"""Statistics reported by a fixed-point solve (forward or backward)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SolverStats:
    """What one fixed-point solve did, per sample.

    Attributes:
        iterations: applications of the map used by each sample, shape ``(B,)``.
        residual: relative residual ``||f(u_k) - u_k|| / ||f(u_k)||`` of the iterate ``u_k`` whose
            image ``f(u_k)`` the solver returned (the smallest seen), per sample, shape ``(B,)``.
        converged: whether each sample reached the tolerance, shape ``(B,)``.
        trace: relative residual after every iteration, shape ``(K, B)``.
        evaluations: applications of the map for the whole batch (what costs time).
        tol: the tolerance the solve aimed for.
        backward: statistics of the backward solve (``ImplicitDiff`` only), set after ``backward()``.
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    trace: Tensor
    evaluations: int
    tol: float
    backward: SolverStats | None = field(default=None)

    @property
    def all_converged(self) -> bool:
        """True when every sample of the batch reached the tolerance."""
        return bool(self.converged.all())

    def summary(self) -> dict[str, float | int | bool]:
        """Batch-level numbers for logs: max iterations, max residual, converged fraction."""
        out: dict[str, float | int | bool] = {
            "iterations": int(self.iterations.max()),
            "residual": float(self.residual.max()),
            "converged_fraction": float(self.converged.float().mean()),
            "evaluations": self.evaluations,
        }
        if self.backward is not None:
            out["backward_iterations"] = int(self.backward.iterations.max())
            out["backward_residual"] = float(self.backward.residual.max())
        return out


def relative_residual(fu: Tensor, u: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-sample ``||f(u) - u|| / (||f(u)|| + eps)`` over all but the batch dimension.

    An overflowing iterate gives ``inf`` (never a spuriously small ratio of two huge norms).
    """
    batch = fu.shape[0]  # reshape, not flatten(1): iterates may be 1-D, (B,)
    return residual_from_norms((fu - u).reshape(batch, -1).norm(dim=1), fu.reshape(batch, -1).norm(dim=1), eps)


def residual_from_norms(diff: Tensor, scale: Tensor, eps: float = 1e-12) -> Tensor:
    """``diff / (scale + eps)`` per sample, ``inf`` where either norm is not finite (see :func:`relative_residual`)."""
    # eps must not round to 0 (fp16: 1e-12 does, and 0/0 would be NaN for an exact zero fixed point).
    eps = max(eps, torch.finfo(scale.dtype).tiny) if scale.is_floating_point() else eps
    res = diff / (scale + eps)
    # One test for both norms (NaN fails `<`); their maximum, not their sum, which overflows in fp16.
    # Fewer kernels than two isfinite calls (each is four), which counts inside a GPU solver loop.
    return torch.where(torch.maximum(diff, scale) < float("inf"), res, float("inf"))
