"""Simulate measurements ``y = noise(A x)`` from a noise definition, reproducibly."""

from __future__ import annotations

import torch
from deepinv.physics import GaussianNoise, Inpainting, LinearPhysics
from deepinv.physics.noise import NoiseModel
from torch import Tensor

from jfb_inverse.problems.config import NoiseConfig
from jfb_inverse.problems.operators import CartesianMRI


def noise_sigma(noise: NoiseConfig, clean: Tensor) -> Tensor:
    """Per-sample Gaussian standard deviation, shape (B, 1, ...): absolute, or relative to max |A x|."""
    shape = (clean.shape[0],) + (1,) * (clean.dim() - 1)
    if noise.relative:
        return noise.sigma * clean.flatten(1).abs().amax(dim=1).view(shape)
    return torch.full(shape, noise.sigma, device=clean.device, dtype=clean.dtype)


def noise_std_bound(noise: NoiseConfig, y: Tensor) -> float:
    """About the largest standard deviation of the noise on a measurement ``y`` (C, ...): at its
    brightest value, the Gaussian part (:func:`noise_sigma`) plus Poisson's ``sqrt(A x / gain)``."""
    if not y.numel():
        return 0.0
    std = float(noise_sigma(noise, y[None]).max())
    if noise.kind == "poisson":
        std += (float(y.abs().max()) / noise.gain) ** 0.5
    return std


def simulate(x: Tensor, physics: LinearPhysics, noise: NoiseConfig, generator: torch.Generator | None = None) -> Tensor:
    """Measurements of the clean images ``x`` (B, C, H, W): ``A x`` plus noise drawn from ``generator``."""
    return add_noise(physics.A(x), noise, generator, measured_entries(physics))


def add_noise(
    clean: Tensor, noise: NoiseConfig, generator: torch.Generator | None = None, measured: Tensor | None = None
) -> Tensor:
    """Clean measurements ``A x`` with the noise of ``noise`` drawn from ``generator``, zero where
    ``measured`` (broadcastable) is 0."""
    noisy = clean
    if noise.kind == "poisson":
        noisy = torch.poisson(clean.clamp_min(0) * noise.gain, generator=generator) / noise.gain
    if noise.sigma == 0:
        return noisy
    eps = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    if measured is not None:  # drawn everywhere first, so the noise stream is the same with or without
        eps = eps * measured.to(eps.dtype)
    return noisy + noise_sigma(noise, clean) * eps


class ProblemNoise(NoiseModel):
    """A problem's noise (relative Gaussian, Poisson) as a deepinv ``NoiseModel``, so that
    ``physics(x)`` in a deepinv pipeline draws the noise that :func:`simulate` draws: the same
    values from the same random state. deepinv's ``GaussianNoise`` covers absolute Gaussian noise.
    The built-in physics mask the entries they do not measure (``LinearPhysics.noise``).

    As deepinv's noise models do, it takes ``seed=`` (reproducible draws) and new parameters
    (``sigma=``, ``gain=``: one value for the batch) through ``forward`` and
    ``update_parameters``, which ``physics.update(...)`` calls."""

    def __init__(self, noise: NoiseConfig, rng: torch.Generator | None = None) -> None:
        super().__init__(rng=rng)
        self.config = noise

    def update_parameters(
        self, sigma: float | Tensor | None = None, gain: float | Tensor | None = None, **_: object
    ) -> None:
        """Set ``sigma`` and ``gain`` (validated as a definition's noise section)."""
        new = {k: v for k, v in (("sigma", sigma), ("gain", gain)) if v is not None}
        for key, value in new.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"ProblemNoise takes one {key} for the batch, got a tensor of shape {tuple(value.shape)}; "
                        "use deepinv's GaussianNoise for a sigma per sample"
                    )
                new[key] = float(value)
        if new:
            self.config = NoiseConfig.model_validate({**self.config.model_dump(), **new})

    def forward(self, y: Tensor, seed: int | None = None, **kwargs: object) -> Tensor:
        """``y`` (clean measurements) with noise; ``seed`` makes the draw reproducible."""
        self.update_parameters(**kwargs)  # type: ignore[arg-type]
        generator = self.rng
        if seed is not None:
            if generator is None:  # deepinv would ignore the seed (with a warning)
                generator = torch.Generator(y.device)
            generator.manual_seed(seed)
        return add_noise(y, self.config, generator)


def measured_entries(physics: LinearPhysics) -> Tensor | None:
    """Where a masking operator measures at all (kept pixels, sampled k-space), broadcastable to its
    measurements; ``None`` for operators that measure everywhere. Entries it does not measure stay
    zero, noise included, as deepinv's own ``Inpainting`` and ``MRI`` noise them (``A^T`` ignores
    them either way, so reconstructions are the same). A user's operator measures everywhere, as
    its own ``physics(x)`` does: an attribute of its that happens to be called ``measured`` means
    nothing here."""
    if isinstance(physics, Inpainting):
        return physics.mask
    if isinstance(physics, CartesianMRI):
        return physics.measured
    return None


def attach_noise_model(physics: LinearPhysics, noise: NoiseConfig) -> LinearPhysics:
    """Set deepinv's ``noise_model`` so that ``physics(x)`` in a deepinv pipeline adds the problem's
    noise (deepinv's ``GaussianNoise`` for absolute Gaussian noise, :class:`ProblemNoise` otherwise)."""
    absolute = noise.kind == "gaussian" and not noise.relative
    physics.noise_model = GaussianNoise(sigma=noise.sigma) if absolute else ProblemNoise(noise)
    return physics
