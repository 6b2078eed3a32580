"""``jfb-inverse benchmark``: run the standard benchmark set (speed, memory, quality, vs deepinv).

The benchmark scripts live in the source tree's ``benchmarks/`` folder (or, when packaged, in
``jfb_inverse.benchmarks``); this command runs ``benchmarks/run_all.py`` in-process.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from jfb_inverse.cli.common import console, user_errors

Device = Literal["cpu", "cuda"]
#: run_all's items (a copy: importing run_all here would load the benchmarks on every CLI start; a test
#: keeps the two equal).
ITEMS = ("step", "memory", "solver", "quality", "deepinv", "malloc", "hot_path", "kernels")


def _run_all_module() -> Any:
    """``run_all`` from the packaged benchmarks or the source checkout's ``benchmarks/`` folder."""
    from jfb_inverse.errors import UserError

    try:
        return importlib.import_module("jfb_inverse.benchmarks.run_all")
    except ImportError:
        pass
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not (folder / "run_all.py").is_file():
        raise UserError(
            "the benchmark scripts are not installed with this copy of jfb-inverse; run the command from a "
            "source checkout (pip install -e .) or `python benchmarks/run_all.py` there"
        )
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module("run_all")


@user_errors
def benchmark(
    # Not the checkout's benchmarks/results: run from the repository, a quick run replaced the saved
    # results that the README cites (`python benchmarks/run_all.py` writes there on purpose).
    out: Annotated[Path, typer.Option(help="Output folder for the JSON files, plots and summary.")] = Path(
        "benchmark-results"
    ),
    device: Annotated[Device, typer.Option(help="cpu, or cuda (synchronized timings, CUDA peak memory).")] = "cpu",
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes and few repeats: a smoke run of minutes.")] = False,
    only: Annotated[str | None, typer.Option(help=f"Comma-separated subset of: {', '.join(ITEMS)}.")] = None,
    problems: Annotated[
        str | None,
        typer.Option(help="Problems for the step and memory benchmarks (default deblur,ct; solver, quality: deblur)."),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="Trained deblur model (default: builtin:deblur, else a short training run).")
    ] = None,
    threads: Annotated[int, typer.Option(min=1, help="Torch intra-op threads for the timings.")] = 1,
    malloc_tuning: Annotated[bool, typer.Option(help="Tune glibc's allocator thresholds (as the CLI does).")] = True,
    repeats: Annotated[
        int | None, typer.Option(min=1, help="Timed repeats per contender (default per benchmark).")
    ] = None,
    budget: Annotated[
        float | None, typer.Option(min=1.0, help="Time-to-quality budget in seconds per training (default 240).")
    ] = None,
) -> None:
    """Run the standard benchmark set and write JSON + PNG files and a summary table under --out."""
    from jfb_inverse.errors import UserError

    items = [s.strip() for s in only.split(",") if s.strip()] if only is not None else None
    unknown = sorted(set(items or []) - set(ITEMS))
    if unknown:
        raise UserError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ITEMS)}")
    if checkpoint is not None:  # a missing one fails here in one line, not inside each benchmark
        from jfb_inverse.training.checkpoint import resolve_checkpoint_path

        resolve_checkpoint_path(checkpoint)
    run_all = _run_all_module()
    try:
        summary = run_all.run_all(
            out=out,
            device=device,
            quick=quick,
            only=items,
            problems=[p.strip() for p in problems.split(",") if p.strip()] if problems is not None else None,
            checkpoint=checkpoint,
            threads=threads,
            malloc_tuning=malloc_tuning,
            log=lambda msg: console.print(msg, highlight=False, markup=False),
            repeats=repeats,
            budget_s=budget,
        )
    except SystemExit as exc:  # the scripts' own refusals ("error: ..."): one line and exit 2 here too
        if isinstance(exc.code, str):
            raise UserError(exc.code.removeprefix("error: ")) from None
        raise
    console.print(f"results in {out}/ (summary.md, summary.json, a JSON file per benchmark, plots where drawn)")
    if summary["errors"]:
        raise UserError(f"benchmark(s) failed: {', '.join(summary['errors'])}; see the messages above")
