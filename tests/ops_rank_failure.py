"""A test operator (identity blur) whose A fails on torch.distributed rank 1 after a few calls."""

from __future__ import annotations

import os

import torch
from deepinv.physics import LinearPhysics


class FailsOnRankOne(LinearPhysics):
    """Identity operator; on rank 1 its 50th application raises (a rank that dies mid-training)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls > 50:
            raise RuntimeError("simulated failure on rank 1")
        return x

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return y
