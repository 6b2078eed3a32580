"""Contractivity tools: spectral normalisation, a power-iteration Lipschitz estimate and the
Jacobian's leading eigenvalues.

JFB's descent guarantee needs T to be a contraction in u (Lipschitz constant < 1), and also a
well-conditioned derivative in the parameters (see :mod:`jfb_inverse.implicit.gradients`).
Spectral normalisation bounds each learned layer; :func:`lipschitz_estimate` measures the whole
map at a given point; :func:`jacobian_eigenvalues` shows the spectrum that sets how fast Picard
and Anderson converge there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations

from jfb_inverse.implicit.solvers import FixedPointMap

_NORMALISABLE = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)


def spectral_normalize(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Apply torch's spectral-norm parametrisation to every ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``
    and ``Linear`` layer of ``module`` (other layers, e.g. ``Bilinear``, are left as they are).

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
    """Estimate ``||J_fn(u)||_2`` per sample by power iteration on ``J^T J``.

    ``fn`` must act on each sample independently (as a batch of images does). Returns a tensor of
    shape ``(B,)``: the largest singular value of the Jacobian at ``u``, a lower bound on the
    local Lipschitz constant that converges to it as ``n_iter`` grows.

    ``J v`` is a central difference of ``fn`` with a step of ``1e-5 ||u||`` (more for half
    precision), ``J^T w`` one first-order VJP: no double backward, which some operators lack
    (CT's Radon transform on CUDA: deepinv records its adjoint's VJP graph once, with cuDNN's grid
    sampler in it, whose backward has no derivative and refuses to run with cuDNN switched off).
    The start ``v`` is a seeded draw, the same on every device.
    The step is small because the trained maps have kinks (ReLU): on the shipped models a step of
    ``1e-3 ||u||`` read 1-4% low, ``1e-5 ||u||`` matched the exact double-VJP estimate to 0.2%
    in float32. So ``fn`` must compute in ``u``'s precision: TF32 convolutions and matrix products
    (CUDA's default for cuDNN on compute capability 8.0+) are switched off here, and a map under
    bf16/fp16 autocast must not be passed (rounding then swamps the difference: 7.8 instead of
    1.04 seen with bf16; ``jfb_inverse.training.loop.lipschitz_at_fixed_point`` measures fp32).
    """
    # The start is drawn on the CPU and moved: a CUDA generator draws other numbers for the same
    # seed, and ten power iterations from another start read ~3% apart on the shipped CT model.
    if torch.is_inference_mode_enabled():  # enable_grad does nothing there: every J would read as 0
        raise RuntimeError("lipschitz_estimate needs autograd: call it outside torch.inference_mode (no_grad is fine)")
    generator = torch.Generator().manual_seed(seed)
    u = u.detach()
    shape = (-1, *([1] * (u.dim() - 1)))
    batch = u.shape[0]
    step = _difference_step(u)
    with _without_tf32():
        with torch.enable_grad():
            u_grad = u.clone().requires_grad_()
            out = fn(u_grad)  # one graph, reused for every J^T w
        draw_dtype = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
        v = torch.randn(u.shape, generator=generator, dtype=draw_dtype).to(u)
        sigma = torch.zeros(u.shape[0], device=u.device)
        for _ in range(n_iter):
            v = v / (v.reshape(batch, -1).norm(dim=1).view(shape) + 1e-30)
            with torch.no_grad():
                jv = (fn(u + step * v) - fn(u - step * v)) / (2 * step)
            if not out.requires_grad:  # fn ignores u and has no parameters: J = 0
                return torch.zeros(batch, device=u.device)
            (jtjv,) = torch.autograd.grad(out, u_grad, jv, retain_graph=True, allow_unused=True, materialize_grads=True)
            sigma = jv.reshape(batch, -1).norm(dim=1)
            v = jtjv.detach()
    return sigma.detach()


def jacobian_eigenvalues(fn: FixedPointMap, u: Tensor, k: int = 40, seed: int = 0) -> Tensor:
    """Ritz values of ``J_fn(u)`` per sample: ``k`` steps of Arnoldi, largest modulus first.

    Returns a complex tensor of shape ``(B, k)``. The leading values approximate the eigenvalues
    of largest modulus, which set the local rate of the fixed-point iterations at ``u`` (a fixed
    point): Picard's error shrinks like ``|lambda_max|^n``, and Krylov-type accelerations
    (Anderson, Broyden, GMRES) gain little when eigenvalues lie both near ``+1`` and far out on
    the negative side, as on the trained deblur model (see the README's "Performance").

    ``J v`` is the central difference of :func:`lipschitz_estimate` (no autograd, so any ``fn``
    computing in ``u``'s precision works); ``fn`` must act on each sample independently. The
    start is a seeded draw, the same on every device. An invariant subspace found early (a
    breakdown) leaves the remaining values at zero.
    """
    if u.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"jacobian_eigenvalues needs float32 or float64 iterates, got {u.dtype}: central differences "
            "drown in half-precision rounding; pass u.float() and a map that computes in float32"
        )
    if k < 1:
        raise ValueError(f"jacobian_eigenvalues needs k >= 1 Arnoldi steps, got {k}")
    u = u.detach()
    batch = u.shape[0]
    shape = (-1, *([1] * (u.dim() - 1)))
    step = _difference_step(u)
    v = torch.randn(u.shape, generator=torch.Generator().manual_seed(seed), dtype=u.dtype).to(u.device)
    basis = torch.empty(k + 1, *u.shape, dtype=u.dtype, device=u.device)
    hessenberg = torch.zeros(batch, k + 1, k, dtype=torch.float64, device=u.device)

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).reshape(batch, -1).sum(dim=1)

    basis[0] = v / dot(v, v).sqrt().view(shape)
    with _without_tf32(), torch.no_grad():
        for j in range(k):
            w = (fn(u + step * basis[j]) - fn(u - step * basis[j])) / (2 * step)
            for _ in range(2):  # Gram-Schmidt twice: once loses orthogonality in float32
                for i in range(j + 1):
                    coeff = dot(w, basis[i])
                    hessenberg[:, i, j] += coeff.double()
                    w = w - coeff.view(shape) * basis[i]
            norm = dot(w, w).sqrt()
            hessenberg[:, j + 1, j] = norm.double()
            basis[j + 1] = w / norm.clamp_min(1e-30).view(shape)
    values = torch.linalg.eigvals(hessenberg[:, :k, :k])
    order = values.abs().argsort(dim=1, descending=True)
    return torch.gather(values, 1, order)


def _difference_step(u: Tensor) -> Tensor:
    """The central differences' step per sample, ``1e-5 ||u||`` (more for half precision), shaped
    to broadcast over ``u`` (reshape, not flatten(1): iterates may be 1-D, ``(B,)``)."""
    rel_step = max(1e-5, 10 * torch.finfo(u.dtype).eps)
    step = (rel_step * u.reshape(u.shape[0], -1).norm(dim=1)).clamp_min(rel_step)
    return step.view(-1, *([1] * (u.dim() - 1)))


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    """Full float32 convolutions and matrix products on CUDA (TF32 keeps 10 mantissa bits)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
