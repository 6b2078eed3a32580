"""ImplicitNetwork: statistics, memory constant in depth for JFB, and a toy fit."""

from __future__ import annotations

import torch
from torch import nn

from jfb_inverse.implicit import JFB, ImplicitDiff, ImplicitNetwork, Picard, Unrolled
from jfb_inverse.toy import fit_toy


class ConvUpdate(nn.Module):
    """R(u, q) = 0.5 * tanh(conv(u)) + q: contractive (tanh is 1-Lipschitz, conv scaled)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.mul_(0.5 / self.conv.weight.abs().sum())

    def forward(self, u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(u)) + q


def saved_bytes_of_training_step(gradient, max_iter: int) -> int:
    """Bytes autograd saves for backward during one forward pass (saved-tensor hooks)."""
    net = ImplicitNetwork(ConvUpdate(), solver=Picard(tol=1e-30, max_iter=max_iter), gradient=gradient)
    d = torch.rand(2, 1, 16, 16)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(d)
    out.sum().backward()
    return total


def test_jfb_memory_does_not_grow_with_iterations_while_unrolled_does():
    jfb_10 = saved_bytes_of_training_step(JFB(), 10)
    jfb_200 = saved_bytes_of_training_step(JFB(), 200)
    assert jfb_10 == jfb_200 > 0
    implicit_200 = saved_bytes_of_training_step(ImplicitDiff(), 200)
    assert implicit_200 == jfb_10
    unrolled_10 = saved_bytes_of_training_step(Unrolled(10), 10)
    unrolled_200 = saved_bytes_of_training_step(Unrolled(200), 200)
    assert unrolled_10 == 10 * jfb_10
    assert unrolled_200 == 200 * jfb_10


def test_last_stats_reports_forward_and_backward():
    net = ImplicitNetwork(ConvUpdate(), solver=Picard(tol=1e-6, max_iter=100), gradient=ImplicitDiff(tol=1e-6))
    out = net(torch.rand(3, 1, 8, 8))
    stats = net.last_stats
    assert stats is not None and stats.all_converged
    assert stats.iterations.shape == (3,)
    assert stats.backward is None
    out.square().sum().backward()
    assert stats.backward is not None and stats.backward.all_converged
    summary = stats.summary()
    assert summary["backward_iterations"] >= 1 and summary["converged_fraction"] == 1.0


def test_toy_implicit_problem_fitted_with_jfb_reduces_loss_100x():
    losses = fit_toy(JFB(), steps=150, seed=0)
    assert losses[-1] < losses[0] / 100
