"""A user's object with ``A`` and ``A_adjoint`` methods as a deepinv ``LinearPhysics``."""

from __future__ import annotations

from typing import Any

from deepinv.physics import LinearPhysics
from torch import Tensor


class OperatorAdapter(LinearPhysics):
    """A deepinv ``LinearPhysics`` around any object with ``A(x)`` and ``A_adjoint(y)`` methods."""

    def __init__(self, operator: Any, img_size: tuple[int, int, int]) -> None:
        super().__init__(img_size=img_size)
        self.operator = operator

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """The user's forward operator."""
        return self.operator.A(x)

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """The user's adjoint."""
        return self.operator.A_adjoint(y)
