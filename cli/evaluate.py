"""``jfb-inverse evaluate``: PSNR/SSIM of a model against classical baselines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from jfb_inverse.cli.common import (
    DeviceOption,
    EquivarianceOption,
    MaxIterOption,
    MovedOperatorOption,
    NoiseSeedOption,
    TolOption,
    TrustOperatorOption,
    console,
    override_evaluation,
    unconverged_note,
    user_errors,
    warn,
)
from rich.markup import escape
from rich.table import Table

#: Figure formats matplotlib writes without extra packages.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff")


@user_errors
def evaluate(
    checkpoint: Annotated[str, typer.Option(help="model.pt from `train`, or builtin:NAME.")],
    images: Annotated[Path | None, typer.Option(help="Folder of clean images (default: the held-out split).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    figure: Annotated[
        Path | None, typer.Option(help="Write a side-by-side figure (.png, .pdf, .svg, .jpg or .tif).")
    ] = None,
    seed: NoiseSeedOption = 0,
    device: DeviceOption = "auto",
    trust_operator: TrustOperatorOption = False,
    operator: MovedOperatorOption = None,
    tol: TolOption = None,
    max_iter: MaxIterOption = None,
    equivariance: EquivarianceOption = None,
) -> None:
    """Simulate measurements of clean images, reconstruct with the model and baselines, report PSNR/SSIM."""
    from jfb_inverse.datasets import load_folder

    from jfb_inverse.errors import UserError

    # Every output is checked before the evaluation runs: a bad name must not cost minutes of work
    # and leave half of the outputs written.
    for target in (json_path, figure):
        if target is not None and not target.parent.is_dir():
            raise UserError(f"output folder {str(target.parent)!r} does not exist; create it first")
        if target is not None and target.is_dir():
            raise UserError(f"{str(target)!r} is a folder; give a file name")
        if target is not None and not os.access(target if target.exists() else target.parent, os.W_OK):
            raise UserError(f"cannot write {str(target)!r} (permission denied); choose a file you can write")
    if json_path is not None and json_path.suffix.lower() != ".json":
        raise UserError(f"--json {str(json_path)!r}: give a file name ending in .json")
    if figure is not None and figure.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"--figure {str(figure)!r}: give a file name ending in {', '.join(FIGURE_SUFFIXES)}")
    if images is not None:  # the files load_folder reads below (a bad folder fails here, as it would there)
        from jfb_inverse.datasets.images import image_files

        inputs = {p.resolve() for p in image_files(images)}
        for option, target in (("--json", json_path), ("--figure", figure)):
            if target is not None and target.resolve() in inputs:
                raise UserError(f"{option} {str(target)!r} is one of the --images inputs; write it to another file")
    # Loaded once the outputs are checked: they import deepinv (3 s here).
    from jfb_inverse.evaluation import comparison_figure
    from jfb_inverse.evaluation import evaluate as run_evaluation
    from jfb_inverse.training.checkpoint import load_model
    from jfb_inverse.training.data import evaluation_images
    from jfb_inverse.training.device import resolve_device

    dev = resolve_device(device)
    model, cfg, physics = load_model(checkpoint, dev, trust_operator, operator)
    override_evaluation(model, tol, max_iter, equivariance)
    clean = load_folder(images, channels=cfg.data.channels, note=warn) if images else evaluation_images(cfg.data)
    ev = run_evaluation(model, physics, cfg, clean, seed=seed)
    report = ev.report
    methods = list(report["mean"]["psnr"])
    table = Table("image", *methods, title=f"PSNR (dB) / SSIM, {cfg.problem}")
    for row in report["images"] + [{"name": "mean", **report["mean"]}]:
        table.add_row(escape(row["name"]), *(f"{row['psnr'][m]:.2f} / {row['ssim'][m]:.3f}" for m in methods))
    console.print(table)
    console.print(f"fixed-point iterations per image: {ev.iterations}")
    note = unconverged_note([row["name"] for row in report["images"]], ev.converged, "evaluate")
    if note:
        warn(note)
    # The figure first: it is the one that can still fail (matplotlib, an odd file system), and a
    # failure must not leave the JSON written alone.
    if figure is not None:
        comparison_figure(ev, figure)
    if json_path is not None:
        from jfb_inverse.measurements import write_json

        write_json(report, json_path)
