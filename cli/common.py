"""Shared CLI plumbing: the console, user-error handling (one line, exit code 2), model loading."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from jfb_inverse.errors import ConfigError, UserError

# soft_wrap: a message is never broken at 80 columns when stdout is not a terminal (logs, CI).


class _OutputConsole(Console):
    """The console on stdout. When its reader goes away (``jfb-inverse train ... | head -1``), the
    rest of the output is dropped and the command goes on: rich's default exits with code 1 at the
    next print, which cost a finished training run its figure and held-out report."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not fail either


console = _OutputConsole(soft_wrap=True, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])

# Options several commands share, declared once so their names and help stay the same everywhere.
Device = Literal["auto", "cpu", "cuda"]
DeviceOption = Annotated[Device, typer.Option(help="auto picks CUDA when present.")]
TrustOperatorOption = Annotated[
    bool, typer.Option("--trust-operator", help="Import the checkpoint's custom operator (runs its code).")
]
MovedOperatorOption = Annotated[
    str | None,
    typer.Option(
        "--operator",
        help="Where the checkpoint's custom operator is now (ops.py:ClassName, the same class), "
        "when its file moved since training; trusts it.",
    ),
]
TolOption = Annotated[
    float | None, typer.Option(help="Override the fixed-point tolerance of the checkpoint (> 0, e.g. 1e-4).")
]
MaxIterOption = Annotated[int | None, typer.Option(min=1, help="Override the fixed-point iteration cap.")]
#: Seeds as the definition's ``training.seed`` takes them (a torch generator needs 64-bit values;
#: the bound keeps the CLI's seeds and the definition's the same range).
SEED_MAX = 2**32 - 1
NoiseSeedOption = Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Noise seed.")]
# A torch-free copy of jfb_inverse.problems.config.Equivariance, so --help stays fast.
Equivariance = Literal["none", "rotations", "dihedral"]
EquivarianceOption = Annotated[
    Equivariance | None,
    typer.Option(
        help="Override the checkpoint's averaging of the regulariser over quarter-turns (rotations, 4x the "
        "cost per iteration) or quarter-turns and flips (dihedral, 8x); none: as trained."
    ),
]


def debug_enabled() -> bool:
    """``--debug`` or ``JFB_INVERSE_DEBUG=1`` shows full tracebacks."""
    return os.environ.get("JFB_INVERSE_DEBUG", "") not in ("", "0")


def user_errors(fn: F) -> F:
    """Turn a :class:`UserError` (and bad files) into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, OSError) as exc:
            # An OSError about a named file (missing, unreadable, not a folder, disk full, ...) is the
            # user's to fix; one without a file name is a bug and keeps its traceback.
            if debug_enabled() or (isinstance(exc, OSError) and exc.filename is None):
                raise
            message = str(exc) if isinstance(exc, UserError) else f"{exc.strerror or exc}: {exc.filename}"
            error(message)
            raise typer.Exit(code=getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def error(message: str) -> None:
    """``error: message`` on stderr, on one line; the message is never read as rich markup."""
    line = " ".join(str(message).splitlines())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def set_debug(value: bool) -> None:
    """Callback of the global ``--debug`` option."""
    if value:
        os.environ["JFB_INVERSE_DEBUG"] = "1"


def override_evaluation(
    model: Any, tol: float | None, max_iter: int | None, equivariance: Equivariance | None = None
) -> None:
    """``--tol`` / ``--max-iter`` / ``--equivariance``: replace the evaluation solver's stopping rule
    and the model's evaluation-time averaging."""
    import dataclasses

    if tol is not None and not tol > 0:  # also NaN
        raise UserError(f"--tol must be > 0, got {tol:g}; give a relative residual such as 1e-4")
    changes = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
    if changes:
        model.eval_solver = dataclasses.replace(model.eval_solver, **changes)
    if equivariance is not None:
        model.equivariance = equivariance


def warn(message: str) -> None:
    """A yellow warning on stderr."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def check_config_file(path: Any) -> None:
    """Read a ``--config`` file and refuse a section that is not a table (e.g. ``training = 5``).

    Without this check such a section would be replaced silently by the section the command-line
    options build (``--steps`` makes ``[training]``), or crash the merge of ``operator``.
    """
    from jfb_inverse.problems import load_config_file
    from jfb_inverse.problems.registry import DEFINITION_SECTIONS

    values = load_config_file(path)
    for name in DEFINITION_SECTIONS:
        if name in values and not isinstance(values[name], dict):
            raise ConfigError(
                f"config file {str(path)!r}: {name} must be a table of settings ([{name}] section), "
                f"got {type(values[name]).__name__} {values[name]!r}"
            )


def stdout_is_terminal() -> bool:
    """Progress bars only on a terminal."""
    return sys.stdout.isatty()


def absolute_paths(cfg: Any) -> Any:
    """The definition with its file paths (training folder, kernel file, operator file, the checkpoint
    it starts from) made absolute, so that what records it (a run's problem.toml and model.pt, a
    measurement's sidecar) names the same files from any folder."""
    from jfb_inverse.problems.custom import absolute_if_exists, absolute_target

    update: dict[str, Any] = {}
    if cfg.data.path:
        update["data"] = cfg.data.model_copy(update={"path": absolute_if_exists(cfg.data.path)})
    operator = cfg.operator
    if getattr(operator, "path", None):
        update["operator"] = operator.model_copy(update={"path": absolute_if_exists(operator.path)})
    elif operator.kind == "custom":
        update["operator"] = operator.model_copy(update={"target": absolute_target(operator.target)})
    init_from = cfg.training.init_from
    if init_from and not init_from.startswith("builtin:"):
        update["training"] = cfg.training.model_copy(update={"init_from": absolute_if_exists(init_from)})
    return cfg.model_copy(update=update) if update else cfg


def unconverged_note(names: list[str], converged: list[bool], command: str) -> str | None:
    """The warning for an evaluation whose solves did not all reach their tolerance (``None`` when
    they did): which images, and the options that let the solver go further."""
    left = [name for name, ok in zip(names, converged, strict=True) if not ok]
    if not left:
        return None
    return (
        f"the forward solve did not reach its tolerance on {', '.join(left)} (best iterate kept); {command} "
        "with a larger --max-iter (or a looser --tol) goes further"
    )


def check_writable_folder(out: Path, option: str = "--out") -> None:
    """``out`` is (or can become) a folder we can write, checked before any work is done (nothing is created)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {str(out)!r} is a file; give a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(
            f"{option} {str(out)!r} is inside {str(parent)!r}, which is a file, not a folder; give a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {str(parent)!r} (permission denied); choose an {option} folder you can write")
