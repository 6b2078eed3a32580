"""Custom forward operators: load a user's class, build its physics, test its adjoint.

A user's operator is named by a *target*: ``path/to/ops.py:ClassName`` (the file is imported as a
module under a unique name) or ``package.module:ClassName``. The class is constructed with the
definition's ``args`` as keywords, plus ``img_size=(C, H, W)`` and ``device=`` when its constructor
names those parameters. It may be a deepinv ``LinearPhysics`` or any object with ``A`` and
``A_adjoint`` methods (wrapped in :class:`~jfb_inverse.problems.adapter.OperatorAdapter`, so
deepinv's conjugate-gradient prox and the rest work). Every build runs a dot-product test
(:func:`check_adjoint`, tolerance :data:`ADJOINT_TOL`).

Measurements may have another shape than the image. To reconstruct such measurements, the image
shape is taken from ``operator.img_size`` when set, else from an optional ``image_shape`` static or
class method of the user's class, ``image_shape(measurement_shape, **args) -> (C, H, W)``, else it is
assumed equal to the measurement shape.

A checkpoint names its operator but must not run a user's code by itself: loaders call
:func:`ensure_trusted` first.

Example:
    >>> from jfb_inverse.problems.custom import custom_config
    >>> cfg = custom_config("deepinv.physics:Denoising")
    >>> cfg.problem, cfg.operator.target
    ('custom', 'deepinv.physics:Denoising')
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from jfb_inverse.errors import OperatorError, UserError
from jfb_inverse.problems.config import PLACEHOLDER_TARGET, CustomOperator, ProblemConfig
from jfb_inverse.problems.registry import deep_merge, resolve_config

if TYPE_CHECKING:  # deepinv loads only when an operator is built (3 s here)
    from deepinv.physics import LinearPhysics


def __getattr__(name: str) -> Any:
    # OperatorAdapter lived here: still importable from this module, without loading deepinv early.
    if name == "OperatorAdapter":
        from jfb_inverse.problems.adapter import OperatorAdapter

        return OperatorAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Relative mismatch |<Ax, y> - <x, A^T y>| / max(|.|, |.|) tolerated by the adjointness test. An exact
# float32 adjoint pair measures about 1e-6; an adjoint that is off by 0.1% would bias every
# gradient step, and interpolation-based "approximate adjoints" (1e-2 and more) are refused.
ADJOINT_TOL = 1e-3
_MODULE_PREFIX = "jfb_inverse_user_operator_"


def first_line(exc: BaseException) -> str:
    """``Type: the message's first line``, for one-line errors."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _split_target(target: str) -> tuple[str, str]:
    if target == PLACEHOLDER_TARGET:
        raise OperatorError(
            "problem 'custom' needs your operator: pass --operator path/to/ops.py:ClassName to train "
            "(and --operator-args JSON), set operator.target in a --config file, or simulate with the "
            "--checkpoint of a run trained on it"
        )
    source, sep, name = target.rpartition(":")
    if not sep or not source or not name:
        raise OperatorError(
            f"operator target {target!r} must look like 'path/to/ops.py:ClassName' or 'package.module:ClassName'"
        )
    return source, name


def is_file_target(source: str) -> bool:
    """Whether the module part of a target names a .py file (else an importable module)."""
    return source.endswith(".py") or "/" in source or "\\" in source


def absolute_target(target: str) -> str:
    """``target`` with its .py file made absolute when the file exists (a module target, or a missing
    file, is returned as given), so that a run's stored target works from any folder."""
    source, sep, name = target.rpartition(":")
    if not sep or not source or not is_file_target(source):
        return target
    return f"{absolute_if_exists(source)}:{name}"


def absolute_if_exists(path: str) -> str:
    """``path`` made absolute when it exists; a missing one stays as written, so the error that
    follows names it the way the user typed it."""
    resolved = Path(path).expanduser().resolve()
    return str(resolved) if resolved.exists() else path


def _import_file(path: Path, target: str) -> Any:
    """Import a .py file as a module named after its absolute path (so one file is one module)."""
    if not path.is_file():
        raise OperatorError(f"operator file {str(path)!r} not found (from {target!r}); give an existing .py file")
    resolved = path.resolve()
    name = _MODULE_PREFIX + hashlib.sha1(str(resolved).encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise OperatorError(f"operator file {str(path)!r} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses and pickling look the module up
    sys.path.insert(0, str(resolved.parent))  # so the file can import its sibling modules
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise OperatorError(
            f"operator file {str(path)!r} failed to import ({first_line(exc)}); fix it (`python {path}` shows why)"
        ) from None
    finally:
        with contextlib.suppress(ValueError):  # the module may have edited sys.path itself
            sys.path.remove(str(resolved.parent))
    return module


def _import_module(source: str, target: str) -> Any:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        if exc.name and source.startswith(exc.name):
            raise OperatorError(
                f"operator module {source!r} not found (from {target!r}); install it, check the spelling, "
                "or give a file: path/to/ops.py:ClassName"
            ) from None
        raise OperatorError(f"operator module {source!r} failed to import ({first_line(exc)})") from None
    except Exception as exc:
        raise OperatorError(f"operator module {source!r} failed to import ({first_line(exc)})") from None


def load_operator_class(target: str) -> Callable[..., Any]:
    """The class (or factory) named by ``target``: ``path/to/ops.py:ClassName`` or ``package.module:ClassName``.

    A missing file or module, an import error (its first line), a missing name or a name that is
    not callable is an :class:`OperatorError` naming the target and the fix.
    """
    source, name = _split_target(target)
    module = _import_file(Path(source), target) if is_file_target(source) else _import_module(source, target)
    try:
        obj = functools.reduce(getattr, name.split("."), module)
    except AttributeError:
        defined = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module.__name__)
        hint = f"; it defines {', '.join(defined)}" if defined else ""
        raise OperatorError(f"{source!r} has no class {name!r}{hint}; fix the name after ':' in {target!r}") from None
    if not callable(obj):
        raise OperatorError(f"{target!r} is a {type(obj).__name__}, not a class; name a class after ':'")
    return obj


def _accepted_keywords(fn: Callable[..., Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that ``fn`` names as parameters (all of them if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(values)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    return {k: v for k, v in values.items() if k in params}


def _named_parameters(fn: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in keyword}


def construct_operator(op: CustomOperator, img_size: tuple[int, int, int], device: torch.device) -> Any:
    """An instance of the user's class: ``args`` as keywords, plus ``img_size`` and ``device`` when named."""
    factory = load_operator_class(op.target)
    kwargs = dict(op.args)
    named = _named_parameters(factory)
    # Passed only when the constructor names them: a **kwargs catch-all may not expect them.
    if "img_size" in named:
        kwargs.setdefault("img_size", tuple(img_size))
    if "device" in named:
        kwargs.setdefault("device", device)
    try:
        instance = factory(**kwargs)
    except Exception as exc:
        raise OperatorError(
            f"operator {op.target!r} could not be constructed for {img_size[-2]}x{img_size[-1]} images with "
            f"arguments {json.dumps(op.args)} ({first_line(exc)}); check that the image size suits the "
            "operator, and its arguments (operator.args; --operator-args when training)"
        ) from None
    if isinstance(instance, torch.nn.Module):
        instance = instance.to(device)
    return instance


def _a_value_of(instance: Any) -> str:
    """``an int``, ``a Foo``: what a target returned, for an error message."""
    kind = type(instance).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def as_linear_physics(instance: Any, img_size: tuple[int, int, int], name: str) -> LinearPhysics:
    """``instance`` as a deepinv ``LinearPhysics`` (wrapped when it only has ``A`` and ``A_adjoint``)."""
    from deepinv.physics import LinearPhysics

    from jfb_inverse.problems.adapter import OperatorAdapter

    if isinstance(instance, LinearPhysics):
        if getattr(instance, "img_size", None) is None:
            instance.img_size = tuple(img_size)  # lets deepinv's autograd adjoint work when none is given
        return instance
    if callable(getattr(instance, "A", None)) and callable(getattr(instance, "A_adjoint", None)):
        return OperatorAdapter(instance, img_size)
    raise OperatorError(
        f"operator {name!r} returned {_a_value_of(instance)}, which is neither a deepinv LinearPhysics nor has "
        "A(x) and A_adjoint(y) methods; subclass deepinv.physics.LinearPhysics or add both methods"
    )


def _apply(fn: Callable[[Tensor], Tensor], arg: Tensor, what: str, name: str) -> Tensor:
    try:
        out = fn(arg)
    except Exception as exc:
        raise OperatorError(
            f"operator {name!r}: {what} failed on an input of shape {tuple(arg.shape)} ({first_line(exc)})"
        ) from None
    if not isinstance(out, Tensor):
        raise OperatorError(f"operator {name!r}: {what} returned a {type(out).__name__}; it must return a torch.Tensor")
    if not torch.isfinite(out).all():
        raise OperatorError(f"operator {name!r}: {what} returned NaN or Inf on a random input")
    return out


def _dot(a: Tensor, b: Tensor) -> float:
    # Accumulated in float64, so the test measures the operator, not float32 summation error.
    if a.is_complex() or b.is_complex():
        return float(torch.vdot(a.flatten().to(torch.complex128), b.flatten().to(torch.complex128)).real)
    return float((a.double() * b.double()).sum())


def check_adjoint(
    physics: LinearPhysics,
    img_size: tuple[int, ...],
    device: torch.device | str = "cpu",
    tol: float = ADJOINT_TOL,
    trials: int = 3,
    name: str | None = None,
    seed: int = 0,
) -> float:
    """Dot-product test: the worst relative mismatch ``|<A x, y> - <x, A^T y>| / max(|.|, |.|)`` over
    ``trials`` seeded random pairs (``x`` of shape ``(1, *img_size)``, ``y`` of the shape of ``A x``).

    Returns the mismatch; above ``tol`` it raises an :class:`OperatorError` naming the operator, the
    mismatch and the fix. A failing or non-finite ``A``/``A_adjoint``, or an adjoint that does not
    return the image shape, is an :class:`OperatorError` too.
    """
    label = name or type(physics).__name__
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for _ in range(trials):
            x = torch.randn((1, *img_size), generator=gen).to(device)
            ax = _apply(physics.A, x, "A", label)
            y = torch.randn(ax.shape, generator=gen, dtype=ax.dtype if ax.is_complex() else torch.float32)
            y = y.to(device=ax.device, dtype=ax.dtype)
            aty = _apply(physics.A_adjoint, y, "A_adjoint", label)
            if aty.shape != x.shape:
                raise OperatorError(
                    f"operator {label!r}: A_adjoint returned shape {tuple(aty.shape)} for a measurement of shape "
                    f"{tuple(y.shape)}; it must return the image shape {tuple(x.shape)}"
                )
            a, b = _dot(ax, y), _dot(x, aty)
            worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-30))
    if worst > tol:
        raise OperatorError(
            f"operator {label} fails the adjointness test: relative mismatch {worst:.1e} > {tol:.0e}; "
            "check that A_adjoint is the adjoint of A"
        )
    return worst


def build_custom(op: CustomOperator, img_size: tuple[int, int, int], device: torch.device) -> LinearPhysics:
    """The builder of operator kind ``custom``: load, construct, wrap, then pass the adjointness test."""
    physics = as_linear_physics(construct_operator(op, img_size, device), img_size, op.target)
    check_adjoint(physics, img_size, device, name=op.target)
    with torch.no_grad():
        measured = physics.A(torch.zeros((1, *img_size), device=device))
    if measured.is_complex():  # the dot-product test takes them; the models and measurement files do not
        raise OperatorError(
            f"operator {op.target!r} returns complex measurements ({measured.dtype}); the models take real "
            "ones: return the real and imaginary parts as channels, as the mri problem does (B, 2C, H, W), "
            "with an A_adjoint that takes them"
        )
    with torch.no_grad():
        back = physics.A_adjoint(measured)
    for name, out in (("A", measured), ("A_adjoint", back)):
        if out.dtype != torch.float32:  # the model runs in its weights' dtype, float32 here
            raise OperatorError(
                f"operator {op.target!r}: {name} returns {out.dtype} for torch.float32 input; return the "
                "input's dtype (e.g. `.to(x.dtype)`)"
            )
    return physics


def custom_image_shape(op: CustomOperator, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The image shape of a measurement of ``shape``: ``operator.img_size``, else the class's
    ``image_shape(shape, **args)``, else ``shape`` itself."""
    if op.img_size is not None:
        return tuple(op.img_size)  # type: ignore[return-value]
    hook = getattr(load_operator_class(op.target), "image_shape", None)
    if callable(hook):
        try:
            result = tuple(int(s) for s in hook(tuple(shape), **_accepted_keywords(hook, op.args)))
        except Exception as exc:
            raise OperatorError(
                f"operator {op.target!r}: image_shape{tuple(shape)} failed ({first_line(exc)})"
            ) from None
        if len(result) != 3:
            raise OperatorError(f"operator {op.target!r}: image_shape returned {result}; it must return (C, H, W)")
        return result  # type: ignore[return-value]
    if len(shape) != 3:
        raise OperatorError(
            f"a measurement of shape {tuple(shape)} does not say its image shape; set operator.img_size = [C, H, W]"
        )
    return tuple(shape)  # type: ignore[return-value]


def operator_target(cls: type | Callable[..., Any]) -> str:
    """The target string of a class: ``module:Class``, or ``/abs/path/file.py:Class`` for a class defined in a
    script (``__main__``) or in a file loaded by :func:`load_operator_class`."""
    qualname = getattr(cls, "__qualname__", "")
    if not qualname or "<locals>" in qualname:
        raise OperatorError(f"{cls!r} is not defined at module level; define the class at the top of a .py file")
    module_name = getattr(cls, "__module__", "")
    if module_name == "__main__" or module_name.startswith(_MODULE_PREFIX):
        path = getattr(sys.modules.get(module_name), "__file__", None)
        if not path:
            raise OperatorError("the operator class is not defined in a file; put it in a .py file")
        return f"{Path(path).resolve()}:{qualname}"
    return f"{module_name}:{qualname}"


def operator_section(
    target: str, args: Mapping[str, Any] | None = None, img_size: Iterable[int] | None = None
) -> dict[str, Any]:
    """The ``operator`` section of a definition for a custom operator."""
    section: dict[str, Any] = {"kind": "custom", "target": target}
    if args is not None:
        section["args"] = dict(args)
    if img_size is not None:
        section["img_size"] = [int(s) for s in img_size]
    return section


def custom_config(
    operator: str | type | Callable[..., Any],
    args: Mapping[str, Any] | None = None,
    *,
    img_size: Iterable[int] | None = None,
    config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> ProblemConfig:
    """The definition of problem ``custom`` for a user's operator (a class, or its target string).

    Settings come from the registered ``custom`` problem, then ``preset``, ``config`` and ``overrides``
    as for :func:`~jfb_inverse.problems.resolve_config`; the operator section is set from the arguments.
    """
    target = operator if isinstance(operator, str) else operator_target(operator)
    layer = {"operator": operator_section(target, args if args is not None else {}, img_size)}
    return resolve_config("custom", config, deep_merge(layer, overrides or {}), preset)


def parse_operator_args(text: str | None) -> dict[str, Any]:
    """``--operator-args`` JSON as a dict; invalid JSON or a non-object is a one-line :class:`UserError`."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--operator-args is not valid JSON ({exc.msg} at column {exc.colno}); e.g. '{{\"n\": 3}}'"
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"--operator-args must be a JSON object of keyword arguments, e.g. '{{\"n\": 3}}', got {text!r}"
        )
    return value


def ensure_trusted(cfg: ProblemConfig, trusted_targets: Iterable[str] | bool = ()) -> None:
    """Refuse to build a checkpoint's custom operator (which imports and runs its code) unless trusted.

    ``trusted_targets``: ``True`` (the user passed ``--trust-operator``) or the targets the user named
    on this command line. Built-in operators always pass.
    """
    op = cfg.operator
    if op.kind != "custom":
        return
    # Compared as absolute paths: runs store the target absolute, users type it relative.
    if trusted_targets is True:
        trusted = True
    elif trusted_targets is False:
        trusted = False
    else:
        trusted = absolute_target(op.target) in {absolute_target(t) for t in trusted_targets}
    if not trusted:
        raise OperatorError(
            f"checkpoint uses custom operator {op.target}; rerun with --trust-operator (from Python: "
            "trust_operator=True) to import it (this runs its code)"
        )
    if recorded_file_is_gone(op.target):
        # Said here, once, rather than as the first measurement's or held-out image's failure.
        source, _, name = op.target.rpartition(":")
        raise OperatorError(
            f"the checkpoint's operator file {source!r} is gone (moved or deleted); a run records its operator "
            f"by absolute path and does not copy its code: put the file back there, or name where it is now "
            f"with --operator NEW/PATH.py:{name}"
        )


def recorded_file_is_gone(target: str) -> bool:
    """Whether ``target`` names a file by absolute path (as runs record it) that no longer exists."""
    source, sep, _ = target.rpartition(":")
    return bool(sep) and is_file_target(source) and Path(source).is_absolute() and not Path(source).is_file()


def relocate_operator(cfg: ProblemConfig, target: str) -> ProblemConfig:
    """The definition with its custom operator read from ``target`` instead (``--operator`` with a
    checkpoint: the operator's file moved, or the run came from another machine).

    Only where the code is looked up changes: the class name must be the recorded one, and the
    recorded ``args`` and ``img_size`` stay. Whether ``target`` defines the same operator cannot be
    checked (a run does not copy its operator's code); the dot-product test still runs at build time.
    """
    op = cfg.operator
    if op.kind != "custom":
        raise UserError(
            f"--operator points a checkpoint at its custom operator's file, but this checkpoint uses the built-in "
            f"{op.kind!r} operator; drop --operator"
        )
    recorded = _split_target(op.target)[1]
    source, name = _split_target(target)
    if name != recorded:
        raise OperatorError(
            f"the checkpoint was trained on class {recorded!r}, but --operator {target} names class {name!r}; "
            f"give the file that defines {recorded!r} (--operator PATH.py:{recorded})"
        )
    if is_file_target(source) and not Path(source).expanduser().is_file():
        raise OperatorError(f"--operator file {source!r} not found; give the .py file that now defines {recorded!r}")
    return cfg.model_copy(update={"operator": op.model_copy(update={"target": absolute_target(target)})})
