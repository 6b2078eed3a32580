"""Shared CLI plumbing: the console, user-error handling (one line, exit code 2), model loading."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from jfb_inverse.errors import UserError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    """``--debug`` or ``JFB_INVERSE_DEBUG=1`` shows full tracebacks."""
    return os.environ.get("JFB_INVERSE_DEBUG", "") not in ("", "0")


def user_errors(fn: F) -> F:
    """Turn a :class:`UserError` (and bad files) into ``error: ...`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            if debug_enabled():
                raise
            message = str(exc) if isinstance(exc, UserError) else f"{exc.strerror or exc}: {exc.filename}"
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def set_debug(value: bool) -> None:
    """Callback of the global ``--debug`` option."""
    if value:
        os.environ["JFB_INVERSE_DEBUG"] = "1"


def override_solver(model: Any, tol: float | None, max_iter: int | None) -> None:
    """``--tol`` / ``--max-iter``: replace the evaluation solver's stopping rule."""
    import dataclasses

    changes = {k: v for k, v in (("tol", tol), ("max_iter", max_iter)) if v is not None}
    if changes:
        model.eval_solver = dataclasses.replace(model.eval_solver, **changes)


def warn(message: str) -> None:
    """A yellow warning on stderr."""
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False)


def stdout_is_terminal() -> bool:
    """Progress bars only on a terminal."""
    return sys.stdout.isatty()
