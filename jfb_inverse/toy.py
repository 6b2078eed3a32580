"""A toy implicit problem (no imaging): learn a map defined by a linear equilibrium.

Used by ``jfb-inverse demo`` and the engine tests: the data ``d`` and targets ``y`` come from a
teacher equilibrium ``y = W_t y + B_t d`` (``||W_t|| = 0.8``); a student
:class:`~jfb_inverse.implicit.ImplicitNetwork` with update ``u <- c * W u / ||W|| + Q d`` is fitted
with the chosen gradient strategy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jfb_inverse.implicit import JFB, Anderson, GradientStrategy, ImplicitNetwork


def teacher_data(n: int = 16, samples: int = 256, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Data ``d`` of shape ``(samples, n)`` and equilibrium targets ``y = (I - W_t)^{-1} B_t d``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g)
    w = 0.8 * w / torch.linalg.matrix_norm(w, 2)
    b = torch.randn(n, n, generator=g) / n**0.5
    d = torch.randn(samples, n, generator=g)
    y = torch.linalg.solve(torch.eye(n) - w, b @ d.T).T
    return d, y


class ContractiveLinearUpdate(nn.Module):
    """``R(u, q) = c * W u / ||W||_2 + q``: a contraction in u with factor ``c`` < 1."""

    def __init__(self, n: int, contraction: float = 0.9) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n) / n**0.5)
        self.contraction = contraction

    def forward(self, u: Tensor, q: Tensor) -> Tensor:
        """Apply the update (exact spectral normalisation: the matrix is small)."""
        w = self.contraction * self.weight / torch.linalg.matrix_norm(self.weight, 2)
        return u @ w.T + q


def fit_toy(
    gradient: GradientStrategy | None = None, steps: int = 200, n: int = 16, seed: int = 0, lr: float = 0.02
) -> list[float]:
    """Fit the student to the teacher with Adam; returns the full-batch MSE after every step."""
    torch.manual_seed(seed)
    d, y = teacher_data(n=n, seed=seed)
    net = ImplicitNetwork(
        update=ContractiveLinearUpdate(n),
        embed=nn.Linear(n, n, bias=False),
        solver=Anderson(tol=1e-5, max_iter=100),
        gradient=gradient or JFB(),
    )
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(d), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
