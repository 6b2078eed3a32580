"""Measurement-consistency steps usable inside a fixed-point map, for any deepinv ``LinearPhysics``.

Each step is bound once to the measurements ``y`` (``step.bind(y, eta)``), which precomputes what
does not change across iterations (``A^T y``, its transform), and returns ``u -> step(u)``.

- :class:`GradientStep`: ``u - eta A^T (A u - y)``, safe for ``eta < 2 / ||A||^2``.
- :class:`ProximalStep`: ``prox_{eta/2 ||A . - y||^2}(u) = (I + eta A^T A)^{-1} (u + eta A^T y)``, in
  closed form for SVD-diagonal physics (FFT blur, inpainting, MRI) and by conjugate gradient
  (deepinv) otherwise. Non-expansive for any ``eta > 0``.
- :class:`RelaxedProjection` (F-FPN): ``v - eta M A^T (A v - y)`` with a preconditioner ``M``.

Step sizes are given in units of ``1 / ||A||^2`` (``operator_norm_squared``), so ``eta = 1`` is a
safe default for every operator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from deepinv.physics import DecomposablePhysics, LinearPhysics
from torch import Tensor

from jfb_inverse.consistency.norm import operator_norm_squared

Step = Callable[[Tensor], Tensor]


class _BaseStep:
    def __init__(self, physics: LinearPhysics, img_size: tuple[int, ...]) -> None:
        self.physics = physics
        self.img_size = tuple(img_size)

    def lipschitz_scale(self, device: torch.device) -> float:
        """``||A||^2`` for this physics and image size (cached)."""
        return operator_norm_squared(self.physics, self.img_size, device)


def normal_operator(physics: LinearPhysics) -> Step:
    """``u -> A^T A u``: deepinv's closed form ``V diag(s^2) V^T`` for SVD-diagonal physics (one
    transform pair instead of two for an FFT blur), ``A^T (A u)`` otherwise."""
    if isinstance(physics, DecomposablePhysics):
        return physics.A_adjoint_A
    return lambda u: physics.A_adjoint(physics.A(u))


class GradientStep(_BaseStep):
    """``u - (eta / ||A||^2) A^T (A u - y)``: one gradient step on ``1/2 ||A u - y||^2``."""

    def bind(self, y: Tensor, eta: Tensor | float) -> Step:
        """Precompute ``A^T y`` and return the step as a function of ``u``."""
        scale = eta / self.lipschitz_scale(y.device)
        aty = self.physics.A_adjoint(y)
        normal = normal_operator(self.physics)
        return lambda u: u - scale * (normal(u) - aty)


class RelaxedProjection(GradientStep):
    """F-FPN's relaxed projection ``v - (eta / ||A||^2) M A^T (A v - y)``; ``M`` defaults to identity."""

    def __init__(self, physics: LinearPhysics, img_size: tuple[int, ...], preconditioner: Step | None = None) -> None:
        super().__init__(physics, img_size)
        self.preconditioner = preconditioner

    def bind(self, y: Tensor, eta: Tensor | float) -> Step:
        """Precompute ``A^T y`` and return the (preconditioned) step."""
        if self.preconditioner is None:
            return super().bind(y, eta)
        scale = eta / self.lipschitz_scale(y.device)
        aty = self.physics.A_adjoint(y)
        normal, m = normal_operator(self.physics), self.preconditioner
        return lambda v: v - scale * m(normal(v) - aty)


class ProximalStep(_BaseStep):
    """``prox`` of ``(eta / ||A||^2) / 2 ||A . - y||^2``: closed form when the physics has an SVD, else CG."""

    def bind(self, y: Tensor, eta: Tensor | float) -> Step:
        """Precompute the data term (in the SVD basis when there is one) and return the prox of ``u``."""
        gamma = eta / self.lipschitz_scale(y.device)
        physics = self.physics
        if isinstance(physics, DecomposablePhysics):
            mask = physics.mask
            s2 = (mask.conj() * mask).real if torch.is_tensor(mask) and mask.is_complex() else mask**2
            # (I + g A^T A)^{-1}(u + g A^T y) = V (V^T u + g V^T A^T y) / (1 + g s^2)
            data = physics.V_adjoint(physics.A_adjoint(y)) * gamma
            denom = 1 + gamma * s2
            return lambda u: physics.V((physics.V_adjoint(u) + data) / denom)
        return lambda u: physics.prox_l2(u, y, gamma)


class FilteredProjection(_BaseStep):
    """F-FPN's relaxed projection with a filtered back-projection as ``M A^T`` (parallel-beam CT).

    ``v - eta FBP(A v - y)``: FBP approximates the pseudo-inverse, so ``eta = 1`` is close to a
    projection onto the data-consistent images and the fixed-point iteration needs far fewer
    steps than with the plain (badly conditioned) gradient ``A^T (A v - y)``. ``eta`` is absolute
    here (FBP already carries the ``1/||A||^2`` scale). The filter is ramp x Hann.
    """

    def __init__(self, physics: LinearPhysics, img_size: tuple[int, ...]) -> None:
        from deepinv.physics import Tomography

        from jfb_inverse.problems.operators import DetectorResampledTomography

        if not isinstance(physics, (Tomography, DetectorResampledTomography)):
            raise ValueError(
                f"model.step 'filtered' (a filtered back-projection) needs a CT operator (deepinv Tomography), "
                f"got {type(physics).__name__}; use model.step 'prox', 'gradient' or 'ffpn'"
            )
        super().__init__(physics, img_size)

    def bind(self, y: Tensor, eta: Tensor | float) -> Step:
        """Return ``v -> v - eta FBP(A v - y)`` (differentiable in ``v`` and ``eta``)."""
        from jfb_inverse.baselines import filtered_backprojection

        physics = self.physics
        return lambda v: v - eta * filtered_backprojection(physics.A(v) - y, physics, "hann")


def make_step(kind: str, physics: LinearPhysics, img_size: tuple[int, ...]) -> _BaseStep:
    """The step named ``prox``, ``gradient``, ``ffpn`` or ``filtered`` (CT) for ``physics``."""
    steps: dict[str, type[_BaseStep]] = {
        "prox": ProximalStep,
        "gradient": GradientStep,
        "ffpn": RelaxedProjection,
        "filtered": FilteredProjection,
    }
    if kind not in steps:
        raise ValueError(f"unknown consistency step {kind!r}; choose one of {sorted(steps)}")
    return steps[kind](physics, img_size)
