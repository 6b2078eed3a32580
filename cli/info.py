"""``jfb-inverse info``: what a checkpoint holds, without running it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from jfb_inverse.cli.common import console, user_errors
from rich.markup import escape
from rich.table import Table


@user_errors
def info(
    checkpoint: Annotated[str, typer.Option(help="model.pt from `train`, a run folder, or builtin:NAME.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON.")] = None,
) -> None:
    """Show a checkpoint's problem, network, solver and training (never runs a custom operator)."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import write_json
    from jfb_inverse.training.summary import describe_checkpoint

    if json_path is not None:
        if json_path.suffix.lower() != ".json":
            raise UserError(f"--json {str(json_path)!r}: give a file name ending in .json")
        if not json_path.parent.is_dir():
            raise UserError(f"output folder {str(json_path.parent)!r} does not exist; create it first")
    summary = describe_checkpoint(checkpoint)
    table = Table("", "", show_header=False, box=None, title=f"checkpoint {escape(checkpoint)}")
    for key, value in _rows(summary):
        table.add_row(key, escape(value))
    console.print(table)
    if json_path is not None:
        write_json(summary, json_path)


def _rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary as ``(label, line)`` pairs for people."""
    model, training, solver = s["model"], s["training"], s["solver"]
    operator = {k: v for k, v in s["operator"].items() if k != "kind" and v is not None}
    rows = [
        ("file", s["checkpoint"]),
        ("problem", s["problem"]),
        ("operator", f"{s['operator']['kind']}: {_pairs(operator)}"),
        ("noise", _pairs(s["noise"])),
        (
            "model",
            f"{model['step']} step, {model['network']} ({model['parameters']:,} parameters), "
            f"eta {model['eta']:.4g} ({'learned' if model['learn_eta'] else 'fixed'}), "
            f"equivariance {model['equivariance']}",
        ),
        (
            "solver",
            f"{solver['training']['name']}: training tol {solver['training']['tol']:g}, at most "
            f"{solver['training']['max_iter']}; reconstruction tol {solver['reconstruction']['tol']:g}, at most "
            f"{solver['reconstruction']['max_iter']}",
        ),
        (
            "training",
            f"{_progress(training)} ({_state(training)}) in {_duration(training['seconds'])}; "
            f"{training['gradient']} gradient, {_optimizer(training)}, batch {training['batch_size']} of "
            f"{training['patch_size']} px, precision {_precision(training)}, seed {training['seed']}"
            + (f", from {training['init_from']}" if training["init_from"] else ""),
        ),
        ("data", _data(s["data"])),
    ]
    if s["last_log"]:
        log = s["last_log"]
        shown = {k: log[k] for k in ("loss", "psnr", "iterations", "converged") if k in log}
        rows.append(("last log", f"step {log.get('step', '?')}: {_pairs(shown)}"))
    if s["held_out"]:
        held = s["held_out"]
        line = f"model {held['psnr']['model']:.2f} dB / SSIM {held['ssim']['model']:.3f} on {', '.join(held['images'])}"
        if held["best_baseline"]:
            best = held["best_baseline"]
            line += f"; best baseline {best} {held['psnr'][best]:.2f} dB ({held['gain_db']:+.2f} dB)"
        line += "; solves converged" if held["converged"] else "; some solves did not converge"
        rows.append(("held out", line))
    if "operator_file" in s:
        file = s["operator_file"]
        state = "present" if file["exists"] else "missing: name where it is now with --operator PATH.py:Class"
        rows.append(("operator file", f"{file['path']} ({state})"))
    return rows


def _progress(training: dict[str, Any]) -> str:
    """``done of planned steps``, with the time budget that plans them when there is one."""
    done, planned, minutes = training["steps_done"], training["steps_planned"], training["minutes"]
    if minutes is None:
        return f"{done:,} of {planned:,} steps"
    if training["plan_fitted"]:
        return f"{done:,} of {planned:,} steps (fitted to a {minutes:g}-minute budget)"
    if training["finished"]:  # the steps ran out before the budget measured the machine's speed
        return f"{done:,} of {planned:,} steps (within a {minutes:g}-minute budget)"
    return f"{done:,} step{'s' * (done != 1)} of a {minutes:g}-minute budget (not yet fitted to a step count)"


def _precision(training: dict[str, Any]) -> str:
    """``auto`` with what it ran as (bf16 on a CPU with native bf16, else fp32), where the run recorded it."""
    ran = training.get("ran_on")
    if training["precision"] != "auto" or not ran:
        return training["precision"]
    return f"auto ({ran['precision']} on {ran['device']})"


def _optimizer(training: dict[str, Any]) -> str:
    if training["optimizer"] == "muon":
        return f"muon lr {training['muon_lr']:g} (adam lr {training['lr']:g} for the rest)"
    return f"{training['optimizer']} lr {training['lr']:g}"


def _state(training: dict[str, Any]) -> str:
    if training["finished"]:
        return "finished"
    return "not finished: train --resume continues it" if training["resumable"] else "not finished"


def _pairs(values: dict[str, Any]) -> str:
    """``key value, key value`` with floats short."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def _duration(seconds: float) -> str:
    """``1 h 03 min``, ``7 min 19 s`` or ``42 s``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _data(data: dict[str, Any]) -> str:
    """The training source, and the images' channels, which decide what the checkpoint reconstructs."""
    channels = data.get("channels", 1)
    kind = "grey (1 channel)" if channels == 1 else "RGB (3 channels)" if channels == 3 else f"{channels} channels"
    return data["source"] + (f" {data['path']}" if data["path"] else "") + f", {kind}"
