"""``jfb-inverse simulate`` and ``jfb-inverse reconstruct``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer
from jfb_inverse.cli.common import (
    DeviceOption,
    EquivarianceOption,
    MaxIterOption,
    MovedOperatorOption,
    NoiseSeedOption,
    TolOption,
    TrustOperatorOption,
    absolute_paths,
    check_config_file,
    console,
    debug_enabled,
    err_console,
    override_evaluation,
    stdout_is_terminal,
    user_errors,
    warn,
)
from rich.markup import escape
from rich.progress import track

# A choice, not a free string: output names are built from it and must stay inside --output.
OutputFormat = Literal["png", "tif", "npy"]


@user_errors
def simulate(
    input: Annotated[Path, typer.Option("--input", help="Clean image (PNG/JPEG/TIFF/npy).")],
    output: Annotated[Path, typer.Option("--output", help="Measurement file: .npy (always) or .png/.tif.")],
    problem: Annotated[str | None, typer.Option(help="Registered problem.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON definition.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Take the definition from a checkpoint.")] = None,
    seed: NoiseSeedOption = 0,
    noise_sigma: Annotated[float | None, typer.Option(min=0, help="Override the noise level.")] = None,
    trust_operator: TrustOperatorOption = False,
    operator: MovedOperatorOption = None,
) -> None:
    """Simulate measurements of a clean image with a problem's operator and noise."""
    import torch
    from jfb_inverse.datasets import load_image
    from jfb_inverse.datasets.images import UNIT_RANGE_SLACK

    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import check_output_path, provenance, provenance_path, write_array, write_json
    from jfb_inverse.problems import config_from_file_or_problem
    from jfb_inverse.problems.registry import resolve_config

    check_output_path(output)
    if provenance_path(output).is_dir():
        raise UserError(
            f"{str(provenance_path(output))!r}, where simulate records how {output.name!r} was made, is a folder; "
            "remove it or choose another --output"
        )
    if input.is_dir():
        raise UserError(f"input {str(input)!r} is a folder; simulate takes one clean image (PNG/JPEG/TIFF/npy)")
    if not input.is_file():
        raise UserError(f"input {str(input)!r} not found; give a clean image (PNG/JPEG/TIFF/npy)")
    _refuse_overwriting_input(input, output)
    if operator is not None and checkpoint is None:
        raise UserError(
            "--operator points a --checkpoint at its operator's moved file; to simulate with a custom operator "
            'without a checkpoint, give --config FILE with an [operator] table (kind = "custom", target = ...)'
        )
    _one_definition_source(problem, config, checkpoint)
    # Loaded once the paths are checked: they import deepinv (3 s here).
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import simulate as simulate_measurements
    from jfb_inverse.problems.custom import ensure_trusted, relocate_operator
    from jfb_inverse.problems.noise import noise_std_bound
    from jfb_inverse.problems.operators import with_embedded_kernel

    overrides = {"noise": {"sigma": noise_sigma}} if noise_sigma is not None else {}
    if checkpoint is not None:
        from jfb_inverse.training.checkpoint import load_checkpoint

        _, cfg = load_checkpoint(checkpoint)
        if operator is not None:
            cfg = relocate_operator(cfg, operator)
        ensure_trusted(cfg, trust_operator or ([operator] if operator else []))
        if overrides:
            cfg = cfg.model_copy(update={"noise": cfg.noise.model_copy(update=overrides["noise"])})
    else:
        if config is not None:
            check_config_file(config)
        cfg = (
            config_from_file_or_problem(problem, config, overrides)
            if config
            else resolve_config(problem or "", overrides=overrides)
        )
        # The operator as a trained run records it (a kernel file's numbers, absolute file names):
        # reconstruct then compares operators, not the names they were read by.
        cfg = with_embedded_kernel(absolute_paths(cfg))
    x = load_image(input, channels=cfg.data.channels, check_range=True, note=warn)
    physics = PhysicsCache(cfg, torch.device("cpu")).for_image(tuple(x.shape))
    gen = torch.Generator().manual_seed(seed)
    y = simulate_measurements(x[None], physics, cfg.noise, gen)[0]
    # A PNG clips the noise of dark and bright pixels (up to 5 of its standard deviations at the
    # brightest value) and refuses what goes further: values the image's range does not explain,
    # as a CT sinogram's often do.
    write_array(y, output, png_slack=UNIT_RANGE_SLACK + 5 * noise_std_bound(cfg.noise, y))
    try:  # how it was made, so that `reconstruct` can refuse a checkpoint of another operator
        write_json(provenance(cfg, tuple(x.shape), seed), provenance_path(output))
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    console.print(
        f"{escape(cfg.problem)}: {tuple(x.shape)} image -> {tuple(y.shape)} measurement written to "
        f"{escape(str(output))}"
    )


@user_errors
def reconstruct(
    checkpoint: Annotated[str, typer.Option(help="model.pt from `train`, or builtin:NAME.")],
    input: Annotated[Path, typer.Option("--input", help="Measurement file (.npy/.png/.tif/.jpg) or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", help="Output file (.png/.tif/.npy) or folder.")],
    device: DeviceOption = "auto",
    format: Annotated[
        OutputFormat | None, typer.Option(help="Output type in folder mode (default png); a file's name sets its own.")
    ] = None,
    trust_operator: TrustOperatorOption = False,
    operator: MovedOperatorOption = None,
    tol: TolOption = None,
    max_iter: MaxIterOption = None,
    equivariance: EquivarianceOption = None,
) -> None:
    """Reconstruct images from measurements with a trained model (any image size).

    Folder mode reconstructs every .npy/.png/.tif/.jpg file into --output as NAME.FORMAT; a file that
    fails is reported and skipped (exit code 1 when some were skipped, 2 when all were).
    """
    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import IMAGE_SUFFIXES, check_output_path
    from jfb_inverse.training.checkpoint import load_checkpoint, load_model
    from jfb_inverse.training.device import resolve_device

    # Cheap checks first: a wrong path fails in milliseconds, before the model is loaded.
    if not input.exists():
        raise UserError(f"input {str(input)!r} not found; give an existing .npy or image file, or a folder of them")
    files: list[Path] = []
    folder_format = format or "png"
    if input.is_dir():
        if output.exists() and not output.is_dir():
            raise UserError(f"--output {str(output)!r} must be a folder when --input is a folder")
        if not output.exists() and output.suffix.lower() in IMAGE_SUFFIXES | {".npy"}:
            raise UserError(
                f"--output {str(output)!r} names a file, but --input is a folder: give a folder for the results "
                "(--format sets their type)"
            )
        # Hidden files are left out as the training and evaluation folders leave them out: a macOS
        # copy's "._name.npy" resource forks are not measurements.
        readable = IMAGE_SUFFIXES | {".npy"}
        files = sorted(p for p in input.iterdir() if p.suffix.lower() in readable and not p.name.startswith("."))
        if not files:
            raise UserError(f"folder {str(input)!r} holds no measurements ({', '.join(sorted(readable))})")
        _check_folder_targets(files, output, folder_format)
    else:
        if format is not None and output.suffix.lower().replace(".tiff", ".tif") != f".{format}":
            raise UserError(
                f"--format {format} is for folder mode; the output file name {output.name!r} sets the type: "
                f"drop --format or name the file *.{format}"
            )
        if output.is_dir():
            raise UserError(f"--output {str(output)!r} is a folder; give a file name (.png/.tif/.npy)")
        if not output.suffix:  # a folder to be, most likely (outdir/): folder mode needs a folder of inputs
            raise UserError(
                f"--output {str(output)!r} has no file type and --input is one file; give a file name such as "
                f"{str(output / (input.stem + '.png'))!r} (a folder --output is for a folder --input)"
            )
        check_output_path(output)
        _refuse_overwriting_input(input, output)
    dev = resolve_device(device)
    model, cfg, physics = load_model(checkpoint, dev, trust_operator, operator)
    # Measurements simulated before the operator's file moved name its old place: the same operator.
    moved_from = load_checkpoint(checkpoint)[1].operator.target if operator is not None else None
    override_evaluation(model, tol, max_iter, equivariance)
    if input.is_dir():
        created = not output.exists()
        output.mkdir(parents=True, exist_ok=True)
        root = output.resolve()
        failures = 0
        # One file at a time (bounded memory); a bad file is reported and skipped, the others go on.
        for path in track(files, description="reconstruct", console=console, disable=not stdout_is_terminal()):
            target = output / f"{path.stem}.{folder_format}"
            try:
                if target.resolve().parent != root:  # never write outside --output (e.g. through a link)
                    raise UserError(f"output {str(target)!r} would be outside {str(output)!r}")
                _reconstruct_one(model, cfg, physics, path, target, dev, checkpoint=checkpoint, moved_from=moved_from)
            except Exception as exc:
                if debug_enabled():
                    raise
                failures += 1
                reason = str(exc) if isinstance(exc, UserError) else f"unexpected {type(exc).__name__}: {exc}"
                reason = " ".join(reason.splitlines())
                err_console.print(f"[red]skipped[/] {escape(path.name)}: {escape(reason)}", highlight=False)
        if failures == len(files):
            if created and not any(output.iterdir()):
                output.rmdir()  # nothing was written: leave no empty folder behind
            raise UserError(f"none of the {len(files)} measurements in {str(input)!r} could be reconstructed (above)")
        console.print(f"{len(files) - failures} of {len(files)} reconstructed into {escape(str(output))}")
        if failures:
            raise typer.Exit(code=1)
        return
    _reconstruct_one(
        model, cfg, physics, input, output, dev, verbose=True, checkpoint=checkpoint, moved_from=moved_from
    )


def _one_definition_source(problem: str | None, config: Path | None, checkpoint: str | None) -> None:
    """Exactly one of --problem, --config, --checkpoint says which operator to use (with --config,
    --problem may name the file's problem)."""
    from jfb_inverse.errors import UserError

    if checkpoint is not None and (problem is not None or config is not None):
        given = "--problem" if problem is not None else "--config"
        raise UserError(f"give either --checkpoint or {given}, not both: the checkpoint already defines the operator")
    if problem is None and config is None and checkpoint is None:
        raise UserError("say which operator to use: --problem NAME, --config FILE or --checkpoint FILE")


def _refuse_overwriting_input(input: Path, output: Path) -> None:
    """The output must not replace the input it is computed from."""
    from jfb_inverse.errors import UserError

    if output.resolve() == input.resolve():
        raise UserError(f"--output {str(output)!r} is the input file; write the result to another file")


def _check_folder_targets(files: list[Path], output: Path, format: str) -> None:
    """Folder mode writes NAME.FORMAT per input: refuse two inputs with one name (one result would be
    lost) and a result that would replace an input."""
    from jfb_inverse.errors import UserError

    # Compared case-folded: on macOS and Windows a.png and A.PNG are one file.
    inputs = {str(p.resolve()).casefold() for p in files}
    seen: dict[str, Path] = {}
    for path in files:
        key = path.stem.casefold()
        if key in seen:
            first = seen[key]
            where = (
                f"both be written as {path.stem}.{format}"
                if first.stem == path.stem
                else f"be written as {first.stem}.{format} and {path.stem}.{format}, one file on macOS and Windows"
            )
            raise UserError(
                f"{first.name!r} and {path.name!r} would {where}; rename one, or reconstruct them separately"
            )
        seen[key] = path
        if str((output / f"{path.stem}.{format}").resolve()).casefold() in inputs:
            raise UserError(
                f"the result of {path.name!r} would replace an input file in {str(output)!r}; "
                "give another --output folder or --format"
            )


def solve_counting_iterations(model, y, physics, on_iteration: Callable[[int], None]):
    """``model(y, physics)``, calling ``on_iteration(k)`` after the solve's ``k``-th application of
    ``T`` (counted by the regulariser's calls: one per group element of its averaging)."""
    from jfb_inverse.models.equivariance import group_elements

    per_iteration = len(group_elements(model.equivariance))
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1
        if calls % per_iteration == 0:
            on_iteration(calls // per_iteration)

    handle = model.regularizer.register_forward_hook(count)
    try:
        return model(y, physics)
    finally:
        handle.remove()


def _reconstruct_one(
    model,
    cfg,
    physics,
    path: Path,
    out_path: Path,
    dev,
    verbose: bool = False,
    checkpoint: str = "the checkpoint",
    moved_from: str | None = None,
) -> None:
    import torch

    from jfb_inverse.measurements import (
        UNMEASURED_SHARE_WARNING,
        check_fits,
        check_provenance,
        flat_measurement_shape,
        provenance_image_shape,
        read_measurement,
        unmeasured_share,
        write_array,
    )

    # A 2-D .npy array is a grey (H, W) image unless the operator is known to make flat (C, m) measurements.
    y = read_measurement(path, cfg.data.channels, note=warn, shape=flat_measurement_shape(path, cfg, physics)).to(dev)
    mismatch = check_provenance(path, cfg, checkpoint, moved_from)  # raises for another operator kind
    phys = check_fits(y, cfg, physics, str(path), provenance_image_shape(path))
    if mismatch:
        warn(mismatch)
    share = unmeasured_share(y, phys)
    if share > UNMEASURED_SHARE_WARNING:
        warn(
            f"{path.name}: {share:.0%} of the measurement's energy lies where the checkpoint's operator measures "
            "nothing (made with another mask? MRI k-space not centred, i.e. not fftshifted?); it is ignored"
        )
    # One file on a terminal shows its iteration count as it goes (a folder shows a bar over its
    # files). Not with CUDA graphs: a replayed graph calls no forward hook.
    graphed = y.is_cuda and getattr(model.eval_solver, "cuda_graph", False)
    with torch.inference_mode():
        if verbose and stdout_is_terminal() and not graphed:

            def line(k: int) -> str:
                return f"{escape(path.name)}: fixed-point iteration {k} (at most {model.eval_solver.max_iter})"

            with console.status(line(0)) as status:
                x = solve_counting_iterations(model, y[None], phys, lambda k: status.update(line(k)))[0]
        else:
            x = model(y[None], phys)[0]
    write_array(x.clamp(0, 1) if out_path.suffix.lower() != ".npy" else x, out_path)
    stats = model.last_stats
    if stats is not None and not stats.all_converged:
        warn(
            f"{path.name}: the fixed-point solve stopped at max_iter ({int(stats.iterations.max())}) with residual "
            f"{float(stats.residual.max()):.2e} > tol {stats.tol:g}; the best iterate was kept (raise --max-iter "
            "or loosen --tol to go further)"
        )
    if verbose and stats is not None:
        console.print(
            f"{escape(path.name)} -> {escape(str(out_path))}: {int(stats.iterations.max())} fixed-point iterations, "
            f"relative residual {float(stats.residual.max()):.2e} (tol {stats.tol:g})"
        )
