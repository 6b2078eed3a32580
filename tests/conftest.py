"""Shared fixtures: a fixed seed and a device fixture (deepinv's convention)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: its tensors are tiny, and on a busy 2-core machine thread
    hand-offs cost more than they save (10-100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
