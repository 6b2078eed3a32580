"""Contractivity tools: spectral normalisation and a power-iteration Lipschitz estimate.

JFB's gradient is a descent direction when T is a contraction in u (Lipschitz constant < 1).
Spectral normalisation bounds each learned layer; :func:`lipschitz_estimate` measures the whole
map at a given point.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from jfb_inverse.implicit.solvers import FixedPointMap

_NORMALISABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)


def spectral_normalize(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Apply torch's spectral-norm parametrisation to every conv / linear layer of ``module``.

    For convolutions torch normalises the reshaped ``(out, in*k*k)`` weight matrix, which bounds
    the layer's operator norm only up to a factor of about ``k``; use :func:`lipschitz_estimate`
    to measure the actual constant. Returns ``module`` (modified in place).
    """
    for layer in list(module.modules()):
        if isinstance(layer, _NORMALISABLE) and not _is_normalised(layer):
            parametrizations.spectral_norm(layer, n_power_iterations=n_power_iterations)
    return module


def _is_normalised(layer: nn.Module) -> bool:
    return hasattr(layer, "parametrizations") and "weight" in layer.parametrizations


def lipschitz_estimate(fn: FixedPointMap, u: Tensor, n_iter: int = 20, seed: int = 0) -> Tensor:
    """Estimate ``||J_fn(u)||_2`` per sample by power iteration on ``J^T J`` (VJP + JVP).

    ``fn`` must act on each sample independently (as a batch of images does). Returns a tensor of
    shape ``(B,)``: the largest singular value of the Jacobian at ``u``, a lower bound on the
    local Lipschitz constant that converges to it as ``n_iter`` grows.
    """
    generator = torch.Generator(device=u.device).manual_seed(seed)
    u = u.detach().requires_grad_()
    # cuDNN's grid sampler (CT's Radon transform on CUDA) has no double backward; the native
    # kernel, used with cuDNN off, has. Only this estimate pays for the slower convolutions.
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        out = fn(u)
        # J v by the double-VJP trick: d/dw <J^T w, v> = J v, needs no forward-mode support.
        w = torch.zeros_like(out, requires_grad=True)
        (jt_w,) = torch.autograd.grad(out, u, w, create_graph=True)
        v = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
        sigma = torch.zeros(u.shape[0], device=u.device)
        for _ in range(n_iter):
            v = v / (v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1))) + 1e-30)
            (jv,) = torch.autograd.grad(jt_w, w, v, retain_graph=True)
            (jtjv,) = torch.autograd.grad(out, u, jv, retain_graph=True)
            sigma = jv.flatten(1).norm(dim=1)
            v = jtjv.detach()
    return sigma.detach()
