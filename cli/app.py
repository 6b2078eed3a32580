"""The Typer application: ``jfb-inverse COMMAND``. One function per command, in its own module."""

from __future__ import annotations

import difflib
import sys
from typing import Annotated

import typer
from jfb_inverse.cli.common import SEED_MAX, console, set_debug, user_errors, warn
from rich.markup import escape
from rich.table import Table

from jfb_inverse import __version__

app = typer.Typer(
    name="jfb-inverse",
    help="Implicit (fixed-point) networks for imaging inverse problems, trained with JFB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"jfb-inverse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", callback=set_debug, is_eager=True, help="Show full tracebacks on errors.")
    ] = False,
) -> None:
    """Implicit (fixed-point) networks for imaging inverse problems, trained with JFB."""


@app.command()
@user_errors
def problems() -> None:
    """List the registered problems."""
    from jfb_inverse.problems.registry import get_problem, list_problems, plugin_failure_note

    table = Table("problem", "description", "presets (--preset)")
    for name, description in list_problems().items():
        presets = ", ".join(sorted(get_problem(name).presets))
        table.add_row(escape(name), escape(description), escape(presets))  # a plugin's text as written, not markup
    console.print(table)
    if plugin_failure_note():
        warn(plugin_failure_note())


@app.command()
def demo(
    steps: Annotated[int, typer.Option(min=1, help="Adam steps.")] = 200,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Random seed.")] = 0,
) -> None:
    """Fit a toy implicit network with JFB and with implicit differentiation (engine demo)."""
    import time

    from jfb_inverse.implicit import JFB, ImplicitDiff
    from jfb_inverse.toy import fit_toy

    table = Table("gradient", "first loss", "last loss", "reduction", "seconds")
    for name, strategy in (("JFB", JFB()), ("ImplicitDiff", ImplicitDiff())):
        start = time.perf_counter()
        losses = fit_toy(strategy, steps=steps, seed=seed)
        table.add_row(
            name,
            f"{losses[0]:.3e}",
            f"{losses[-1]:.3e}",
            f"{losses[0] / losses[-1]:.1e}x",
            f"{time.perf_counter() - start:.2f}",
        )
    console.print(table)


from jfb_inverse.cli import benchmark as _benchmark  # noqa: E402
from jfb_inverse.cli import evaluate as _evaluate  # noqa: E402
from jfb_inverse.cli import info as _info  # noqa: E402
from jfb_inverse.cli import reconstruct as _reconstruct  # noqa: E402
from jfb_inverse.cli import train as _train  # noqa: E402

app.command(name="train")(_train.train)
app.command(name="simulate")(_reconstruct.simulate)
app.command(name="reconstruct")(_reconstruct.reconstruct)
app.command(name="evaluate")(_evaluate.evaluate)
app.command(name="info")(_info.info)
app.command(name="benchmark")(_benchmark.benchmark)


def main() -> None:
    """Console-script entry point."""
    from jfb_inverse.runtime import tune_malloc

    # glibc's default mmap threshold made inference 1.6-1.8x slower through page faults
    # (benchmarks/results/malloc.json); JFB_INVERSE_MALLOC=0 opts out.
    tune_malloc()
    _warnings_as_lines()
    sys.exit(run_app())


def _warnings_as_lines() -> None:
    """Python warnings (ours and the libraries') as the CLI's own one-line ``warning: ...``, not
    as a file name, a line number and a line of source."""
    import warnings

    from jfb_inverse.cli.common import warn

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        warn(str(message))

    warnings.showwarning = show


def run_app(args: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; a usage error (unknown option, bad value, missing
    option) is one ``error: ...`` line and exit code 2, like every other user error."""
    from jfb_inverse.cli.common import err_console, error

    try:  # recent Typer ships its own copy of click
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions

    argv = sys.argv[1:] if args is None else args
    if "" in argv:
        # Typer reads an empty path as the current folder: `--out "$UNSET"` would train into it.
        after = argv[argv.index("") - 1] if argv.index("") > 0 else "the command"
        error(f"an empty argument after {after} (an unset shell variable?); give a value")
        return 2
    try:
        code = app(args=args, standalone_mode=False)
    except click_exceptions.UsageError as exc:
        # Typer converts Literal options with pydantic, whose messages start "Value error, ".
        message = exc.format_message().replace(": Value error, ", ": ")
        if isinstance(exc, click_exceptions.NoSuchOption) and exc.possibilities:
            # click lists every option within difflib's cutoff (--problme: "--nproc, --problem"): name the closest.
            closest = difflib.get_close_matches(exc.option_name, exc.possibilities, n=1, cutoff=0.0)
            message = f"No such option: {exc.option_name}; did you mean {closest[0]}?"
        if not message:  # no arguments at all: the help was printed
            return 2
        if isinstance(exc, click_exceptions.NoSuchOption) and exc.option_name == "--debug":
            message += "; --debug goes before the command: jfb-inverse --debug COMMAND ..."
        where = exc.ctx.command_path if exc.ctx is not None else "jfb-inverse"
        error(f"{message} (see: {where} --help)")
        return 2
    except typer.Abort:
        err_console.print("interrupted")
        return 130
    return code if isinstance(code, int) else 0
