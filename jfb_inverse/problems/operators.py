"""Build deepinv physics (the forward operator ``A``) from an operator definition and an image size.

Each operator kind has one builder ``(definition, img_size, device) -> LinearPhysics``; the
physics carries no noise model of its own (noise is applied by :mod:`jfb_inverse.problems.noise`,
which can scale it per sample), except that ``noise_model`` is set for deepinv pipelines that call
``physics(x)`` themselves.

Measurement shapes (no batch dimension) for images of shape ``(C, H, W)``:

- ``blur``, ``inpainting``: ``(C, H, W)``.
- ``ct``: sinograms ``(C, detectors, angles)``; ``H == W`` and, without ``operator.detectors``,
  ``detectors = ceil(sqrt(2) W)`` (deepinv's parallel beam covering the image diagonal).
- ``superres``: ``(C, H / factor, W / factor)``.
- ``mri``: k-space ``(2 C, H, W)``: real and imaginary parts of each image channel's centred,
  orthonormal 2-D FFT, lines not sampled set to zero (for one channel, deepinv's ``(2, H, W)``).
- ``custom``: whatever the user's operator returns (see :mod:`jfb_inverse.problems.custom`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepinv.physics import MRI, BlurFFT, Downsampling, Inpainting, LinearPhysics, Tomography
from deepinv.physics.functional.blur import gaussian_blur
from torch import Tensor

from jfb_inverse.errors import ConfigError
from jfb_inverse.problems.config import (
    NEGATIVE_KERNEL_SLACK,
    BlurOperator,
    CustomOperator,
    InpaintingOperator,
    MRIOperator,
    ProblemConfig,
    SuperResOperator,
    TomographyOperator,
)

ImageSize = tuple[int, int, int]
Builder = Callable[[Any, ImageSize, torch.device], LinearPhysics]
_BUILDERS: dict[str, Builder] = {}
# Measurement shape (without batch) -> image shape (C, H, W), per operator kind.
_IMAGE_SHAPES: dict[str, Callable[[Any, tuple[int, ...]], ImageSize]] = {}


def register_operator(
    kind: str, builder: Builder, image_shape: Callable[[Any, tuple[int, ...]], ImageSize] | None = None
) -> None:
    """Register how to build the physics of an operator kind (and infer the image shape from y)."""
    _BUILDERS[kind] = builder
    if image_shape is not None:
        _IMAGE_SHAPES[kind] = image_shape


def build_physics(operator: Any, img_size: ImageSize, device: torch.device | str = "cpu") -> LinearPhysics:
    """The deepinv physics of ``operator`` for images of shape ``img_size = (C, H, W)``."""
    try:
        builder = _BUILDERS[operator.kind]
    except KeyError:
        raise ConfigError(f"no builder for operator kind {operator.kind!r}") from None
    return builder(operator, tuple(int(s) for s in img_size), torch.device(device))  # type: ignore[arg-type]


def image_shape_for(operator: Any, measurement_shape: tuple[int, ...]) -> ImageSize:
    """The image shape ``(C, H, W)`` whose measurements have ``measurement_shape`` (no batch dim)."""
    if operator.kind not in _IMAGE_SHAPES:
        return tuple(int(s) for s in measurement_shape)  # type: ignore[return-value]
    return _IMAGE_SHAPES[operator.kind](operator, tuple(int(s) for s in measurement_shape))


# --- blur ---------------------------------------------------------------------------------


def motion_kernel(length: int, angle: float) -> torch.Tensor:
    """A normalised linear motion-blur kernel of ``length`` px at ``angle`` degrees, shape (1, 1, k, k)."""
    k = length if length % 2 == 1 else length + 1
    c = k // 2
    yy, xx = torch.meshgrid(torch.arange(k) - c, torch.arange(k) - c, indexing="ij")
    theta = math.radians(angle)
    # Distance of each pixel centre to the segment through the centre: anti-aliased line.
    along = xx * math.cos(theta) - yy * math.sin(theta)
    across = xx * math.sin(theta) + yy * math.cos(theta)
    weight = (1 - across.abs()).clamp_min(0) * ((length / 2 + 0.5) - along.abs()).clamp(0, 1)
    weight = weight.float()
    return (weight / weight.sum()).view(1, 1, k, k)


def load_kernel(path: str | Path) -> torch.Tensor:
    """A blur kernel from a .npy or image file, normalised to sum 1, shape (1, 1, h, w)."""
    p = Path(path)
    if not p.is_file():
        where = "" if p.is_absolute() else f" (looked for {str(p.resolve())!r})"
        raise ConfigError(f"kernel file {str(p)!r} not found{where}; give a .npy or .png file with operator.path")
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            from skimage import io

            from jfb_inverse.datasets.images import without_alpha

            arr = io.imread(p)
            if arr.ndim == 3:
                # Averaged in, an alpha channel would add its 255s to every entry of the kernel.
                arr = without_alpha(arr).mean(axis=-1)
    except Exception as exc:
        raise ConfigError(f"kernel file {str(p)!r} could not be read ({exc}); use a 2-D .npy or a PNG") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or not np.isfinite(arr).all() or arr.sum() <= 0:
        raise ConfigError(f"kernel file {str(p)!r} must hold a finite 2-D array with a positive sum")
    if arr.min() < -NEGATIVE_KERNEL_SLACK * arr.max():
        raise ConfigError(
            f"kernel file {str(p)!r} has negative entries (down to {arr.min():.3g}); a blur kernel is non-negative "
            "(clip it at 0), and one summing to nearly 0 would be scaled up without bound"
        )
    return _normalised_kernel(arr)


def _normalised_kernel(arr: np.ndarray) -> torch.Tensor:
    """A checked 2-D float64 kernel, its rounding-level negatives set to 0, divided by its sum, as a
    (1, 1, h, w) float32 tensor."""
    arr = np.clip(arr, 0.0, None)
    kernel = torch.from_numpy(arr / arr.sum()).float()
    return kernel.view(1, 1, *kernel.shape)


def blur_kernel(op: BlurOperator) -> torch.Tensor:
    """The (1, 1, h, w) kernel of a blur definition."""
    if op.kernel == "gaussian":
        return gaussian_blur(sigma=(op.sigma, op.sigma))
    if op.kernel == "motion":
        return motion_kernel(op.length, op.angle)
    if op.kernel == "box":
        return torch.full((1, 1, op.size, op.size), 1.0 / op.size**2)
    if op.values is not None:  # embedded by training: the file is not needed (nor read) any more
        return _normalised_kernel(np.asarray(op.values, dtype=np.float64))
    return load_kernel(op.path or "")


def with_embedded_kernel(cfg: ProblemConfig) -> ProblemConfig:
    """``cfg`` with a ``file`` blur kernel's numbers in ``operator.values`` (read from its file once),
    so that what is saved with a run reconstructs without the file. Other definitions as they are."""
    op = cfg.operator
    if op.kind != "blur" or op.kernel != "file" or op.values is not None:
        return cfg
    values = load_kernel(op.path or "")[0, 0].tolist()
    return cfg.model_copy(update={"operator": op.model_copy(update={"values": values})})


def _build_blur(op: BlurOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    kernel = blur_kernel(op)
    if kernel.shape[-2] > img_size[-2] or kernel.shape[-1] > img_size[-1]:
        raise ConfigError(
            f"image of {img_size[-2]}x{img_size[-1]} px is smaller than the {kernel.shape[-2]}x{kernel.shape[-1]} "
            "blur kernel; use a larger image or a smaller kernel"
        )
    return BlurFFT(img_size=img_size, filter=kernel, device=device)


register_operator("blur", _build_blur)


def _check_square(kind: str, img_size: ImageSize) -> int:
    if img_size[1] != img_size[2]:
        raise ConfigError(
            f"{kind} needs square images, got {img_size[1]}x{img_size[2]} px; crop or pad the image to W x W"
        )
    return img_size[2]


# --- CT -----------------------------------------------------------------------------------


def native_detector_count(width: int) -> int:
    """Detector cells of deepinv's parallel-beam ``Tomography(circle=False)`` for ``width x width``
    images: the image is zero-padded to its diagonal, ``ceil(sqrt(2) * width)`` px."""
    return math.ceil(math.sqrt(2) * width)


def width_for_detectors(detectors: int) -> int | None:
    """The image width whose native detector count is ``detectors``, or None when there is none.

    ``ceil(sqrt(2) W)`` grows by more than 1 per unit of ``W``, so at most one width matches.
    """
    guess = int(detectors / math.sqrt(2))
    for width in (guess - 1, guess, guess + 1, guess + 2):
        if width > 0 and native_detector_count(width) == detectors:
            return width
    return None


def resampling_matrix(n_in: int, n_out: int) -> Tensor:
    """A (n_out, n_in) linear map between two detectors covering the same extent with n_in and n_out cells.

    Upsampling interpolates linearly between cell centres; downsampling averages the input cells
    under each output cell (area weights), so fine detail is integrated rather than aliased. Either
    way the map is an explicit matrix, so its adjoint is its exact transpose.
    """
    if n_out >= n_in:
        pos = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = pos - lo
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        m.index_put_((rows, lo), 1 - frac, accumulate=True)
        m.index_put_((rows, hi), frac, accumulate=True)
        return m.float()
    edges_in = torch.arange(n_in + 1, dtype=torch.float64)
    edges_out = torch.arange(n_out + 1, dtype=torch.float64) * n_in / n_out
    left = torch.maximum(edges_out[:-1, None], edges_in[None, :-1])
    right = torch.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = (right - left).clamp_min(0)
    return (overlap / (n_in / n_out)).float()


class DetectorResampledTomography(LinearPhysics):
    """deepinv ``Tomography`` followed by a linear resampling of the detector axis to ``detectors`` cells.

    ``A(x) = R . Radon(x)`` and ``A^T(y) = Radon^T(R^T y)`` with ``R`` an explicit matrix
    (:func:`resampling_matrix`), so the adjoint is exact. :meth:`fbp` interpolates the sinogram back
    to the native detector and runs deepinv's filtered back-projection.
    """

    def __init__(self, tomography: Tomography, detectors: int, img_size: ImageSize) -> None:
        super().__init__(img_size=img_size)
        self.tomography = tomography
        native = native_detector_count(tomography.img_width)
        device = tomography.angles.device
        self.register_buffer("resample", resampling_matrix(native, detectors).to(device))
        self.register_buffer("to_native", resampling_matrix(detectors, native).to(device))

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """Sinogram (B, C, detectors, angles) of images (B, C, W, W)."""
        return torch.einsum("od,bcda->bcoa", self.resample, self.tomography.A(x))

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """Back-projection of the (transposed) resampled sinogram."""
        return self.tomography.A_adjoint(torch.einsum("od,bcoa->bcda", self.resample, y))

    def fbp(self, y: Tensor, **kwargs: Any) -> Tensor:
        """Filtered back-projection (ramp filter) after interpolating back to the native detector."""
        return self.tomography.fbp(torch.einsum("do,bcoa->bcda", self.to_native, y), **kwargs)


def _build_ct(op: TomographyOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    width = _check_square("CT", img_size)
    angles = torch.arange(op.angles, dtype=torch.float32) * (op.angular_range / op.angles)
    # circle=False: the whole square image is projected (phantoms reach the corners);
    # adjoint_via_backprop: the exact adjoint (deepinv's unfiltered back-projection is only approximate).
    tomo = Tomography(
        angles=angles.to(device),
        img_width=width,
        circle=False,
        normalize=True,
        adjoint_via_backprop=True,
        device=device,
    )
    tomo.img_size = img_size
    if op.detectors is None or op.detectors == native_detector_count(width):
        return tomo
    return DetectorResampledTomography(tomo, op.detectors, img_size)


def _ct_image_shape(op: TomographyOperator, shape: tuple[int, ...]) -> ImageSize:
    if len(shape) != 3:
        raise ConfigError(f"a sinogram must have shape (C, detectors, angles), got {shape}")
    channels, detectors, _ = shape
    if op.img_width is not None:
        return channels, op.img_width, op.img_width
    if op.detectors is not None:
        raise ConfigError(
            "the image width of a sinogram cannot be inferred when operator.detectors is set; set operator.img_width"
        )
    width = width_for_detectors(detectors)
    if width is None:
        raise ConfigError(
            f"no square image gives {detectors} detector cells (ceil(sqrt(2) W)); "
            "check the sinogram layout (C, detectors, angles) or set operator.img_width"
        )
    return channels, width, width


# --- inpainting ----------------------------------------------------------------------------


def inpainting_mask(op: InpaintingOperator, height: int, width: int) -> Tensor:
    """A (1, H, W) binary mask keeping exactly ``round((1 - missing) H W)`` pixels, fixed by ``mask_seed``
    and the image size (drawn on the CPU so that every device gets the same mask)."""
    keep = round((1 - op.missing) * height * width)
    if keep == 0:  # nothing measured: ||A|| = 0 and no step size or reconstruction exists
        raise ConfigError(
            f"operator.missing = {op.missing:g} keeps no pixel of a {height}x{width} image; use a larger image "
            "or a smaller operator.missing"
        )
    order = torch.randperm(height * width, generator=torch.Generator().manual_seed(op.mask_seed))
    mask = torch.zeros(height * width)
    mask[order[:keep]] = 1.0
    return mask.view(1, height, width)


def _build_inpainting(op: InpaintingOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    # One (1, H, W) mask for all channels: a pixel is missing in every colour.
    return Inpainting(img_size=img_size, mask=inpainting_mask(op, img_size[1], img_size[2]), device=device)


# --- super-resolution ----------------------------------------------------------------------


def _build_superres(op: SuperResOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    _, height, width = img_size
    if height % op.factor or width % op.factor:
        raise ConfigError(
            f"super-resolution x{op.factor} needs image sides divisible by {op.factor}, got {height}x{width} px; "
            "crop the image"
        )
    kernel = gaussian_blur(sigma=(op.sigma, op.sigma))
    if kernel.shape[-2] > height or kernel.shape[-1] > width:
        least = [-(-side // op.factor) for side in kernel.shape[-2:]]  # measurement sides, rounded up
        raise ConfigError(
            f"image of {height}x{width} px (for a measurement of {height // op.factor}x{width // op.factor} px at "
            f"x{op.factor}) is smaller than the {kernel.shape[-2]}x{kernel.shape[-1]} blur kernel (the least is a "
            f"{least[0]}x{least[1]} px measurement, a {least[0] * op.factor}x{least[1] * op.factor} px image); "
            "use a larger image or a smaller operator.sigma"
        )
    # Circular padding keeps deepinv's closed-form (FFT) prox, so the proximal step needs no CG.
    physics = Downsampling(
        img_size=img_size, filter=kernel.to(device), factor=op.factor, padding="circular", device=device
    )
    physics.img_size = img_size
    return physics


def _superres_image_shape(op: SuperResOperator, shape: tuple[int, ...]) -> ImageSize:
    if len(shape) != 3:
        raise ConfigError(f"a low-resolution image must have shape (C, H, W), got {shape}")
    return shape[0], shape[1] * op.factor, shape[2] * op.factor


# --- MRI ------------------------------------------------------------------------------------


def cartesian_mask(op: MRIOperator, height: int, width: int) -> Tensor:
    """A (H, W) Cartesian k-space mask (centred spectrum): ``round(W / acceleration)`` columns, of which
    ``round(W * center_fraction)`` around the centre and the rest drawn with ``mask_seed``."""
    n_keep = max(1, round(width / op.acceleration))
    n_center = min(n_keep, max(1, round(width * op.center_fraction)))
    start = width // 2 - n_center // 2
    columns = torch.zeros(width, dtype=torch.bool)
    columns[start : start + n_center] = True
    others = torch.nonzero(~columns).flatten()
    pick = torch.randperm(len(others), generator=torch.Generator().manual_seed(op.mask_seed))
    columns[others[pick[: n_keep - n_center]]] = True
    return columns.float().expand(height, width).clone()


def _negated_frequencies(m: Tensor) -> Tensor:
    """``m(-k)`` for a centred (fftshifted) spectrum: index ``i`` holds frequency ``i - N//2``."""
    for dim in (-2, -1):
        n = m.shape[dim]
        idx = (2 * (n // 2) - torch.arange(n, device=m.device)) % n
        m = m.index_select(dim, idx)
    return m


class CartesianMRI(LinearPhysics):
    """Single-coil Cartesian MRI on real images: ``A x = M F (x + 0 i)`` per channel (deepinv ``MRI``).

    Images are real ``(B, C, H, W)``; measurements are ``(B, 2C, H, W)`` (real and imaginary parts of
    each channel's k-space). ``A^T y = Re(F^H M y)`` is the exact adjoint for real images. For real
    ``x``, ``A^T A = F^H S F`` with ``S(k) = (M(k) + M(-k)) / 2``, so :meth:`prox_l2` is in closed form
    (FFT) and the proximal consistency step needs no conjugate gradient.
    """

    def __init__(self, mask: Tensor, img_size: ImageSize, device: torch.device | str = "cpu") -> None:
        super().__init__(img_size=img_size, device=device)
        self.mri = MRI(mask=mask.to(device), img_size=tuple(mask.shape), device=device)
        self.register_buffer("weights", 0.5 * (mask + _negated_frequencies(mask)).to(device))

    @property
    def measured(self) -> Tensor:
        """(1, 1, H, W): 1 where k-space is sampled (the same in every channel, real and imaginary)."""
        return self.mri.mask[:, :1]

    def noise(self, x: Tensor, **kwargs: Any) -> Tensor:
        """``physics(x)``'s noise, zero on the k-space not sampled (as :func:`~jfb_inverse.problems.noise.simulate`
        and deepinv's ``MRI`` draw it)."""
        return self.measured * self.noise_model(x, **kwargs)

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """Masked k-space (B, 2C, H, W) of real images (B, C, H, W)."""
        b, c, h, w = x.shape
        z = torch.stack([x, torch.zeros_like(x)], dim=2).reshape(b * c, 2, h, w)
        return self.mri.A(z).reshape(b, 2 * c, h, w)

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """Real part of the zero-filled inverse FFT, (B, C, H, W)."""
        b, c2, h, w = y.shape
        x = self.mri.A_adjoint(y.reshape(b * c2 // 2, 2, h, w))[:, 0]
        return x.reshape(b, c2 // 2, h, w)

    def prox_l2(self, z: Tensor, y: Tensor, gamma: Tensor | float, **kwargs: Any) -> Tensor:
        """``(I + gamma A^T A)^{-1} (z + gamma A^T y)`` by FFT (deepinv's convention for ``prox_l2``)."""
        rhs = z + gamma * self.A_adjoint(y)
        spectrum = self.mri.fft(torch.complex(rhs, torch.zeros_like(rhs)))
        return self.mri.ifft(spectrum / (1 + gamma * self.weights)).real


def _build_mri(op: MRIOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    return CartesianMRI(cartesian_mask(op, img_size[1], img_size[2]), img_size, device)


def _mri_image_shape(op: MRIOperator, shape: tuple[int, ...]) -> ImageSize:
    if len(shape) != 3 or shape[0] % 2:
        raise ConfigError(
            f"MRI k-space must have shape (2C, H, W) (real and imaginary part per image channel, a .npy array as "
            f"`simulate` writes it), got {shape}"
        )
    return shape[0] // 2, shape[1], shape[2]


# --- custom ---------------------------------------------------------------------------------


def _build_custom(op: CustomOperator, img_size: ImageSize, device: torch.device) -> LinearPhysics:
    # Imported lazily: custom.py imports the user's code and needs nothing at package import.
    from jfb_inverse.problems.custom import build_custom

    return build_custom(op, img_size, device)


def _custom_image_shape(op: CustomOperator, shape: tuple[int, ...]) -> ImageSize:
    from jfb_inverse.problems.custom import custom_image_shape

    return custom_image_shape(op, shape)


register_operator("ct", _build_ct, _ct_image_shape)
register_operator("inpainting", _build_inpainting)
register_operator("superres", _build_superres, _superres_image_shape)
register_operator("mri", _build_mri, _mri_image_shape)
register_operator("custom", _build_custom, _custom_image_shape)
