"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no code runs on load).

A checkpoint is a dict of tensors and plain values: the format tag, the resolved problem
definition (JSON text), the model weights, and the training state (optimiser, scheduler, step,
RNG states; with ``training.batch_reuse > 1``, until the run completes, also the batches in
flight: up to ``reuse_gap`` global batches of patches, measurements and fixed points).
``builtin:NAME`` names a model shipped inside the package.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
import torch
from pydantic import ValidationError

from jfb_inverse.atomic import atomic_write_bytes
from jfb_inverse.errors import CheckpointError, UserError
from jfb_inverse.problems.config import ProblemConfig
from jfb_inverse.problems.registry import format_validation_error

FORMAT = "jfb-inverse-checkpoint/1"


def save_checkpoint(path: str | Path, cfg: ProblemConfig, state_dict: dict[str, Any], **training_state: Any) -> None:
    """Save weights, definition and training state to ``path`` atomically; ``problem.toml`` beside it."""
    path = Path(path)
    payload = {"format": FORMAT, "config": cfg.model_dump_json(), "state_dict": state_dict, **training_state}
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh))
    # problem.toml is reused as a --config: it leaves out max_minutes, one invocation's hard stop
    # (as --resume drops it), which would otherwise stop every run made from the file.
    definition = cfg.model_dump(mode="json", exclude_none=True, exclude={"training": {"max_minutes"}})
    toml_text = tomli_w.dumps(definition).encode()
    atomic_write_bytes(path.parent / "problem.toml", lambda fh: fh.write(toml_text))


def resolve_checkpoint_path(name: str | Path) -> Path:
    """``builtin:NAME`` -> the packaged file; a folder -> its ``model.pt``; else the path itself."""
    text = str(name)
    if text.startswith("builtin:"):
        key = text.split(":", 1)[1]
        resource = resources.files("jfb_inverse.builtin") / f"{key}.pt"
        if not resource.is_file():
            available = sorted(
                p.name[:-3] for p in resources.files("jfb_inverse.builtin").iterdir() if p.name.endswith(".pt")
            )
            raise CheckpointError(f"no built-in model {key!r}; available: {', '.join(available) or 'none'}")
        return Path(str(resource))
    path = Path(text)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; pass a model.pt written by `jfb-inverse train`")
    return path


def _detail(exc: BaseException) -> str:
    """The informative line of a load error (torch wraps the reason in paragraphs of advice)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    for line in str(exc).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if line and not line.startswith(boilerplate):
            return line
    return type(exc).__name__


def load_checkpoint(name: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], ProblemConfig]:
    """Load a checkpoint safely (``weights_only=True``) and validate its definition.

    A file holding anything but tensors and plain values (a pickle that would import or call code)
    is refused before any of it runs; an empty, truncated or garbage file is reported as such.
    """
    path = resolve_checkpoint_path(name)
    _check_device_exists(map_location)
    with path.open("rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive ("PK"); old torch versions and plain pickles start with PROTO (0x80).
    if not head.startswith((b"PK", b"\x80")):
        what = "is empty" if not head else "is not a checkpoint (neither a torch zip archive nor a pickle)"
        raise CheckpointError(
            f"checkpoint {str(path)!r} {what}: corrupted, truncated or another kind of file; "
            "pass a model.pt written by `jfb-inverse train`"
        )
    try:
        with warnings.catch_warnings():
            # A plain pickle of another protocol makes torch warn before it refuses the file: noise.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused and not loaded: it holds objects other than weights, which "
            f"could run code ({_detail(exc)}); only load checkpoints written by jfb-inverse"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, OSError, zipfile errors, ... on damaged files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or truncated ({type(exc).__name__}: {_detail(exc)}); "
            "use an intact model.pt (retrain or restore it)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a jfb-inverse checkpoint (format {FORMAT!r} expected)")
    try:
        cfg = ProblemConfig.model_validate(json.loads(payload["config"]))
    except (ValidationError, json.JSONDecodeError, KeyError, TypeError) as exc:
        detail = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        raise CheckpointError(f"checkpoint {str(path)!r} has an invalid problem definition: {detail}") from None
    return payload, cfg


def _check_device_exists(device: str | torch.device) -> None:
    """A device this machine lacks is said as such (torch.load would report a damaged file)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} was asked for but no CUDA GPU is available; use device='cpu'")


def load_model(
    name: str | Path,
    device: torch.device | str = "cpu",
    trust_operator: Iterable[str] | bool = False,
    operator: str | None = None,
) -> tuple[Any, ProblemConfig, Any]:
    """A trained ``ImplicitReconstructor`` in eval mode, its definition and its physics cache.

    A checkpoint of a custom operator is refused unless ``trust_operator`` (``True``, or the
    operator targets the caller trusts; see :func:`jfb_inverse.problems.custom.ensure_trusted`):
    building its physics imports and runs the operator's code. ``operator`` (``path/to/ops.py:Class``)
    reads that operator from where its file is now, when it moved since training; naming it trusts it.
    """
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems.custom import ensure_trusted, relocate_operator

    payload, cfg = load_checkpoint(name, map_location=device)
    if operator is not None:
        cfg = relocate_operator(cfg, operator)
        trust_operator = True if trust_operator is True else [*(trust_operator or ()), operator]
    ensure_trusted(cfg, trust_operator)
    model, physics = build_model(cfg, device)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {str(name)!r} does not match its own definition ({_first_mismatch(exc)}); "
            "it was written by another version or edited"
        ) from None
    return model.eval(), cfg, physics


def load_initial_weights(model: Any, name: str | Path, step: str, device: torch.device | str = "cpu") -> None:
    """Start a fine-tune (``training.init_from``): copy a checkpoint's regulariser into ``model``, and
    its learned step size only when it was learned for the same kind of consistency ``step``."""
    payload, source = load_checkpoint(name, map_location=device)
    prefix = "regularizer."
    weights = {k[len(prefix) :]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}
    try:
        model.regularizer.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the weights of {str(name)!r} do not fit this run's network ({_first_mismatch(exc)}); keep the "
            "source's network (model.arch/width/depth/spectral_norm/input_injection/bias) and image channels, "
            "or train without init_from"
        ) from None
    if source.model.step == step and "log_eta" in payload["state_dict"]:
        with torch.no_grad():
            model.log_eta.copy_(payload["state_dict"]["log_eta"])


def _first_mismatch(exc: BaseException) -> str:
    """The first specific line of a ``load_state_dict`` error (torch lists every key on its own line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines[1:] if not line.startswith("Error(s) in loading")]
    first = (specific or lines or [type(exc).__name__])[0].rstrip(".")
    if "key(s) in state_dict:" in first:  # "Missing key(s) in state_dict: "a", "b", ...": name one, count all
        head, keys = first.split(":", 1)
        names = [k.strip().strip('"') for k in keys.split(",") if k.strip()]
        first = f"{head.strip()}: {len(names)}, e.g. {names[0]!r}" if names else head.strip()
    return first
