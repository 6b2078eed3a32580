"""Measurement-consistency steps: closed form vs CG, optimality conditions, operator norm."""

from __future__ import annotations

import itertools

import deepinv as dinv
import pytest
import torch
from deepinv.physics.functional.blur import gaussian_blur

from jfb_inverse.consistency import GradientStep, ProximalStep, RelaxedProjection, make_step, operator_norm_squared

SIZE = (1, 24, 30)


class PlainBlur(dinv.physics.LinearPhysics):
    """The same blur without the SVD structure, so the prox goes through deepinv's CG."""

    def __init__(self, blur: dinv.physics.BlurFFT) -> None:
        super().__init__(max_iter=500, tol=1e-8)
        self.blur = blur

    def A(self, x, **kwargs):
        return self.blur.A(x)

    def A_adjoint(self, y, **kwargs):
        return self.blur.A_adjoint(y)


@pytest.fixture
def blur():
    return dinv.physics.BlurFFT(img_size=SIZE, filter=gaussian_blur(sigma=(1.5, 1.5)))


@pytest.fixture
def data(blur):
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, *SIZE), generator=g)
    y = blur.A(x) + 0.01 * torch.randn(x.shape, generator=g)
    u = torch.rand((2, *SIZE), generator=g)
    return x, y, u


def test_operator_norm_of_normalised_blur_is_one_and_cached(blur):
    value = operator_norm_squared(blur, SIZE)
    assert abs(value - 1.0) < 1e-3
    assert operator_norm_squared(blur, SIZE) == value


def test_operator_norm_of_scaled_operator():
    scaled = dinv.physics.Inpainting(img_size=SIZE, mask=torch.ones(SIZE) * 1.0)
    assert abs(operator_norm_squared(scaled, SIZE) - 1.0) < 1e-4


@pytest.mark.parametrize("eta", [0.3, 5.0])
def test_closed_form_prox_satisfies_optimality_and_matches_cg(blur, data, eta):
    _, y, u = data
    gamma = eta / operator_norm_squared(blur, SIZE)
    x = ProximalStep(blur, SIZE).bind(y, eta)(u)
    # Optimality of argmin gamma/2 ||Ax - y||^2 + 1/2 ||x - u||^2: (x - u) + gamma A^T (A x - y) = 0.
    grad = (x - u) + gamma * blur.A_adjoint(blur.A(x) - y)
    assert float(grad.abs().max()) < 1e-5
    x_cg = ProximalStep(PlainBlur(blur), SIZE).bind(y, eta)(u)
    assert torch.allclose(x, x_cg, atol=1e-4)


def test_gradient_step_and_relaxed_projection(blur, data):
    _, y, u = data
    step = GradientStep(blur, SIZE).bind(y, 1.0)
    expected = u - blur.A_adjoint(blur.A(u) - y) / operator_norm_squared(blur, SIZE)
    assert torch.allclose(step(u), expected, atol=1e-6)
    # F-FPN's relaxed projection with M = 2 I equals a gradient step of twice the size.
    relaxed = RelaxedProjection(blur, SIZE, preconditioner=lambda r: 2 * r).bind(y, 1.0)
    assert torch.allclose(relaxed(u), GradientStep(blur, SIZE).bind(y, 2.0)(u), atol=1e-6)


def test_gradient_iteration_decreases_data_misfit(blur, data):
    _, y, u = data
    step = make_step("gradient", blur, SIZE).bind(y, 1.0)
    misfits = []
    for _ in range(20):
        misfits.append(float((blur.A(u) - y).square().sum()))
        u = step(u)
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(misfits))
    assert misfits[-1] < 0.5 * misfits[0]


def test_unknown_step():
    with pytest.raises(ValueError, match="unknown consistency step"):
        make_step("admm", None, SIZE)


def test_operator_norm_is_cached_until_the_physics_changes():
    kernel = gaussian_blur(sigma=(1.5, 1.5))
    blur = dinv.physics.BlurFFT(img_size=SIZE, filter=kernel)
    calls = []
    real_a = blur.A
    blur.A = lambda x, **kw: calls.append(1) or real_a(x, **kw)
    value = operator_norm_squared(blur, SIZE)
    assert abs(value - 1.0) < 1e-3 and calls
    calls.clear()
    assert operator_norm_squared(blur, SIZE) == value and not calls  # cached: no power iteration
    blur.update(filter=3 * kernel)  # deepinv's own parameter update: ||A||^2 becomes 9
    assert abs(operator_norm_squared(blur, SIZE) - 9.0) < 1e-2
    with torch.no_grad():  # an in-place edit of its tensors counts too
        for t in blur.buffers():
            if t.is_floating_point():
                t.mul_(0.5)
    fresh = dinv.physics.BlurFFT(img_size=SIZE, filter=1.5 * kernel)
    assert abs(operator_norm_squared(blur, SIZE) - operator_norm_squared(fresh, SIZE)) < 1e-2
