"""Lipschitz estimate against known operator norms, and spectral normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.implicit import lipschitz_estimate, spectral_normalize


def test_lipschitz_estimate_of_linear_map_is_its_spectral_norm():
    w = torch.randn(10, 10, dtype=torch.float64)
    u = torch.randn(3, 10, dtype=torch.float64)
    est = lipschitz_estimate(lambda x: x @ w.T, u, n_iter=300)
    exact = torch.linalg.matrix_norm(w, 2)
    assert torch.allclose(est, exact.expand(3), rtol=1e-6)


def test_lipschitz_estimate_of_nonlinear_map_at_a_point():
    # f(x) = tanh(x) * 0.5 has Jacobian diag(0.5 * (1 - tanh^2)); largest entry at the smallest |x|.
    u = torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    est = lipschitz_estimate(lambda x: 0.5 * torch.tanh(x), u, n_iter=200)
    expected = 0.5 * (1 - torch.tanh(u.min(dim=1).values) ** 2)
    assert torch.allclose(est, expected, rtol=1e-6)


class _OnceDifferentiableLinear(torch.autograd.Function):
    """x -> x W^T whose backward has no derivative of its own, like cuDNN's grid sampler (CT's
    Radon transform on CUDA): a double backward through it raises."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return x @ w.T

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad @ w, None


def test_lipschitz_estimate_needs_no_double_backward():
    w = torch.randn(12, 12, dtype=torch.float64)
    u = torch.randn(2, 12, dtype=torch.float64)
    fn = lambda x: _OnceDifferentiableLinear.apply(x, w)  # noqa: E731
    x = u.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):  # the double backward that the estimate must not need
        torch.autograd.grad(g.sum(), x)
    est = lipschitz_estimate(fn, u, n_iter=300)
    assert torch.allclose(est, torch.linalg.matrix_norm(w, 2).expand(2), rtol=1e-6)


def test_lipschitz_estimate_float32_relu_map_matches_exact_jacobian():
    # A ReLU map has kinks: the central difference must use a step small enough not to cross them
    # (a secant over a large step reads low). Exact value: the Jacobian's norm, formed explicitly.
    torch.manual_seed(0)
    w1, w2 = torch.randn(64, 32) / 6, torch.randn(32, 64) / 6
    u = torch.randn(3, 32)
    fn = lambda x: torch.relu(x @ w1.T) @ w2.T  # noqa: E731
    est = lipschitz_estimate(fn, u, n_iter=200)
    jac = torch.stack([torch.autograd.functional.jacobian(fn, u[i : i + 1]).reshape(32, 32) for i in range(3)])
    exact = torch.linalg.matrix_norm(jac.double(), 2).float()
    assert torch.allclose(est, exact, rtol=1e-3)


def test_spectral_normalize_bounds_linear_layers():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(10)
    spectral_normalize(net, n_power_iterations=50)
    net.train()
    for _ in range(5):
        net(torch.randn(2, 8))  # power iterations run in training mode
    for layer in (net[0], net[2]):
        assert abs(float(torch.linalg.matrix_norm(layer.weight.detach(), 2)) - 1.0) < 1e-3
    # Applying it twice does not stack parametrisations.
    spectral_normalize(net)
    assert len(net[0].parametrizations.weight) == 1
