"""A test operator (identity blur) that sends SIGINT to its own process on torch.distributed rank 0
after a few calls: a signal that only one rank of a run receives."""

from __future__ import annotations

import os
import signal

import torch
from deepinv.physics import LinearPhysics


class SignalsRankZero(LinearPhysics):
    """Identity operator; on rank 0 its 40th application interrupts its own process (SIGINT)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls += 1
        # JFB_TEST_SIGNAL=0 turns the signal off (a resumed run, or the uninterrupted one to compare with).
        if os.environ.get("RANK") == "0" and self.calls == 40 and os.environ.get("JFB_TEST_SIGNAL", "1") == "1":
            os.kill(os.getpid(), signal.SIGINT)
        return x

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return y
