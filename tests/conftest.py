"""Shared fixtures: a fixed seed and a device fixture (deepinv's convention)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def linear_contraction() -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric W with ||W||_2 = 0.95 (slow for Picard) and a batch of offsets b."""
    g = torch.Generator().manual_seed(1)
    n = 24
    w = torch.randn(n, n, generator=g, dtype=torch.float64)
    w = 0.5 * (w + w.T)
    w = 0.95 * w / torch.linalg.matrix_norm(w, 2)
    b = torch.randn(4, n, generator=g, dtype=torch.float64)
    return w, b
