"""Lipschitz estimate against known operator norms, and spectral normalisation."""

from __future__ import annotations

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
