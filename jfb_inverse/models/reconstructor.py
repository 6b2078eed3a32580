"""``ImplicitReconstructor``: the implicit network as a deepinv ``Reconstructor`` (``model(y, physics)``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from jfb_inverse.consistency import make_step
from jfb_inverse.implicit import JFB, Anderson, FixedPointSolver, GradientStrategy, fixed_point
from jfb_inverse.implicit.solvers import FixedPointMap
from jfb_inverse.implicit.stats import SolverStats
from jfb_inverse.models.equivariance import Equivariance, group_elements, symmetrize
from jfb_inverse.models.precision import Precision, effective_precision
from jfb_inverse.problems.custom import first_line

StepKind = Literal["prox", "gradient", "ffpn", "filtered"]
InitKind = Literal["tikhonov", "adjoint"]
#: ``(measurement shape without the batch dim, device) -> (physics on that device, image shape)``.
PhysicsFactory = Callable[[tuple[int, ...], torch.device], tuple[LinearPhysics, tuple[int, int, int]]]


class ImplicitReconstructor(Reconstructor):
    """Reconstruct ``x`` as the fixed point ``u* = T(u*; y)`` of a learned map with a consistency step.

    ``step`` selects ``T``:

    - ``prox`` (HQS):  ``T(u) = D(prox_{eta f}(u))``
    - ``gradient`` (PGD): ``T(u) = D(u - eta A^T(Au - y))``
    - ``ffpn`` (F-FPN): ``T(u) = v - eta A^T(Av - y)``, ``v = D(u)``

    with ``f = 1/2 ||A . - y||^2``, ``D`` the learned ``regularizer`` and ``eta`` (in units of
    ``1/||A||^2``) learned when ``learn_eta``. The iteration starts from a Tikhonov solution
    (``init="tikhonov"``, weight ``init_lam`` relative to ``||A||^2``) or ``A^T y``. ``solver`` is used
    in training mode, ``eval_solver`` in eval mode; ``gradient`` is the training strategy (JFB by
    default). ``equivariance`` (``none``, ``rotations`` or ``dihedral``) averages ``D`` over that
    group of quarter-turns and flips inside ``T`` in eval mode only (see
    :mod:`jfb_inverse.models.equivariance`); training always uses the plain ``D``. The class
    default is ``none`` because a ``D`` of your own may not accept a turned (H <-> W) input; the
    problem definitions default to ``rotations`` (``model.equivariance``). With
    ``input_injection``, ``D`` is called as ``D(v, u0)`` with the start ``u0`` (which depends on
    ``y`` only) as a context, e.g. a :class:`SmoothingResidual` with ``context_channels``; a
    start passed to :meth:`forward` changes where the iteration begins, not the context. Works on any
    image size (fully convolutional); with ``physics=None`` the physics is built for the
    measurement's shape and device by ``physics_factory``. ``last_stats`` holds the solver statistics of the
    last call.

    Example:
        >>> import torch, deepinv as dinv
        >>> from jfb_inverse.models import ImplicitReconstructor, SmoothingResidualCNN
        >>> physics = dinv.physics.BlurFFT(img_size=(1, 32, 32), filter=torch.ones(1, 1, 3, 3) / 9)
        >>> model = ImplicitReconstructor(SmoothingResidualCNN(channels=1)).eval()
        >>> x_hat = model(physics.A(torch.rand(2, 1, 32, 32)), physics)
        >>> x_hat.shape, model.last_stats.all_converged
        (torch.Size([2, 1, 32, 32]), True)
    """

    def __init__(
        self,
        regularizer: nn.Module,
        step: StepKind = "prox",
        eta_init: float = 1.0,
        learn_eta: bool = True,
        init: InitKind = "tikhonov",
        init_lam: float = 0.01,
        solver: FixedPointSolver | None = None,
        eval_solver: FixedPointSolver | None = None,
        gradient: GradientStrategy | None = None,
        physics_factory: PhysicsFactory | None = None,
        precision: Precision = "fp32",
        equivariance: Equivariance = "none",
        input_injection: bool = False,
    ) -> None:
        super().__init__()
        # Fail at construction, in one line, not at the first call (or never: a typo in init or
        # precision would quietly run another iteration).
        group_elements(equivariance)
        effective_precision(precision, torch.device("cpu"), True)
        for name, value, choices in (("step", step, StepKind), ("init", init, InitKind)):
            if value not in get_args(choices):
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(get_args(choices))}")
        for name, value in (("eta_init", eta_init), ("init_lam", init_lam)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.regularizer = regularizer
        self.step_kind: StepKind = step
        log_eta = torch.tensor(math.log(eta_init))
        if learn_eta:
            self.log_eta = nn.Parameter(log_eta)
        else:
            self.register_buffer("log_eta", log_eta)
        self.init = init
        self.init_lam = init_lam
        self.solver: FixedPointSolver = solver or Anderson(tol=1e-3, max_iter=30)
        self.eval_solver: FixedPointSolver = eval_solver or Anderson(tol=1e-4, max_iter=100)
        self.gradient: GradientStrategy = gradient or JFB()
        self.physics_factory = physics_factory
        self.precision = precision
        self.equivariance: Equivariance = equivariance
        self.input_injection = input_injection
        self.last_stats: SolverStats | None = None

    @property
    def eta(self) -> Tensor:
        """The consistency step size (units of ``1/||A||^2``)."""
        return self.log_eta.exp()

    def _physics_for(self, y: Tensor, physics: LinearPhysics | None) -> tuple[LinearPhysics, tuple[int, ...]]:
        """The physics for ``y`` and its image shape, checked to produce measurements of ``y``'s shape."""
        shape = tuple(y.shape[1:])
        guessed = physics is None  # the image shape comes from the factory's reading of the measurement's
        try:
            if physics is not None:
                if not isinstance(physics, LinearPhysics):
                    raise ValueError(
                        f"physics must be a deepinv LinearPhysics, got {type(physics).__name__}; wrap an object with "
                        "A and A_adjoint by jfb_inverse.problems.custom.as_linear_physics(op, img_size, name)"
                    )
                img_size = getattr(physics, "img_size", None)
                if img_size is None:
                    img_size = tuple(physics.A_adjoint(y[:1]).shape[1:])
                img_size = tuple(img_size)
            elif self.physics_factory is None:
                raise ValueError("no physics given and the model has no physics_factory; pass physics=...")
            else:
                physics, img_size = self.physics_factory(shape, y.device)
            # One sample through A: a measurement of another shape would otherwise broadcast into a
            # batch of wrong reconstructions (an (H, W) array read as H measurements) or fail deep inside.
            made = tuple(physics.A(torch.zeros((1, *img_size), device=y.device, dtype=y.dtype)).shape[1:])
        except ValueError:
            raise
        except Exception as exc:
            # An image-shaped measurement without its batch dimension is (C, H, W): 3 dimensions.
            unbatched = "; y[None] adds the batch dimension of one measurement" if y.dim() <= 3 else ""
            raise ValueError(
                f"measurements of shape {tuple(y.shape)} do not fit the physics ({first_line(exc)}); "
                f"pass y as (B, *measurement shape) for this physics{unbatched}"
            ) from None
        if made != shape:
            hint = (
                ": y[None] adds the batch dimension of one measurement"
                if y.dim() <= len(made)  # no batch dimension (or fewer still)
                else ", or the physics of these measurements"
            )
            if guessed and y.dim() > len(made):
                raise ValueError(
                    f"measurements of shape {tuple(y.shape)} do not fit the model's operator at the image shape "
                    f"taken from them, {tuple(img_size)}, where it makes {made}; pass the physics of these "
                    "measurements, model(y, physics) (a custom operator's image_shape method or operator.img_size "
                    "would give the image shape)"
                )
            raise ValueError(
                f"measurements of shape {tuple(y.shape)} do not fit the physics, which makes {made} per image of "
                f"{tuple(img_size)}; pass y of shape (B, {', '.join(map(str, made))}){hint}"
            )
        channels = getattr(self.regularizer, "channels", None)
        if isinstance(channels, int) and img_size[0] != channels:
            raise ValueError(
                f"the images of these measurements have {img_size[0]} channel(s), but the regulariser takes "
                f"{channels}; pass measurements of {channels}-channel images (or a model built for {img_size[0]})"
            )
        return physics, img_size

    def _check_measurement(self, y: Tensor) -> None:
        """``y`` a non-empty batch in the weights' dtype and on their device: said in one line, not by
        a convolution deep inside the first iteration."""
        if not isinstance(y, Tensor):
            raise ValueError(
                f"measurements must be a torch.Tensor of shape (B, ...), got {type(y).__name__}; "
                "convert with torch.as_tensor(y)"
            )
        if y.dim() < 2:
            raise ValueError(
                f"measurements must be a batch (B, ...), got shape {tuple(y.shape)}; y[None] adds the batch "
                "dimension of one measurement"
            )
        if y.numel() == 0:
            raise ValueError(f"the batch of measurements is empty (shape {tuple(y.shape)}); pass at least one")
        ref = self.log_eta  # a parameter or a buffer: every model has it, and it moves with the model
        if ref.dtype not in (torch.float32, torch.float64):
            # The physics (FFTs, CG) and Anderson's small solve need them; failing there read as a shape error.
            raise ValueError(
                f"the model's weights are {ref.dtype}; it runs in float32 or float64: call model.float(), and for "
                "a faster regulariser set model.precision = 'bf16' (or 'fp16'; it then runs under autocast)"
            )
        if y.dtype != ref.dtype or y.device != ref.device:
            raise ValueError(
                f"measurements are {y.dtype} on {y.device}, the model's weights {ref.dtype} on {ref.device}; "
                f"pass y.to(device='{ref.device}', dtype={ref.dtype}) (or move the model)"
            )

    def fixed_point_map(self, y: Tensor, physics: LinearPhysics | None = None) -> tuple[FixedPointMap, Tensor]:
        """``T(.; y)`` as a one-argument function, and the starting point ``u0``."""
        self._check_measurement(y)
        physics, img_size = self._physics_for(y, physics)
        step = make_step(self.step_kind, physics, img_size)
        consistency = step.bind(y, self.eta)
        with torch.no_grad():
            if self.init == "tikhonov":
                tikhonov = make_step("prox", physics, img_size).bind(y, 1.0 / self.init_lam)
                u0 = tikhonov(torch.zeros((y.shape[0], *img_size), device=y.device, dtype=y.dtype))
            else:
                u0 = physics.A_adjoint(y)
        # Input injection: D also sees the start, which depends on y only (not on u).
        fn = _MeasurementMap(
            consistency,
            self._regularizer_in_precision(y.device),
            "none" if self.training else self.equivariance,
            u0 if self.input_injection else None,
            regularizer_first=self.step_kind in ("ffpn", "filtered"),
        )
        return fn, u0

    def _regularizer_in_precision(self, device: torch.device) -> Callable[..., Tensor]:
        """``D`` under autocast when a lower precision is asked for (``auto``: see
        :mod:`jfb_inverse.models.precision`); its output is cast back to the iterate's dtype (fp32,
        or fp64 for a model in double) so the consistency step and the solver's residuals and mixing
        stay in it."""
        precision = effective_precision(self.precision, device, self.training)
        if precision == "fp32":
            return self.regularizer
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        reg = self.regularizer

        def low_precision(v: Tensor, *context: Tensor) -> Tensor:
            with torch.autocast(device_type=device.type, dtype=dtype):
                out = reg(v, *context)
            return out.to(v.dtype)

        return low_precision

    def forward(
        self,
        y: Tensor,
        physics: LinearPhysics | None = None,
        u0: Tensor | None = None,
        *,
        x_gt: Tensor | None = None,
        compute_metrics: bool = False,
    ) -> Tensor:
        """Reconstruct a batch of measurements ``y`` (the physics is built for ``y`` when not given).

        ``x_gt`` and ``compute_metrics`` are the keywords deepinv's ``Trainer`` passes; the ground
        truth is not used, and per-iteration metrics are refused (the solver's are in ``last_stats``).
        """
        if compute_metrics:
            # deepinv's Trainer unpacks ``x, metrics = model(...)``: a tensor would unpack along its
            # batch dimension without an error, so refuse instead of returning one.
            raise ValueError(
                "ImplicitReconstructor does not return per-iteration metrics (compute_metrics=True); "
                "read model.last_stats after a call, and give deepinv's Trainer plot_convergence_metrics=False"
            )
        fn, start = self.fixed_point_map(y, physics)
        if u0 is not None:
            _check_start(u0, start)
        solver = self.solver if self.training else self.eval_solver
        u, stats = fixed_point(fn, start if u0 is None else u0, solver, self.gradient)
        self.last_stats = stats
        return u


def _check_start(u0: Tensor, start: Tensor) -> None:
    """A start given to :meth:`ImplicitReconstructor.forward` must be an image batch like the model's own."""
    if not isinstance(u0, Tensor):
        raise ValueError(f"u0 must be a torch.Tensor, got {type(u0).__name__}")
    if u0.shape != start.shape or u0.dtype != start.dtype or u0.device != start.device:
        raise ValueError(
            f"u0 is {tuple(u0.shape)} {u0.dtype} on {u0.device}, but the images of these measurements are "
            f"{tuple(start.shape)} {start.dtype} on {start.device}; pass a start of that shape, dtype and device"
        )


class _MeasurementMap:
    """``T(.; y)`` for one batch of measurements: ``D(c(u))``, or ``c(D(u))`` with
    ``regularizer_first`` (F-FPN), for the consistency step ``c`` bound to ``y`` and the regulariser
    ``D`` (averaged over ``group``, seeing ``context`` with input injection).

    It can also be applied to some samples only (:class:`jfb_inverse.implicit.solvers.SampleSubsetMap`),
    so a solver that stops each sample on its own computes the regulariser, the costly part, for
    the samples still iterating only. The consistency step runs on the whole batch: it is bound to
    every sample's measurement, and a physics may hold per-sample parameters.
    """

    def __init__(
        self,
        consistency: Callable[[Tensor], Tensor],
        regularizer: Callable[..., Tensor],
        group: Equivariance,
        context: Tensor | None,
        regularizer_first: bool,
    ) -> None:
        self.consistency = consistency
        self.regularizer = regularizer
        self.group: Equivariance = group
        self.context = context
        self.regularizer_first = regularizer_first
        self._reg = symmetrize(regularizer, group, context)
        self._subset: tuple[Tensor, Callable[[Tensor], Tensor]] | None = None

    def __call__(self, u: Tensor) -> Tensor:
        if self.regularizer_first:
            return self.consistency(self._reg(u))
        return self._reg(self.consistency(u))

    def on_samples(self, u: Tensor, index: Tensor) -> Tensor:
        """``self(u)[index]``, with the regulariser applied to those samples only."""
        reg = self._reg_for(index)
        if self.regularizer_first:
            v = u.index_copy(0, index, reg(u.index_select(0, index)))
            return self.consistency(v).index_select(0, index)
        return reg(self.consistency(u).index_select(0, index))

    def _reg_for(self, index: Tensor) -> Callable[[Tensor], Tensor]:
        """The regulariser for the samples ``index`` (its context cut to them, built once per set)."""
        if self.context is None:
            return self._reg
        if self._subset is None or not torch.equal(self._subset[0], index):
            self._subset = (index, symmetrize(self.regularizer, self.group, self.context.index_select(0, index)))
        return self._subset[1]
