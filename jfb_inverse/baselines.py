"""Classical reconstructions for comparison: Tikhonov / Wiener, total variation, filtered back-projection.

Every method takes measurements ``y`` and a deepinv ``LinearPhysics`` and returns a (B, C, H, W)
image; all are batched, run on the device of ``y`` and never build an autograd graph. They are
the bar a learned reconstruction must clear on the same forward model.

- :func:`tikhonov`: ``argmin ||Ax - y||^2 + lam ||x||^2`` through deepinv's ``prox_l2`` (closed
  form for FFT blur and other ``DecomposablePhysics``, conjugate gradient otherwise).
- :func:`wiener`: Wiener deconvolution for ``BlurFFT``; with a flat noise-to-signal ratio it *is*
  :func:`tikhonov` with ``lam = nsr``.
- :func:`tv_reconstruction`: ``argmin 0.5 ||Ax - y||^2 + lam TV(x)`` over the box [0, 1], by the
  Condat-Vũ primal-dual algorithm.
- :func:`fbp`: filtered back-projection for parallel-beam ``Tomography`` with a choice of window.
- :func:`tune`: grid search of a method's parameters on training images.

The tuned defaults of the built-in problems are in ``DEBLUR_DEFAULTS`` and ``CT_DEFAULTS``;
:func:`baselines_for` turns them into the callables that evaluation compares against.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from deepinv.models.tv import TVDenoiser
from deepinv.physics import BlurFFT, DecomposablePhysics, LinearPhysics, Tomography
from deepinv.physics.functional import filter_fft
from torch import Tensor

from jfb_inverse.metrics import psnr

Baseline = Callable[[Tensor, LinearPhysics], Tensor]

# --- tuned defaults -------------------------------------------------------------------------

# DEBLUR-G (Gaussian blur sigma 2 px, circular boundary, Gaussian noise sigma 0.01, grey 128 x 128):
# found by `tune` (grid search, best mean PSNR, noise seed 0) on the 13 built-in TRAINING images
# (datasets.images.BUILTIN_TRAIN, grey, centre-cropped, resized to 128 x 128); the held-out images
# camera, astronaut, coins and rocket were never looked at. Reproduce with
# `python benchmarks/tune_baselines.py` (benchmarks/results/tune_baselines.json has every grid point).
#   wiener / tikhonov: nsr = lam in 10^k, k = -4 ... -1 in steps of 1/8 -> 1e-2 (26.86 dB; the
#     two are the same estimator, see `wiener`).
#   tv: lam in 10^k, k = -4 ... -2 in steps of 1/8, n_iter = 1000 -> lam 5.6e-4 (27.45 dB;
#     4.2e-4 and 7.5e-4 score 27.44 and 27.41). 1000 iterations bring the objective within ~5e-4
#     of its limit but not the PSNR: the early stop from A^T y still regularises, and scores higher
#     than the minimiser. Run to 5000 iterations (objective flat), the best weight is the same
#     5.6e-4 at 27.38 dB (`--only tv --tv-iters 5000`), and 27.87 dB held out against 28.08: the
#     1000-iteration TV is the stronger baseline. An earlier search also tried n_iter 200, which
#     was 0.3 dB worse held out.
DEBLUR_DEFAULTS: dict[str, dict[str, Any]] = {
    "wiener": {"nsr": 1e-2},
    "tikhonov": {"lam": 1e-2},
    "tv": {"lam": 5.6e-4, "n_iter": 1000},
}

# Inpainting (50% of pixels missing), super-resolution x2 and MRI x4, the registered problems'
# defaults (noise sigma 0.01): found the same way on the same 13 training images, with
# `python benchmarks/tune_baselines.py --problem P` (benchmarks/results/tune_baselines_P.json).
#   tikhonov: lam in 10^k, k = -4 ... 0 in steps of 1/4; tv: as for deblurring (1000 iterations).
#   inpainting: tv 2.4e-3 (29.79 dB; deblurring's 5.6e-4 scored 28.00); Tikhonov there is the
#     zero-filled measurement scaled by 1/(1 + lam) (10.52 dB at any small lam).
#   superres: tikhonov 5.6e-3 (27.44 dB; 1e-2: 27.09), tv 1e-3 (29.21; 5.6e-4: 29.00).
#   mri: tikhonov 5.6e-4 (25.18; 1e-2: 25.15), tv 3.2e-3 (28.03; 5.6e-4: 27.30).
# Other operators (custom) keep the deblurring values: re-tune with `tune`.
OTHER_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "inpainting": {"tikhonov": {"lam": 1e-3}, "tv": {"lam": 2.4e-3, "n_iter": 1000}},
    "superres": {"tikhonov": {"lam": 5.6e-3}, "tv": {"lam": 1e-3, "n_iter": 1000}},
    "mri": {"tikhonov": {"lam": 5.6e-4}, "tv": {"lam": 3.2e-3, "n_iter": 1000}},
}

# CT-30 (parallel beam, 30 angles evenly in [0, 180), 128 x 128, circle=False; Gaussian noise of
# 1.5 % of each clean sinogram's maximum): found by `tune` on 8 random ellipse phantoms
# (jfb_inverse.datasets.phantoms.ellipse_phantoms, seed 0). TV's lam is relative to ||A||^2, so
# the same value serves Tomography(normalize=True) and normalize=False (see `ct_tv`).
#   fbp: filter in {ramp, shepp-logan, cosine, hann}
#   tv: lam_rel in 10^k, k = -5 ... -2 in steps of 0.25, n_iter in {100, 200, 400}, FBP start
CT_DEFAULTS: dict[str, dict[str, Any]] = {
    "fbp": {"filter": "hann"},
    "tv": {"lam_rel": 1e-3, "n_iter": 200},
}

# Noise levels the defaults were tuned at, and how the weights follow other noise levels: the
# same tuning on the same images at sigma = 0.005, 0.02 and 0.04 gave nsr 4.2e-3, 2.4e-2, 4.2e-2
# (nsr ∝ sigma) and TV lam 1.8e-4, 1.8e-3, 5.6e-3 (lam ∝ sigma^(5/3)), both exact on the grid.
_DEBLUR_SIGMA = 0.01
_CT_SIGMA = 0.015
_NSR_EXPONENT = 1.0
_TV_EXPONENT = 5.0 / 3.0


# --- Tikhonov / Wiener ----------------------------------------------------------------------


def tikhonov(y: Tensor, physics: LinearPhysics, lam: float, **prox_kwargs: Any) -> Tensor:
    """``argmin_x ||Ax - y||^2 + lam ||x||^2``, i.e. ``(A^T A + lam I) x = A^T y``.

    deepinv's ``prox_l2(z, y, gamma)`` is ``argmin gamma/2 ||Ax - y||^2 + 1/2 ||x - z||^2``, so
    ``z = 0`` and ``gamma = 1 / lam`` give this problem: closed form for ``BlurFFT`` and other
    ``DecomposablePhysics``, conjugate gradient otherwise (``prox_kwargs`` go to the solver).
    """
    if lam <= 0:
        raise ValueError(f"lam must be positive, got {lam}")
    with torch.no_grad():
        return physics.prox_l2(0.0, y, gamma=1.0 / lam, **prox_kwargs)


def wiener(y: Tensor, physics: BlurFFT, nsr: float | Tensor) -> Tensor:
    """Wiener deconvolution for an FFT blur: ``X = conj(K) Y / (|K|^2 + nsr)``.

    ``K`` is the transfer function of the (circular) blur and ``nsr`` the noise-to-signal power
    ratio: a float (flat spectrum) or a tensor broadcastable to the half spectrum (H, W // 2 + 1).
    With a flat ``nsr`` this is exactly ``tikhonov(y, physics, lam=nsr)``: the DFT diagonalises
    the circular convolution, and ``(A^T A + lam I)^-1 A^T`` is ``conj(K) / (|K|^2 + lam)`` per
    frequency. For white noise of variance s^2 and a signal power spectrum P, ``nsr = s^2 / P``.
    """
    if not isinstance(physics, BlurFFT):
        raise TypeError(f"wiener needs a deepinv BlurFFT, got {type(physics).__name__}; use tikhonov")
    if isinstance(nsr, (int, float)) and nsr <= 0:
        raise ValueError(f"nsr must be positive, got {nsr}")
    size = tuple(physics.img_size[-2:])
    with torch.no_grad():
        # The same zero-padded, centred kernel FFT that BlurFFT itself diagonalises A with.
        k = filter_fft(physics.filter.to(y.device, y.dtype), tuple(physics.img_size), real_fft=True, dims=(-2, -1))
        spectrum = torch.fft.rfft2(y) * k.conj() / (k.abs().square() + nsr)
        return torch.fft.irfft2(spectrum, s=size)


# --- total variation ------------------------------------------------------------------------

# deepinv's finite differences (forward differences, zero at the last row / column): the same
# isotropic TV as deepinv.optim.TVPrior, whose operator norm is at most sqrt(8).
_nabla = TVDenoiser.nabla
_nabla_adjoint = TVDenoiser.nabla_adjoint
_NABLA_SQNORM = 8.0


def total_variation(x: Tensor) -> Tensor:
    """Isotropic TV of each image, ``sum |grad x|_2`` over pixels (and channels), shape (B,)."""
    return _nabla(x).square().sum(-1).sqrt().flatten(1).sum(1)


def tv_objective(x: Tensor, y: Tensor, physics: LinearPhysics, lam: float) -> Tensor:
    """``0.5 ||Ax - y||^2 + lam TV(x)`` of each image of a batch, shape (B,)."""
    return 0.5 * (physics.A(x) - y).square().flatten(1).sum(1) + lam * total_variation(x)


def operator_sqnorm(physics: LinearPhysics, x: Tensor, max_iter: int = 50, rtol: float = 1e-4) -> float:
    """``||A||^2 = ||A^T A||_2`` for images shaped like ``x``: exact for decomposable physics,
    power iteration otherwise.

    Not ``physics.compute_sqnorm``: deepinv's power method stops on an *absolute* tolerance,
    which for an unnormalised CT operator (``||A||^2`` in the thousands) never triggers.
    """
    mask = getattr(physics, "mask", None)
    if isinstance(physics, DecomposablePhysics) and mask is not None:
        # A = U diag(mask) V^T with U, V unitary: the largest singular value is max |mask|.
        return float(torch.as_tensor(mask).abs().max()) ** 2
    with torch.no_grad():
        v = torch.randn(x[:1].shape, generator=torch.Generator().manual_seed(0)).to(x)
        v = v / v.norm()
        est = 0.0
        for _ in range(max_iter):
            w = physics.A_adjoint(physics.A(v))
            new = float((v * w).sum())
            v = w / w.norm()
            if abs(new - est) <= rtol * abs(new):
                return new
            est = new
        return est


def tv_reconstruction(
    y: Tensor,
    physics: LinearPhysics,
    lam: float,
    n_iter: int = 200,
    x0: Tensor | None = None,
    *,
    sqnorm: float | None = None,
    box: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """``argmin_x 0.5 ||Ax - y||^2 + lam TV(x)`` subject to ``x`` in ``box`` (isotropic TV).

    Condat-Vũ primal-dual iteration (L. Condat, JOTA 2013; B. C. Vũ, 2013): an explicit gradient
    step on the data term, a projection on the box, and a dual ascent on ``grad x``::

        x+ = P_box(x - tau (A^T (A x - y) + grad^T q))
        q+ = P_{|q| <= lam}(q + sigma grad(2 x+ - x))

    It converges for ``1 / tau - 8 sigma > ||A||^2 / 2``; ``tau = 1 / ||A||^2`` and
    ``sigma = 0.99 ||A||^2 / 16`` make the iteration invariant to a rescaling of ``A`` (so it runs
    the same on normalised and unnormalised CT). Each step costs one ``A``, one ``A^T`` and two
    finite differences, unlike FISTA with deepinv's ``TVPrior.prox``, an inner loop of up to 1000
    iterations per step. ``sqnorm`` (``||A||^2``) is computed when not given (exact for FFT blur,
    power iteration otherwise); ``x0`` defaults to ``A^T y / ||A||^2``. The output is clipped to
    [0, 1]; ``box=None`` drops the constraint from the iteration.
    """
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    with torch.no_grad():
        x = physics.A_adjoint(y) if x0 is None else x0.clone()
        big_l = operator_sqnorm(physics, x) if sqnorm is None else float(sqnorm)
        if x0 is None:
            x = x / big_l
        # A 2 % margin covers the under-estimate of a power iteration.
        big_l *= 1.02
        tau = 1.0 / big_l
        sigma = 0.99 * (1.0 / tau - big_l / 2) / _NABLA_SQNORM
        q = torch.zeros_like(_nabla(x))
        for _ in range(n_iter):
            x_new = x - tau * (physics.A_adjoint(physics.A(x) - y) + _nabla_adjoint(q))
            if box is not None:
                x_new = x_new.clamp(*box)
            q = q + sigma * _nabla(2 * x_new - x)
            # Projection on the pointwise l2 ball of radius lam: prox of the conjugate of lam ||.||_{1,2}.
            q = q / torch.clamp(q.norm(dim=-1, keepdim=True) / max(lam, 1e-30), min=1.0)
            x = x_new
        return x.clamp(0.0, 1.0)


# --- filtered back-projection ---------------------------------------------------------------

FBP_FILTERS: tuple[str, ...] = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def fbp_filter(n_detectors: int, filter: str = "ramp", device: torch.device | str = "cpu") -> Tensor:
    """Half-spectrum (rfft) FBP filter for a detector of ``n_detectors``, on the zero-padded length.

    The ramp is the band-limited one of Kak & Slaney (built in the spatial domain, then FFT), as
    in scikit-image's ``iradon`` and deepinv's ``RampFilter``; the windows follow ``iradon``'s
    conventions with ``f`` the frequency in cycles per sample (0 ... 0.5): shepp-logan
    ``sinc(f)``, cosine ``cos(pi f)``, hamming ``0.54 + 0.46 cos(2 pi f)``, hann ``cos^2(pi f)``.
    """
    if filter not in FBP_FILTERS:
        raise ValueError(f"unknown FBP filter {filter!r}; valid: {', '.join(FBP_FILTERS)}")
    # Same padded length as deepinv's RampFilter, so that 'ramp' matches physics.fbp exactly.
    size = max(64, 2 ** math.ceil(math.log2(2 * n_detectors)))
    n = torch.cat([torch.arange(1, size // 2 + 1, 2), torch.arange(size // 2 - 1, 0, -2)]).double()
    kernel = torch.zeros(size, dtype=torch.float64)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (math.pi * n) ** 2
    ramp = 2.0 * torch.fft.rfft(kernel).real
    f = torch.arange(size // 2 + 1, dtype=torch.float64) / size
    window = {
        "ramp": torch.ones_like(f),
        "shepp-logan": torch.sinc(f),
        "cosine": torch.cos(math.pi * f),
        "hamming": 0.54 + 0.46 * torch.cos(2 * math.pi * f),
        "hann": torch.cos(math.pi * f) ** 2,
    }[filter]
    return (ramp * window).float().to(device)


def _on_native_detector(y: Tensor, physics: LinearPhysics) -> tuple[Tensor, LinearPhysics]:
    """A sinogram of a CT with a resampled detector (``operator.detectors``) brought back to the
    native detector of its :class:`Tomography`, where FBP's filter and scaling hold."""
    from jfb_inverse.problems.operators import DetectorResampledTomography

    if isinstance(physics, DetectorResampledTomography):
        return torch.einsum("do,bcoa->bcda", physics.to_native, y), physics.tomography
    return y, physics


def filtered_backprojection(y: Tensor, physics: Tomography, filter: str) -> Tensor:
    """Differentiable, linear FBP of sinograms with ``ramp x window`` (see :func:`fbp` for the scaling)."""
    y, physics = _on_native_detector(y, physics)
    if not isinstance(physics, Tomography):
        raise TypeError(f"filtered back-projection needs a deepinv Tomography, got {type(physics).__name__}")
    return _filtered_backprojection(y, physics, filter)


def _filtered_backprojection(y: Tensor, physics: Tomography, filter: str) -> Tensor:
    n_det = y.shape[-2]
    response = fbp_filter(n_det, filter, y.device).to(y.dtype)
    size = 2 * (response.numel() - 1)
    # Sinograms are (B, C, n_detectors, n_angles): filter along dim -2, zero-padded against wrap-around.
    padded = torch.nn.functional.pad(y, (0, 0, 0, size - n_det))
    filtered = torch.fft.irfft(torch.fft.rfft(padded, dim=-2) * response[:, None], n=size, dim=-2)[..., :n_det, :]
    # physics.fbp's scaling: pi / (2 n_angles) for the angular quadrature (times the covered
    # fraction of 180 degrees, see _angular_coverage), and ||A||^2 to undo the 1/||A|| that
    # normalize=True puts in both A (hence in y) and A^T.
    scale = math.pi / (2 * len(physics.angles)) * _angular_coverage(physics)
    if physics.normalize:
        scale = scale * physics.operator_norm**2
    out = physics.A_adjoint(filtered) * scale
    if physics.fbp_interpolate_boundary:
        out = torch.nn.functional.pad(out[..., 2:-2, 2:-2], (2, 2, 2, 2), mode="replicate")
    return out


def _angular_coverage(physics: Tomography) -> float:
    """``min(range, 180) / 180`` for views evenly spaced over ``range`` degrees.

    deepinv's FBP weights each of n views by ``pi / (2 n)``, the quadrature of n views over 180
    degrees. Views over a limited range (90 degrees, say) are denser, so that weight counts each
    direction they see ``180 / range`` times: FBP(A x) comes out twice as bright at 90 degrees. A
    range of 180 degrees or more (360: each direction twice) keeps deepinv's weight.
    """
    angles = physics.angles.detach().flatten()
    n = angles.numel()
    if n < 2:
        return 1.0
    spacing = abs(float(angles[-1] - angles[0])) / (n - 1)
    return min(n * spacing, 180.0) / 180.0


def fbp(y: Tensor, physics: Tomography, filter: str = "ramp") -> Tensor:
    """Filtered back-projection of parallel-beam sinograms (B, C, n_detectors, n_angles).

    ``ramp`` is deepinv's own FBP (``physics.A_dagger(y, fbp=True)``; plain ``A_dagger`` is a CG
    least-squares solve in deepinv 0.5). deepinv has no windowed filters, so the others filter the
    sinogram along the detector axis with ramp x window (:func:`fbp_filter`) and back-project with
    ``physics.A_adjoint`` under the same scaling as ``physics.fbp``; works for ``normalize`` True
    or False. Not clipped: FBP is linear, and callers may want its negative values.
    """
    y, physics = _on_native_detector(y, physics)
    if not isinstance(physics, Tomography):
        raise TypeError(f"fbp needs a deepinv Tomography, got {type(physics).__name__}")
    if physics.fan_beam:
        raise NotImplementedError("fbp supports parallel-beam Tomography only (fan_beam=False)")
    with torch.no_grad():
        if filter == "ramp":
            return physics.A_dagger(y, fbp=True) * _angular_coverage(physics)
        return _filtered_backprojection(y, physics, filter)


def ct_tv(
    y: Tensor, physics: Tomography, lam_rel: float, n_iter: int = 200, filter: str = CT_DEFAULTS["fbp"]["filter"]
) -> Tensor:
    """TV reconstruction for CT, started from the FBP, with ``lam = lam_rel ||A||^2``.

    Scaling ``lam`` by ``||A||^2`` gives the same minimiser for ``Tomography(normalize=True)``
    (``||A|| = 1``) and ``normalize=False`` (``||A|| ~ 61`` at 128 x 128, 30 angles): dividing A
    and y by a constant c divides the data term by c^2.
    """
    x0 = fbp(y, physics, filter).clamp(0.0, 1.0)
    big_l = operator_sqnorm(physics, x0)
    return tv_reconstruction(y, physics, lam_rel * big_l, n_iter=n_iter, x0=x0, sqnorm=big_l)


# --- tuning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneResult:
    """Best parameters of a grid search, their mean PSNR (dB), and every grid point's score."""

    best: dict[str, Any]
    best_psnr: float
    table: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def tune(
    method: Callable[..., Tensor],
    images: Tensor,
    make_measurements: Callable[[Tensor], tuple[Tensor, LinearPhysics]],
    grid: Mapping[str, Sequence[Any]],
) -> TuneResult:
    """Grid search of ``method(y, physics, **params)`` maximising mean PSNR on ``images``.

    ``make_measurements(images) -> (y, physics)`` is called once, so every grid point sees the same
    noise. ``grid`` maps parameter names to candidate values; all combinations are tried.
    Outputs are clipped to [0, 1] before scoring. Tune on training images, never held-out ones.
    """
    y, physics = make_measurements(images)
    names = list(grid)
    table: list[tuple[dict[str, Any], float]] = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        with torch.no_grad():
            score = float(psnr(method(y, physics, **params).clamp(0, 1), images).mean())
        table.append((params, score))
    best, best_psnr = max(table, key=lambda row: row[1])
    return TuneResult(best=best, best_psnr=best_psnr, table=table)


# --- defaults per problem -------------------------------------------------------------------


def baselines_for(kind: str, noise_sigma: float) -> dict[str, Baseline]:
    """The classical reconstructions for an operator kind, as ``fn(y, physics) -> x``.

    ``blur``: Wiener and TV with ``DEBLUR_DEFAULTS``; ``ct``: FBP and TV with ``CT_DEFAULTS``
    (``noise_sigma`` relative to the sinogram maximum); ``inpainting``, ``superres``, ``mri``:
    Tikhonov and TV with ``OTHER_DEFAULTS``; any other kind: Tikhonov and TV with the deblurring
    values. Away from the tuned noise level the weights follow the power laws fitted on DEBLUR-G
    (nsr ∝ sigma, TV lam ∝ sigma^(5/3)); for the other kinds that law is an untested analogy.
    Defaults tuned for one operator are a starting point for others: re-tune with :func:`tune`.
    """
    if kind == "ct":
        r_ct = max(noise_sigma, 1e-6) / _CT_SIGMA
        lam_rel = CT_DEFAULTS["tv"]["lam_rel"] * r_ct**_TV_EXPONENT
        n_ct: int = CT_DEFAULTS["tv"]["n_iter"]
        window: str = CT_DEFAULTS["fbp"]["filter"]
        return {
            "fbp": lambda y, physics: fbp(y, physics, window),
            "tv": lambda y, physics: ct_tv(y, physics, lam_rel, n_ct, window),
        }
    r = max(noise_sigma, 1e-6) / _DEBLUR_SIGMA  # every registered problem but CT is tuned at 0.01
    tuned = OTHER_DEFAULTS.get(kind, DEBLUR_DEFAULTS)
    quadratic = (tuned["wiener"]["nsr"] if kind == "blur" else tuned["tikhonov"]["lam"]) * r**_NSR_EXPONENT
    lam = tuned["tv"]["lam"] * r**_TV_EXPONENT
    n_iter: int = tuned["tv"]["n_iter"]
    methods: dict[str, Baseline] = {}
    if kind == "blur":
        methods["wiener"] = lambda y, physics: wiener(y, physics, quadratic)
    else:
        methods["tikhonov"] = lambda y, physics: tikhonov(y, physics, quadratic)
    methods["tv"] = lambda y, physics: tv_reconstruction(y, physics, lam, n_iter=n_iter)
    return methods
