"""What a checkpoint holds, as plain values: the problem, network, solver and training it records.

Reading a checkpoint this way never runs a custom operator's code: the network is built without
physics (those are built on first use), so no ``--trust-operator`` is needed to look.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jfb_inverse.problems.config import used_fields
from jfb_inverse.training.checkpoint import load_checkpoint, resolve_checkpoint_path

#: The held-out report ``train`` writes beside its model (``evaluate --json``'s schema, with the
#: scored checkpoint's step in ``settings.checkpoint_step``).
EVALUATION_FILE = "evaluation.json"


def describe_checkpoint(name: str | Path) -> dict[str, Any]:
    """A JSON-ready summary of the checkpoint ``name`` (a ``model.pt``, a run folder or ``builtin:NAME``).

    Keys: ``checkpoint`` (its file), ``problem``, ``operator`` and ``noise`` (as the definition
    records them; a kernel's numbers shown by their shape), ``model`` (the map, the network and
    its size, the learned step size), ``solver`` (training and reconstruction), ``training`` (steps
    done and planned, seconds, finished, the recipe), ``data``, ``last_log`` (the last line of
    ``history.jsonl`` beside the checkpoint up to its step, or ``None``), ``held_out`` (the mean scores of the final
    evaluation ``train`` wrote beside it, when it scored these weights, or ``None``) and, for a
    custom operator read from a file, ``operator_file`` (its path and whether it is still there).
    """
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems.custom import is_file_target

    path = resolve_checkpoint_path(name)
    payload, cfg = load_checkpoint(path)
    model, _ = build_model(cfg, "cpu")  # physics are built lazily: no operator code runs here
    model.load_state_dict(payload["state_dict"])
    operator = used_fields(cfg.operator.model_dump(mode="json"))
    values = operator.get("values")
    if isinstance(values, list) and values and isinstance(values[0], list):
        operator["values"] = f"<{len(values)}x{len(values[0])} kernel>"
    noise = used_fields(cfg.noise.model_dump(mode="json"))
    m, s, t = cfg.model, cfg.solver, cfg.training
    plan = payload.get("step_plan") or {}
    step = int(payload.get("step", 0))
    planned = int(plan.get("planned") or t.steps)
    summary: dict[str, Any] = {
        "checkpoint": str(path),
        "problem": cfg.problem,
        "operator": operator,
        "noise": noise,
        "model": {
            "step": m.step,
            "network": f"dilated CNN, width {m.width}, {m.depth} layers"
            if m.arch == "dilated"
            else f"U-Net, width {m.width}",
            "parameters": sum(p.numel() for p in model.regularizer.parameters()),
            "eta": round(float(model.eta.detach()), 6),
            "learn_eta": m.learn_eta,
            "equivariance": m.equivariance,
            "input_injection": m.input_injection,
            "bias": m.bias,
            "spectral_norm": m.spectral_norm,
        },
        "solver": {
            "training": {"name": s.name, "tol": s.tol, "max_iter": s.max_iter},
            "reconstruction": {"name": s.name, "tol": s.eval_tol, "max_iter": s.eval_max_iter},
        },
        "training": {
            "steps_done": step,
            "steps_planned": planned,
            "seconds": round(float(payload.get("seconds", 0.0)), 1),
            # Against the run's plan (a time budget fits it): a stopped run is resumable, not finished.
            "finished": step >= planned,
            "gradient": t.gradient,
            "optimizer": t.optimizer,
            "lr": t.lr,
            "muon_lr": t.muon_lr if t.optimizer == "muon" else None,
            "minutes": t.minutes,
            "plan_fitted": bool(plan.get("fits_done")),
            "batch_size": t.batch_size,
            "patch_size": cfg.data.patch_size,
            "precision": t.precision,
            # Where and in which precision the run last trained (checkpoints before it: None).
            "ran_on": payload.get("ran_on"),
            "seed": t.seed,
            "init_from": t.init_from,
            "resumable": "optimizer" in payload,
        },
        "data": {"source": cfg.data.source, "channels": cfg.data.channels, "path": cfg.data.path},
        "last_log": None,
        "held_out": None,
    }
    if not str(name).startswith("builtin:"):  # a run folder's files, never the package's own folder
        summary["last_log"] = last_log(path.parent / "history.jsonl", step)
        summary["held_out"] = _held_out(path.parent / EVALUATION_FILE, step)
    if cfg.operator.kind == "custom":
        source = cfg.operator.target.rpartition(":")[0]
        if is_file_target(source):
            summary["operator_file"] = {"path": source, "exists": Path(source).is_file()}
    return summary


def _held_out(report_path: Path, step: int) -> dict[str, Any] | None:
    """The mean scores of the run's final held-out evaluation, when it scored these weights."""
    try:
        report = json.loads(report_path.read_text())
        if report["settings"]["checkpoint_step"] != step:
            return None  # an older evaluation (the run went on without finishing the next one)
        mean = report["mean"]
        baselines = {k: v for k, v in mean["psnr"].items() if k not in ("model", "measurement")}
        best = max(baselines, key=baselines.get) if baselines else None
        return {
            "images": [row["name"] for row in report["images"]],
            "psnr": mean["psnr"],
            "ssim": mean["ssim"],
            "best_baseline": best,
            "gain_db": round(mean["psnr"]["model"] - baselines[best], 4) if best else None,
            "iterations": [row.get("iterations") for row in report["images"]],
            "converged": all(row.get("converged", True) for row in report["images"]),
        }
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # no report, or not one of ours: nothing to show


def last_log(history: Path, step: int) -> dict[str, Any] | None:
    """The last complete JSON line of a run's history at or before ``step`` (the saved weights'; a
    killed run logged further than its last checkpoint, and ``--resume`` drops those lines), or
    ``None`` (no file, or nothing readable)."""
    try:
        lines = history.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interrupted write
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            return record
    return None
