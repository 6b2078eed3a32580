"""Typed, validated problem definitions (pydantic): operator, noise, data, model, solver, training.

Every section forbids unknown keys, so a typo in a config file is an error, never a silently
ignored setting. A :class:`ProblemConfig` is the whole, resolved definition of a run; it is written
next to every checkpoint and can be given back with ``--config``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

# The registered problem "custom" names this placeholder until the user gives an operator.
PLACEHOLDER_TARGET = "path/to/ops.py:ClassName"


def _require_finite(value: Any, where: str) -> None:
    """Raise ``ValueError`` for an inf/NaN or a null anywhere inside ``value`` (nested dicts and
    lists): neither survives the checkpoint's JSON and ``problem.toml``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number (got {value!r})")
    if value is None:
        raise ValueError(f"{where} is null, which problem.toml cannot store; give a value or leave the key out")
    if isinstance(value, dict):
        for key, item in value.items():
            _require_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _require_finite(item, f"{where}[{i}]")


#: Seeds: torch and numpy generators take 64-bit seeds, and phantom and dead-leaves streams use
#: ``seed * 1,000,003 + draw``; 32 bits keep every derived seed in range.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


#: Negative kernel entries down to this fraction of the largest are rounding (an FFT's, an estimated
#: kernel's) and are set to 0; larger ones are refused.
NEGATIVE_KERNEL_SLACK = 1e-6


class _Strict(BaseModel):
    # inf/NaN would pass the range checks but not survive the checkpoint's JSON.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True)


class BlurOperator(_Strict):
    """Convolution with circular boundary (deepinv ``BlurFFT``).

    ``kernel``: ``gaussian`` (``sigma`` px), ``motion`` (``length`` px at ``angle`` degrees), ``box``
    (``size`` px) or ``file`` (a .npy or .png kernel at ``path``, normalised to sum 1). ``values``:
    a ``file`` kernel's own numbers (rows of floats, normalised to sum 1). Training embeds them
    when it starts, so that a checkpoint reconstructs without the file (on another machine, after
    the file moved); when they are present they are the kernel, and ``path`` only says where it
    came from. They can also be written into a definition instead of a ``path``.
    """

    kind: Literal["blur"] = "blur"
    kernel: Literal["gaussian", "motion", "box", "file"] = "gaussian"
    sigma: PositiveFloat = 2.0
    length: PositiveInt = 9
    angle: float = 0.0
    size: PositiveInt = 5
    path: str | None = None
    values: list[list[float]] | None = None

    @model_validator(mode="after")
    def _file_needs_path(self) -> BlurOperator:
        if self.kernel == "file" and not self.path and self.values is None:
            raise ValueError("kernel 'file' needs operator.path (a .npy or .png kernel) or operator.values")
        if self.values is not None:
            if self.kernel != "file":
                raise ValueError(f"operator.values is a 'file' kernel's numbers; kernel is {self.kernel!r}")
            widths = {len(row) for row in self.values}
            if not self.values or len(widths) != 1 or 0 in widths:
                raise ValueError("operator.values must be rows of equal, non-zero length (a 2-D kernel)")
            if not all(math.isfinite(v) for row in self.values for v in row) or sum(map(sum, self.values)) <= 0:
                raise ValueError("operator.values must be finite numbers with a positive sum")
            low, high = min(min(row) for row in self.values), max(max(row) for row in self.values)
            if low < -NEGATIVE_KERNEL_SLACK * high:
                raise ValueError("operator.values has negative entries; a blur kernel is non-negative (clip it at 0)")
        return self


class TomographyOperator(_Strict):
    """Parallel-beam CT (deepinv ``Tomography``): ``angles`` views evenly over ``angular_range`` degrees.

    Sinograms are ``(C, detectors, angles)``. ``detectors``: detector cells across the image diagonal
    (default: deepinv's ``ceil(sqrt(2) W)`` for ``W x W`` images); another count resamples the detector
    axis linearly. ``img_width``: the image width of a sinogram; only needed to reconstruct sinograms
    when ``detectors`` is set (otherwise it is inferred from the detector count).
    """

    kind: Literal["ct"] = "ct"
    angles: PositiveInt = 30
    angular_range: Annotated[float, Field(gt=0, le=180)] = 180.0
    detectors: PositiveInt | None = None
    img_width: PositiveInt | None = None


class InpaintingOperator(_Strict):
    """Random pixel mask keeping a fraction ``1 - missing`` of the pixels (fixed by ``mask_seed``)."""

    kind: Literal["inpainting"] = "inpainting"
    missing: Annotated[float, Field(gt=0, lt=1)] = 0.5
    mask_seed: Seed = 0


class SuperResOperator(_Strict):
    """Gaussian blur (``sigma`` px) then downsampling by ``factor`` (2 or 4)."""

    kind: Literal["superres"] = "superres"
    factor: Literal[2, 4] = 2
    sigma: PositiveFloat = 1.0


class MRIOperator(_Strict):
    """Single-coil Cartesian MRI: keep 1/``acceleration`` of the k-space lines, the centre fully sampled."""

    kind: Literal["mri"] = "mri"
    acceleration: Annotated[int, Field(ge=2, le=16)] = 4
    center_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.08
    mask_seed: Seed = 0


class CustomOperator(_Strict):
    """A user's operator: ``target`` is ``path/to/file.py:ClassName`` or ``package.module:ClassName``.

    ``args`` are passed to the constructor as keywords. The class may be a deepinv
    ``LinearPhysics`` or any object with ``A`` and ``A_adjoint`` methods. ``img_size`` (``[C, H, W]``)
    is the image shape of a measurement, used to reconstruct measurements whose shape differs from
    the image's (unless the class has an ``image_shape`` method); by default the shapes are equal.
    """

    kind: Literal["custom"] = "custom"
    target: str
    args: dict[str, Any] = Field(default_factory=dict)
    img_size: list[PositiveInt] | None = None

    @field_validator("img_size")
    @classmethod
    def _three_dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(value) != 3:
            raise ValueError(f"operator.img_size must be [C, H, W], got {value}")
        return value

    @field_validator("args")
    @classmethod
    def _finite_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Free-form values escape allow_inf_nan; inf/NaN would not survive the checkpoint's JSON.
        _require_finite(value, "operator.args")
        return value

    @field_validator("target")
    @classmethod
    def _has_class(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError(f"operator target {value!r} must look like 'path/to/ops.py:ClassName' or 'pkg.mod:Class'")
        return value


Operator = Annotated[
    BlurOperator | TomographyOperator | InpaintingOperator | SuperResOperator | MRIOperator | CustomOperator,
    Field(discriminator="kind"),
]


class NoiseConfig(_Strict):
    """Measurement noise: additive Gaussian (``sigma``, absolute or relative to each clean
    measurement's maximum) or Poisson (``gain``: photon count scale, then Gaussian ``sigma`` on top)."""

    kind: Literal["gaussian", "poisson"] = "gaussian"
    sigma: Annotated[float, Field(ge=0)] = 0.01
    relative: bool = False
    gain: PositiveFloat = 1000.0


class DataConfig(_Strict):
    """Training and evaluation data.

    ``source``: ``builtin`` (scikit-image's bundled images, fixed split), ``phantoms`` (random
    ellipses, fresh each step), ``folder`` (``path``: a folder of PNG/JPEG/TIFF/BMP/GIF/WebP images) or ``mixed``
    (phantoms and builtin images). Evaluation always uses the held-out split (``eval_size`` px).
    ``dead_leaves``: the fraction of each image batch drawn from synthetic dead-leaves images
    (occluding disks with natural-image statistics, a fixed bank generated from the seed).
    ``scales``: the resolutions at which training images are used, as fractions of their own
    (1.0: native); a patch picks an (image, scale) pair uniformly, and a scale that would make an
    image smaller than a patch is skipped for it. The default keeps native detail and adds the
    coarser statistics of the 128 px evaluation images (central squares shrunk by 0.25-0.42);
    dropping native resolution did not help at the default budget (README, "Deblurring").
    """

    source: Literal["builtin", "phantoms", "folder", "mixed"] = "builtin"
    path: str | None = None
    dead_leaves: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    channels: Literal[1, 3] = 1
    patch_size: Annotated[int, Field(ge=16)] = 64
    eval_size: Annotated[int, Field(ge=16)] = 128
    scales: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = Field(
        default_factory=lambda: [1.0, 0.5, 0.25]
    )

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataConfig:
        if self.source == "folder" and not self.path:
            raise ValueError("data.source 'folder' needs data.path (a folder of images), e.g. --data DIR")
        if self.dead_leaves > 0 and self.source == "phantoms":
            raise ValueError(
                "data.dead_leaves mixes synthetic images into image batches; use source 'builtin' or 'folder'"
            )
        return self


Equivariance = Literal["none", "rotations", "dihedral"]


class ModelConfig(_Strict):
    """The fixed-point map ``T`` and its learned regulariser ``D``.

    ``step``: ``prox`` (``T(u) = D(prox_{eta f}(u))``, HQS), ``gradient`` (``T(u) = D(u - eta A^T(Au - y))``,
    PGD) or ``ffpn`` (``T(u) = v - eta A^T(Av - y)``, ``v = D(u)``). ``eta`` is learned, starting at
    ``eta_init`` (in units of ``1/||A||^2`` for the gradient steps). ``init``: the starting point,
    ``tikhonov`` (closed form or CG, weight ``init_lam``) or ``adjoint`` (``A^T y``). ``arch``: the
    regulariser's CNN, ``dilated`` (``depth`` layers, dilations 1, 2, 4, ...) or ``unet`` (three scales).
    ``memory_format``: the layout of the regulariser's convolutions; ``auto`` is channels-last (NHWC)
    on the CPU and on CUDA GPUs with TF32 tensor cores (compute capability 8.0+), where the
    convolutions run faster in it (benchmarks/profile_hot_path.py, benchmarks/vs_deepinv.py), and
    PyTorch's default elsewhere. The weights and results are the same in either layout.
    ``equivariance``: at evaluation, ``D`` inside ``T`` is averaged over the four quarter-turns
    (``rotations``, the default) or the eight quarter-turns and flips (``dihedral``) of its input,
    at that many times the cost of an application of ``D``; ``none`` uses ``D`` as trained.
    Training is unaffected. ``rotations`` was chosen on validation images in neither split: +0.20 dB
    (deblur photos) and +0.14 dB (CT phantoms) over ``none`` with the shipped models; ``dihedral``
    scored no higher at twice the cost.
    ``input_injection``: ``D`` also sees the iteration's start (the Tikhonov or adjoint
    reconstruction, which depends on the measurement only) as extra input channels, as deep
    equilibrium models inject their input into every iteration. Off by default, so that
    definitions written before it existed (and the checkpoints that store them) keep their network.
    ``bias``: the regulariser's convolutions have biases. ``false`` makes ``N`` bias-free (Mohan et
    al., ICLR 2020): ``D(a v) = a D(v)`` for ``a > 0``, and with it the whole reconstruction scales
    with the measurement. On by default: bias-free scored higher on the deblur validation photos but
    lower on images with flat or dark backgrounds (README, "Deblurring").
    """

    step: Literal["prox", "gradient", "ffpn", "filtered"] = "prox"
    arch: Literal["dilated", "unet"] = "dilated"
    width: PositiveInt = 32
    depth: Annotated[int, Field(ge=2)] = 5
    spectral_norm: bool = False
    eta_init: PositiveFloat = 1.0
    learn_eta: bool = True
    init: Literal["tikhonov", "adjoint"] = "tikhonov"
    init_lam: PositiveFloat = 0.01
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    equivariance: Equivariance = "rotations"
    input_injection: bool = False
    bias: bool = True


StopRule = Literal["batch", "sample", "auto"]


class SolverConfig(_Strict):
    """The forward fixed-point solver (``anderson`` or ``picard``) and its stopping rule.

    ``cuda_graph``: on a CUDA device, record ``T`` once per solve as a CUDA graph and replay it
    (small images, where kernel launches bound an iteration; ignored on the CPU).
    ``stop`` (training) and ``eval_stop``: ``batch`` iterates a batch until its slowest sample
    converges; ``sample`` stops each sample at ``tol`` and, on the CPU, computes the regulariser for
    the samples still iterating only; ``auto`` is ``sample`` on the CPU and ``batch`` on CUDA
    (where the stop flags are read one iteration late, and freezing samples saves no work). For a
    batch of images at evaluation ``sample`` was 2.4x faster on the CPU with ``builtin:deblur``
    (benchmarks/per_sample_stop.py); in training it gained nothing, so training keeps ``batch``.
    One image at a time (the CLI) is the same either way.
    """

    name: Literal["anderson", "picard"] = "anderson"
    tol: PositiveFloat = 1e-3
    max_iter: PositiveInt = 30
    m: PositiveInt = 5
    alpha: Annotated[float, Field(gt=0, le=1)] = 1.0
    eval_tol: PositiveFloat = 1e-4
    eval_max_iter: PositiveInt = 100
    cuda_graph: bool = False
    stop: StopRule = "batch"
    eval_stop: StopRule = "auto"


#: Autocast precisions of the learned regulariser (``auto``: see :mod:`jfb_inverse.models.precision`).
Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: The step cap of a run whose time budget comes without a step count: the budget decides.
BUDGET_STEP_CAP = 1_000_000


class TrainingConfig(_Strict):
    """Optimisation: Adam (or Muon) with cosine decay; ``gradient`` picks the gradient strategy.

    ``optimizer``: ``adam`` trains every parameter with Adam at ``lr``; ``muon`` trains the
    regulariser's hidden layers with Muon at ``muon_lr`` (orthogonalised momentum, see
    :mod:`jfb_inverse.training.optim`) and the rest with Adam at ``lr``, under the same schedule.

    ``precision``: autocast dtype of the learned regulariser (``bf16``/``fp16``; ``auto``: bf16
    while training on a CPU with native bf16, fp32 otherwise and for reconstructions, see
    :mod:`jfb_inverse.models.precision`); the consistency
    step, the fixed-point residual and the solver's mixing stay in fp32. ``lipschitz_every``: every
    that many steps, estimate the Lipschitz constant of ``T`` at the fixed point of the first training
    sample (power iteration) and log it as ``lipschitz`` in history.jsonl (the largest since the previous
    record when several fall between two; 0: off). Above 1, JFB's
    descent guarantee is gone and the CLI warns. ``init_from``: start from the weights of a
    checkpoint (a ``model.pt``, a run folder or ``builtin:NAME``) instead of the untrained network,
    to fine-tune it on other data or another operator; the network's shape (``model.arch``,
    ``width``, ``depth``, ``spectral_norm``, ``input_injection``, ``bias``) then defaults to the
    source's, so its weights fit. ``batch_reuse``: each batch serves that many steps, ``reuse_gap``
    steps apart, and every use after the first starts the solve from the batch's previous fixed
    point (warm start: fewer forward iterations per step, see :mod:`jfb_inverse.training.reuse`;
    ``unrolled`` gets no warm start); 1 (the class default) draws a fresh batch every step.
    ``minutes``: train for about that long: the step count (at most ``steps``) is fitted to the
    measured speed at 5, 25, 50, 75 and 90% of the time, so that the learning-rate schedule ends
    with the budget (:mod:`jfb_inverse.training.budget`); the budget counts the run's training
    time across resumes. A budget given without a step count in its own layer (the problem's
    defaults, the preset, or the user's file and options) plans up to 1,000,000 steps
    (:data:`BUDGET_STEP_CAP`): an earlier layer's count would cut it short. A budget set with
    ``steps`` in the same layer is a guard: ``deblur``'s defaults train 4,300 steps, or as many as
    fit 9 minutes where they would take longer; a later layer that sets ``steps`` without
    ``minutes`` lifts it. ``max_minutes`` is a hard stop of one invocation, resumable.
    """

    steps: PositiveInt = 600
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0, le=10)] = 2e-3
    optimizer: Literal["adam", "muon"] = "adam"
    muon_lr: Annotated[float, Field(gt=0, le=10)] = 5e-3
    gradient: Literal["jfb", "jfbk", "implicit", "unrolled"] = "jfb"
    jfbk_k: PositiveInt = 5
    unrolled_k: PositiveInt = 20
    log_every: PositiveInt = 20
    checkpoint_every: PositiveInt = 100
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = "auto"
    max_minutes: PositiveFloat | None = None
    minutes: Annotated[float, Field(gt=0, le=1e7)] | None = None
    lipschitz_every: NonNegativeInt = 0
    init_from: str | None = None
    batch_reuse: PositiveInt = 1
    reuse_gap: PositiveInt = 8


class ProblemConfig(_Strict):
    """A complete, resolved problem definition: what ``train`` needs and what checkpoints record."""

    problem: str
    operator: Operator
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _step_fits_the_operator(self) -> ProblemConfig:
        # The filtered projection back-projects sinograms: only a CT operator (or a custom one,
        # checked when its physics is built) has them.
        if self.model.step == "filtered" and self.operator.kind not in ("ct", "custom"):
            raise ValueError(
                f"model.step 'filtered' (a filtered back-projection) needs operator.kind 'ct', got "
                f"{self.operator.kind!r}; use model.step 'prox', 'gradient' or 'ffpn'"
            )
        return self

    @model_validator(mode="after")
    def _dead_leaves_fit_the_batch(self) -> ProblemConfig:
        # The fraction is rounded to whole patches of each batch: say so when that leaves none of
        # one kind, instead of training silently without the synthetic (or the real) images.
        fraction, batch = self.data.dead_leaves, self.training.batch_size
        synthetic = round(fraction * batch)
        if fraction > 0 and synthetic == 0:
            raise ValueError(
                f"data.dead_leaves {fraction:g} of a batch of {batch} rounds to no synthetic patch; "
                f"use at least {1 / batch:.3g} or a larger training.batch_size"
            )
        if fraction < 1 and synthetic == batch:
            raise ValueError(
                f"data.dead_leaves {fraction:g} of a batch of {batch} rounds to {batch} synthetic patches, no real "
                f"image; use at most {(batch - 1) / batch:.3g}, 1.0 for synthetic images only, or a larger batch"
            )
        return self


# The fields a definition carries for other variants than its own: a Gaussian kernel has no
# motion length, Gaussian noise no photon gain.
_UNUSED_FIELDS = {
    "gaussian_kernel": ("length", "angle", "size", "path", "values"),
    "motion": ("sigma", "size", "path", "values"),
    "box": ("sigma", "length", "angle", "path", "values"),
    "file": ("sigma", "length", "angle", "size"),
    "gaussian_noise": ("gain",),  # Poisson noise uses all its fields: its Gaussian part may be relative
}


def unused_fields(section: dict[str, Any]) -> tuple[str, ...]:
    """The fields of a dumped operator or noise section that its variant (the blur ``kernel``, else
    the ``kind``) does not use."""
    variant = section.get("kernel", section.get("kind"))
    if variant == "gaussian":  # a kernel kind and a noise kind share the name
        variant = "gaussian_kernel" if "kernel" in section else "gaussian_noise"
    return _UNUSED_FIELDS.get(str(variant), ())


def variants_using(field: str, section: dict[str, Any]) -> list[str]:
    """The blur kernels (for a blur operator) or noise kinds that use ``field``."""
    if "kernel" in section:
        return [
            k for k in ("gaussian", "motion", "box", "file") if field not in unused_fields({**section, "kernel": k})
        ]
    return [k for k in ("gaussian", "poisson") if field not in unused_fields({**section, "kind": k})]


def used_fields(section: dict[str, Any]) -> dict[str, Any]:
    """A dumped operator or noise section without the fields its variant does not use and without
    unset (``None``) ones: what ``info`` shows and what a measurement's record is compared by."""
    drop = unused_fields(section)
    return {k: v for k, v in section.items() if k not in drop and v is not None}
