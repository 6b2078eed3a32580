"""Lipschitz estimate against known operator norms, and spectral normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.implicit import jacobian_eigenvalues, lipschitz_estimate, spectral_normalize


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


def _sorted_by_modulus(values: torch.Tensor) -> torch.Tensor:
    return values[values.abs().argsort(descending=True)]


def test_jacobian_eigenvalues_of_linear_maps_are_their_eigenvalues():
    # Two samples, each its own 6x6 matrix: real eigenvalues near +1 and a complex pair on the
    # negative side (the shape seen on the trained deblur map); full-dimension Arnoldi is exact.
    torch.manual_seed(0)
    spectra = [
        torch.tensor([0.99, 0.9, -0.8, 0.3, 0.0, 0.0]),
        torch.tensor([0.5, -0.2, 0.1, 0.05, 0.0, 0.0]),
    ]
    mats = []
    for i, diag in enumerate(spectra):
        block = torch.diag(diag.double())
        if i == 0:  # -0.85 +- 0.16j as a rotation-scaled 2x2 block
            block[4:, 4:] = torch.tensor([[-0.85, 0.16], [-0.16, -0.85]], dtype=torch.float64)
        basis = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0] + 0.3 * torch.eye(6, dtype=torch.float64)
        mats.append(basis @ block @ torch.linalg.inv(basis))
    mats = torch.stack(mats)
    u = torch.randn(2, 6, dtype=torch.float64)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", mats, x) + 1.0

    ritz = jacobian_eigenvalues(fn, u, k=6)
    assert ritz.shape == (2, 6) and ritz.is_complex()
    for b in range(2):
        exact = _sorted_by_modulus(torch.linalg.eigvals(mats[b]))
        assert torch.allclose(ritz[b].abs(), exact.abs(), atol=1e-6)
        # the same multiset of values (conjugate pairs may come in either order)
        for value in exact:
            assert (ritz[b] - value).abs().min() < 1e-6
    assert (ritz[0] - complex(-0.85, 0.16)).abs().min() < 1e-6


def test_jacobian_eigenvalues_leading_value_of_a_nonlinear_map():
    # T(u) = 0.9 tanh(u) elementwise: J = diag(0.9 / cosh(u)^2), largest 0.9 where u = 0.
    u = torch.tensor([[0.0, 0.5, 1.0, 2.0, -1.5, 3.0]], dtype=torch.float64)
    ritz = jacobian_eigenvalues(lambda x: 0.9 * torch.tanh(x), u, k=6)
    expected = _sorted_by_modulus((0.9 / torch.cosh(u[0]) ** 2).to(torch.complex128))
    assert torch.allclose(ritz[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "k", "message"), [(torch.bfloat16, 4, "float32 or float64"), (torch.float32, 0, "k >= 1")]
)
def test_jacobian_eigenvalues_refuses_half_precision_and_no_steps(dtype, k, message):
    with pytest.raises(ValueError, match=message):
        jacobian_eigenvalues(lambda x: 0.5 * x, torch.ones(2, 3, dtype=dtype), k=k)


def test_jacobian_eigenvalues_on_one_dimensional_iterates_of_a_contraction():
    # (B,) iterates, as the solvers accept: T(u) = 0.3 u + 1 has J = 0.3 for each sample.
    ritz = jacobian_eigenvalues(lambda x: 0.3 * x + 1.0, torch.tensor([0.5, -2.0], dtype=torch.float64), k=1)
    assert torch.allclose(ritz, torch.full((2, 1), 0.3, dtype=torch.complex128), atol=1e-8)


def test_spectral_normalize_covers_every_convolution_and_linear_layer():
    layers = [nn.Conv1d(2, 3, 3), nn.Conv3d(2, 3, 3), nn.ConvTranspose1d(2, 3, 3), nn.ConvTranspose2d(2, 3, 3),
              nn.ConvTranspose3d(2, 3, 3), nn.Linear(4, 5), nn.Bilinear(2, 2, 3)]  # fmt: skip
    spectral_normalize(nn.Sequential(*layers))
    normalised = [hasattr(layer, "parametrizations") for layer in layers]
    assert normalised == [True] * 6 + [False]  # Bilinear's 3-D weight is not a matrix: left as it is
    # Transposed convolutions are normalised along their output channels (dim 1), so each has norm 1.
    w = layers[3].weight.detach()
    assert torch.linalg.matrix_norm(w.transpose(0, 1).reshape(3, -1), ord=2) == pytest.approx(1.0, abs=0.05)


def test_lipschitz_estimate_refuses_inference_mode_where_it_read_zero():
    u = torch.randn(2, 3)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"outside torch\.inference_mode"):
        lipschitz_estimate(lambda v: 0.7 * v, u)
    with torch.no_grad():  # no_grad is fine: it re-enables autograd for its own graph
        torch.testing.assert_close(lipschitz_estimate(lambda v: 0.7 * v, u), torch.full((2,), 0.7), rtol=1e-2, atol=0)
