"""Build an ``ImplicitReconstructor`` (and its physics) from a resolved problem definition."""

from __future__ import annotations

from functools import lru_cache

import torch
from deepinv.physics import LinearPhysics

from jfb_inverse.implicit import Anderson, FixedPointSolver, Picard, make_gradient
from jfb_inverse.models.reconstructor import ImplicitReconstructor
from jfb_inverse.models.regularizers import SmoothingResidual, SmoothingResidualCNN, SmoothingResidualUNet
from jfb_inverse.problems.config import ProblemConfig, SolverConfig, TrainingConfig
from jfb_inverse.problems.noise import attach_noise_model
from jfb_inverse.problems.operators import build_physics, image_shape_for


def apply_memory_format(module: torch.nn.Module, memory_format: str, device: torch.device) -> torch.nn.Module:
    """Lay ``module``'s convolution weights out channels-last (``channels_last``, or ``auto`` where
    it runs faster: see :func:`channels_last_is_faster`) or in PyTorch's default layout
    (``contiguous``, or ``auto`` elsewhere), in place.

    Convolutions follow their weights' layout, so the activations follow too. A weight with one
    input channel is restrided as well (its strides make the first convolution pick NHWC), but
    buffers are left alone: torch.distributed's buffer broadcast refuses a (1, 1, k, k) buffer
    with channels-last strides as overlapping.
    """
    if memory_format not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"unknown memory_format {memory_format!r}; choose auto, channels_last or contiguous")
    channels_last = memory_format == "channels_last" or (memory_format == "auto" and channels_last_is_faster(device))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            # empty_like + copy_, not .contiguous(): that returns a 1-input-channel weight as it is.
            w = layer.weight.data
            layer.weight.data = torch.empty_like(w, memory_format=layout).copy_(w)
    return module


def channels_last_is_faster(device: torch.device | str) -> bool:
    """Where ``memory_format = "auto"`` picks channels-last: the CPU (oneDNN; 1.04-1.10x on one
    application of ``D``) and CUDA GPUs with tensor cores for float32 (TF32, compute capability 8.0
    and up), whose cuDNN kernels want NHWC: on an H200 training steps and solves at 256x256 x 32
    and 512x512 x 16 ran 1.28-1.33x faster (no change at 128x128 x 16, where kernel launches bound
    them; ``benchmarks/vs_deepinv.py --patch 256 --batch 32``). Older GPUs keep PyTorch's default.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return False


def make_solvers(cfg: SolverConfig) -> tuple[FixedPointSolver, FixedPointSolver]:
    """The training solver and the (tighter) evaluation solver of a definition."""
    graph, stop, eval_stop = cfg.cuda_graph, cfg.stop, cfg.eval_stop
    if cfg.name == "anderson":
        return (
            Anderson(m=cfg.m, tol=cfg.tol, max_iter=cfg.max_iter, cuda_graph=graph, stop=stop),
            Anderson(m=cfg.m, tol=cfg.eval_tol, max_iter=cfg.eval_max_iter, cuda_graph=graph, stop=eval_stop),
        )
    return (
        Picard(alpha=cfg.alpha, tol=cfg.tol, max_iter=cfg.max_iter, cuda_graph=graph, stop=stop),
        Picard(alpha=cfg.alpha, tol=cfg.eval_tol, max_iter=cfg.eval_max_iter, cuda_graph=graph, stop=eval_stop),
    )


def make_training_gradient(cfg: TrainingConfig, solver: SolverConfig):
    """The gradient strategy named in the training section."""
    if cfg.gradient == "jfbk":
        return make_gradient("jfbk", k=cfg.jfbk_k)
    if cfg.gradient == "unrolled":
        return make_gradient("unrolled", K=cfg.unrolled_k)
    if cfg.gradient == "implicit":
        return make_gradient("implicit", solver=solver.name, tol=solver.tol, max_iter=solver.max_iter)
    return make_gradient("jfb")


def _indexed(device: torch.device | str) -> torch.device:
    """``device`` with its index (``cuda`` -> ``cuda:0``): measurements report an indexed device,
    and one device under two keys would build (and estimate ``||A||``) twice."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class PhysicsCache:
    """Physics of a definition per image size and device, built once (the operator norm is cached
    with it). ``device`` is where physics are built when no device is asked for; the model asks for
    its measurements' device, so a model moved after :func:`build_model` gets physics where it runs."""

    def __init__(self, cfg: ProblemConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self._build = lru_cache(maxsize=16)(self._make)

    def __getstate__(self) -> dict[str, object]:
        # The cache is the instance's own lru_cache wrapper, which pickle cannot store (torch.save of a
        # whole model failed on it); the physics are rebuilt on first use after loading.
        return {"cfg": self.cfg, "device": self.device}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["cfg"], state["device"])  # type: ignore[misc, arg-type]

    def _make(self, img_size: tuple[int, int, int], device: torch.device) -> LinearPhysics:
        return attach_noise_model(build_physics(self.cfg.operator, img_size, device), self.cfg.noise)

    def for_image(self, img_size: tuple[int, ...], device: torch.device | str | None = None) -> LinearPhysics:
        """The physics for images of shape ``(C, H, W)``, on ``device`` (default: the cache's)."""
        return self._build(tuple(int(s) for s in img_size), _indexed(self.device if device is None else device))

    def for_measurement(
        self, y_shape: tuple[int, ...], device: torch.device | str | None = None
    ) -> tuple[LinearPhysics, tuple[int, int, int]]:
        """The physics and image shape for measurements of shape ``y_shape`` (no batch dim)."""
        img_size = image_shape_for(self.cfg.operator, tuple(y_shape))
        return self.for_image(img_size, device), img_size


def build_model(cfg: ProblemConfig, device: torch.device | str = "cpu") -> tuple[ImplicitReconstructor, PhysicsCache]:
    """The reconstructor of a definition, on ``device``, with a physics cache as its factory."""
    device = torch.device(device)
    physics = PhysicsCache(cfg, device)
    train_solver, eval_solver = make_solvers(cfg.solver)
    m = cfg.model
    channels = cfg.data.channels
    regularizer: SmoothingResidual
    context = channels if m.input_injection else 0
    if m.arch == "unet":
        regularizer = SmoothingResidualUNet(
            channels, width=m.width, spectral_norm=m.spectral_norm, context_channels=context, bias=m.bias
        )
    else:
        regularizer = SmoothingResidualCNN(
            channels,
            width=m.width,
            depth=m.depth,
            spectral_norm=m.spectral_norm,
            context_channels=context,
            bias=m.bias,
        )
    apply_memory_format(regularizer, m.memory_format, device)
    model = ImplicitReconstructor(
        regularizer,
        step=m.step,
        eta_init=m.eta_init,
        learn_eta=m.learn_eta,
        init=m.init,
        init_lam=m.init_lam,
        solver=train_solver,
        eval_solver=eval_solver,
        gradient=make_training_gradient(cfg.training, cfg.solver),
        physics_factory=physics.for_measurement,
        precision=cfg.training.precision,
        equivariance=m.equivariance,
        input_injection=m.input_injection,
    )
    return model.to(device), physics
