"""The training optimiser: Adam, or Muon on the hidden layers with Adam on the rest.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; Bernstein and
Newhouse, "Old optimizer, new norm", 2024) replaces each hidden layer's momentum, read as a matrix
(output channels x the rest), by the nearest semi-orthogonal matrix, computed with five
Newton-Schulz iterations. Every direction of the layer then moves at the same rate, where Adam's
per-entry scaling lets a few large directions dominate. On the deblur regulariser it reached in 1,000
steps what Adam reached in about 2,500 (``benchmarks/results/recipe_ablation.jsonl``, lines
``S19_*``). The input and output layers, biases and scalars stay with Adam, as Muon's authors
prescribe: an orthogonalised one-channel layer would be a normalised gradient step, not Muon.

Why not ``torch.optim.Muon``: it takes only 2-D parameters, and a convolution's weight is 4-D.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

#: Newton-Schulz coefficients of Muon's reference implementation (a quintic that pushes every
#: singular value into about [0.7, 1.2] in five iterations; exact orthogonality is not needed).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

#: Muon's momentum (Nesterov), the reference implementation's value.
MUON_MOMENTUM = 0.95


def orthogonalize(matrix: Tensor, steps: int = 5) -> Tensor:
    """``U V^T`` of ``matrix = U S V^T``, approximately: ``steps`` Newton-Schulz iterations in fp32.

    The singular vectors are kept and every nonzero singular value lands near 1 (within about
    [0.7, 1.2] after five steps); a zero matrix stays zero.
    """
    if matrix.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix, got a tensor of shape {tuple(matrix.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = matrix.float()
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # iterate on the smaller Gram matrix
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def hidden_weights(model: nn.Module) -> list[nn.Parameter]:
    """The parameters Muon trains: every weight of two or more dimensions except the first and the
    last (the input and output layers), in the model's parameter order."""
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    return weights[1:-1]


class MuonWithAdam(torch.optim.Optimizer):
    """Muon for the parameter groups marked ``muon=True``, Adam for the others.

    A Muon step: ``m <- mu m + g``, then ``p <- p - lr * s * orth(g + mu m)`` with the update read as
    a (first dimension) x (the rest) matrix and ``s = sqrt(max(1, rows / cols))``. An Adam step is
    ``torch.optim.Adam``'s (no weight decay, no amsgrad). One optimiser, so a learning-rate scheduler
    and checkpoints handle both kinds of group.
    """

    def __init__(self, param_groups: Iterable[dict[str, Any]]) -> None:
        defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "momentum": MUON_MOMENTUM, "muon": False}
        super().__init__(list(param_groups), defaults)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        if closure is not None:
            raise ValueError("MuonWithAdam.step takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["muon"]:
                    self._muon(p, group)
                else:
                    self._adam(p, group)

    def _muon(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        update = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
        matrix = update.reshape(p.shape[0], -1)
        scale = max(1.0, matrix.shape[0] / matrix.shape[1]) ** 0.5
        p.add_(orthogonalize(matrix).reshape(p.shape).to(p.dtype), alpha=-group["lr"] * scale)

    def _adam(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        n = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**n)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**n))


def build_optimizer(
    model: nn.Module, name: Literal["adam", "muon"], lr: float, muon_lr: float
) -> torch.optim.Optimizer:
    """The optimiser ``training.optimizer`` names: ``adam`` (``lr`` for every parameter) or ``muon``
    (``muon_lr`` for :func:`hidden_weights`, Adam at ``lr`` for the rest)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    hidden = hidden_weights(model)
    if not hidden:
        raise ValueError(
            "training.optimizer 'muon' needs a regulariser with hidden layers (three or more weight layers); "
            "use training.optimizer 'adam'"
        )
    hidden_ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden_ids]
    return MuonWithAdam([{"params": hidden, "lr": muon_lr, "muon": True}, {"params": rest, "lr": lr}])
