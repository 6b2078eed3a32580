"""``jfb-inverse simulate`` and ``jfb-inverse reconstruct``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from jfb_inverse.cli.common import console, err_console, override_solver, stdout_is_terminal, user_errors, warn
from rich.progress import track

Device = Literal["auto", "cpu", "cuda"]


@user_errors
def simulate(
    input: Annotated[Path, typer.Option("--input", help="Clean image (PNG/JPEG/TIFF/npy).")],
    output: Annotated[Path, typer.Option("--output", help="Measurement file: .npy (always) or .png/.tif.")],
    problem: Annotated[str | None, typer.Option(help="Registered problem.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON definition.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Take the definition from a checkpoint.")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    noise_sigma: Annotated[float | None, typer.Option(min=0, help="Override the noise level.")] = None,
    trust_operator: Annotated[
        bool, typer.Option("--trust-operator", help="Import the checkpoint's custom operator (runs its code).")
    ] = False,
) -> None:
    """Simulate measurements of a clean image with a problem's operator and noise."""
    import torch
    from jfb_inverse.datasets import load_image

    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import write_array
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import config_from_file_or_problem
    from jfb_inverse.problems import simulate as simulate_measurements
    from jfb_inverse.problems.custom import ensure_trusted
    from jfb_inverse.problems.registry import resolve_config

    overrides = {"noise": {"sigma": noise_sigma}} if noise_sigma is not None else {}
    if checkpoint is not None:
        from jfb_inverse.training.checkpoint import load_checkpoint

        _, cfg = load_checkpoint(checkpoint)
        ensure_trusted(cfg, trust_operator)
        if overrides:
            cfg = cfg.model_copy(update={"noise": cfg.noise.model_copy(update=overrides["noise"])})
    elif problem is None and config is None:
        raise UserError("say which operator to use: --problem NAME, --config FILE or --checkpoint FILE")
    else:
        cfg = (
            config_from_file_or_problem(problem, config, overrides)
            if config
            else resolve_config(problem or "", overrides=overrides)
        )
    x = load_image(input, channels=cfg.data.channels)
    physics = PhysicsCache(cfg, torch.device("cpu")).for_image(tuple(x.shape))
    gen = torch.Generator().manual_seed(seed)
    y = simulate_measurements(x[None], physics, cfg.noise, gen)[0]
    write_array(y, output)
    console.print(f"{cfg.problem}: {tuple(x.shape)} image -> {tuple(y.shape)} measurement written to {output}")


@user_errors
def reconstruct(
    checkpoint: Annotated[str, typer.Option(help="model.pt from `train`, or builtin:NAME.")],
    input: Annotated[Path, typer.Option("--input", help="Measurement file (.npy/.png/.tif) or a folder of them.")],
    output: Annotated[Path, typer.Option("--output", help="Output file (.png/.tif/.npy) or folder.")],
    device: Annotated[Device, typer.Option(help="auto picks CUDA when present.")] = "auto",
    format: Annotated[str, typer.Option(help="Output type in folder mode: png, tif or npy.")] = "png",
    trust_operator: Annotated[
        bool, typer.Option("--trust-operator", help="Import the checkpoint's custom operator (runs its code).")
    ] = False,
    tol: Annotated[
        float | None, typer.Option(min=0, help="Override the fixed-point tolerance of the checkpoint.")
    ] = None,
    max_iter: Annotated[int | None, typer.Option(min=1, help="Override the fixed-point iteration cap.")] = None,
) -> None:
    """Reconstruct images from measurements with a trained model (any image size)."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import IMAGE_SUFFIXES
    from jfb_inverse.problems.custom import ensure_trusted
    from jfb_inverse.training.checkpoint import load_model
    from jfb_inverse.training.device import resolve_device

    dev = resolve_device(device)
    model, cfg, physics = load_model(checkpoint, dev)
    ensure_trusted(cfg, trust_operator)
    override_solver(model, tol, max_iter)
    if input.is_dir():
        files = sorted(p for p in input.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | {".npy"})
        if not files:
            raise UserError(f"folder {str(input)!r} holds no .npy/.png/.tif measurements")
        if output.exists() and not output.is_dir():
            raise UserError(f"--output {str(output)!r} must be a folder when --input is a folder")
        output.mkdir(parents=True, exist_ok=True)
        failures = 0
        for path in track(files, description="reconstruct", console=console, disable=not stdout_is_terminal()):
            try:
                _reconstruct_one(model, cfg, physics, path, output / f"{path.stem}.{format.lstrip('.')}", dev)
            except UserError as exc:
                failures += 1
                err_console.print(f"[red]skipped[/] {path.name}: {exc}", highlight=False)
        console.print(f"{len(files) - failures} of {len(files)} reconstructed into {output}")
        if failures:
            raise typer.Exit(code=1)
        return
    _reconstruct_one(model, cfg, physics, input, output, dev, verbose=True)


def _reconstruct_one(model, cfg, physics, path: Path, out_path: Path, dev, verbose: bool = False) -> None:
    import torch

    from jfb_inverse.measurements import check_fits, read_measurement, write_array

    y = read_measurement(path, cfg.data.channels).to(dev)
    check_fits(y, cfg, physics, str(path))
    with torch.inference_mode():
        x = model(y[None])[0]
    write_array(x.clamp(0, 1) if out_path.suffix.lower() != ".npy" else x, out_path)
    stats = model.last_stats
    if stats is not None and not stats.all_converged:
        warn(
            f"{path.name}: the fixed-point solve stopped at max_iter ({int(stats.iterations.max())}) with residual "
            f"{float(stats.residual.max()):.2e} > tol {stats.tol:g}; the best iterate was kept"
        )
    if verbose and stats is not None:
        console.print(
            f"{path.name} -> {out_path}: {int(stats.iterations.max())} fixed-point iterations, "
            f"relative residual {float(stats.residual.max()):.2e} (tol {stats.tol:g})"
        )
