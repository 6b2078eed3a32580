"""Read and write measurements and check that they fit a problem's operator.

Files: ``.npy`` holds the raw measurement, shape ``(H, W)`` or ``(C, ...)`` (no batch dimension;
for CT ``(C, detectors, angles)``); ``.png``/``.tif`` are accepted for image-shaped measurements
(blur, inpainting) and read in [0, 1].

``simulate`` also writes a small provenance file next to each measurement (``y.npy`` ->
``y.npy.json``: the problem, operator and noise that made it). ``reconstruct`` reads it when it is
there and refuses a checkpoint whose operator is of another kind (a CT sinogram given to a deblurring
model), and warns when only the operator's parameters differ. Measurements from elsewhere have no
such file and are checked by shape only.

Outputs are written atomically (a temporary file in the same folder, then a rename): an error or a
kill never leaves a half-written file under the output name, and an existing symbolic link at the
output name is replaced, not followed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from jfb_inverse.atomic import atomic_path, atomic_write_bytes
from jfb_inverse.datasets import load_image, save_image
from jfb_inverse.datasets.images import UNIT_RANGE_SLACK
from jfb_inverse.errors import UserError
from jfb_inverse.problems.config import ProblemConfig, used_fields

if TYPE_CHECKING:  # an annotation only: the models load deepinv (3 s here)
    from jfb_inverse.models.build import PhysicsCache

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
#: Types ``write_array`` writes (JPEG is lossy: not offered for outputs).
OUTPUT_SUFFIXES = {".npy", ".png", ".tif", ".tiff"}
PROVENANCE_FORMAT = "jfb-inverse-measurement/1"


def read_measurement(
    path: str | Path, channels: int, note: Callable[[str], None] | None = None, shape: tuple[int, ...] | None = None
) -> Tensor:
    """A measurement (C, ...) from ``.npy`` or an image file; NaN/Inf and bad files are :class:`UserError`.

    An image file's colour is converted to ``channels`` (``note`` hears of it); a ``.npy`` array is
    taken as it is (its channel count is checked against the operator by :func:`check_fits`), except
    that a 3-D array with more than 4 entries first and at most 4 last is read as (H, W, C), that
    a 2-D array is a grey (1, H, W) one unless it has ``shape`` (the operator's measurement shape,
    where known: a flat (C, m) measurement), and that uint8/uint16 values are scaled to [0, 1] by
    their type's range as an image file's are (other integer types are refused)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"input {str(p)!r} not found; give an existing .npy or image file")
    if p.suffix.lower() == ".npy":
        try:
            with p.open("rb") as fh:
                magic = fh.read(6)
            if magic != b"\x93NUMPY":
                raise ValueError("no .npy header: another kind of file, or an empty or damaged one")
            arr = np.load(p, allow_pickle=False)  # never unpickles: object arrays are refused
        except (ValueError, OSError, EOFError) as exc:
            reason = "it holds Python objects, which are never loaded" if "allow_pickle" in str(exc) else str(exc)
            raise UserError(f"{str(p)!r} is not a valid .npy array ({reason}); save it with numpy.save") from None
        if arr.dtype.kind == "c":
            raise UserError(
                f"{str(p)!r} holds complex values ({arr.dtype}, shape {arr.shape}); save real arrays: k-space as "
                "(2C, H, W), each channel's real part then its imaginary part, e.g. "
                "numpy.stack([y.real, y.imag], axis=1).reshape(-1, H, W) for y of shape (C, H, W), as `simulate` "
                "writes it"
            )
        if arr.dtype.kind not in "fiu" or arr.ndim not in (2, 3):
            raise UserError(
                f"{str(p)!r} holds a {arr.dtype} array of shape {arr.shape}; expected a real (H, W) or (C, ...) array"
            )
        if arr.ndim == 3 and arr.shape[0] > 4 and arr.shape[-1] <= 4:
            # Channels last, as image libraries write them (the rule load_image uses for clean .npy
            # images); a measurement's channels come first, so move them there.
            arr = np.moveaxis(arr, -1, 0)
            if note is not None:
                note(f"{p.name}: a {arr.shape[1]}x{arr.shape[2]}x{arr.shape[0]} array, read as channels last")
        if arr.dtype.kind in "iu":
            # As for PNG/TIFF measurements and clean images: 8- and 16-bit integers are pixel values
            # scaled by their type's range; other integer types have no agreed scale.
            if arr.dtype not in (np.uint8, np.uint16):
                raise UserError(
                    f"{str(p)!r} holds {arr.dtype} integers, which have no agreed scale; save the measurement "
                    "as float32 (the scale `simulate` writes), or as uint8/uint16 pixel values"
                )
            if note is not None:
                note(f"{p.name}: {arr.dtype} values read as pixels, scaled to [0, 1] by {np.iinfo(arr.dtype).max}")
            arr = arr / np.float32(np.iinfo(arr.dtype).max)
        y = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        y = y[None] if y.ndim == 2 and tuple(y.shape) != shape else y
    elif p.suffix.lower() in IMAGE_SUFFIXES:
        y = load_image(p, channels=channels, note=note, opaque_alpha=True)
    else:
        raise UserError(f"{str(p)!r}: unsupported measurement file type; use .npy, .png, .tif or .jpg")
    if y.numel() == 0:
        raise UserError(f"{str(p)!r} holds no values (shape {tuple(y.shape)}); give a measurement with data")
    if not torch.isfinite(y).all():
        raise UserError(f"{str(p)!r} contains NaN or Inf values; clean the measurement first")
    return y


#: Above this share of a measurement's energy where the operator measures nothing, reconstruct warns.
UNMEASURED_SHARE_WARNING = 0.01


def unmeasured_share(y: Tensor, physics: Any) -> float:
    """The share of ``y``'s energy (C, ...) where a masking operator (inpainting, MRI) measures
    nothing: 0 for what ``simulate`` makes (those entries are zero) and for operators that measure
    everywhere. ``A^T`` ignores those entries, so a large share means another mask (or an MRI
    spectrum that is not centred) made the measurement."""
    from jfb_inverse.problems.noise import measured_entries

    measured = measured_entries(physics)
    total = float((y.double() ** 2).sum())
    if measured is None or total == 0:
        return 0.0
    outside = y.double() * (1 - measured.to(device=y.device, dtype=torch.float64)[0])
    return float((outside**2).sum()) / total


def check_fits(
    y: Tensor, cfg: ProblemConfig, physics: PhysicsCache, source: str, image_shape: tuple[int, ...] | None = None
) -> Any:
    """Raise a :class:`UserError` unless ``y`` (C, ...) has the shape the operator produces; return
    the physics that fits it.

    The image shape is ``image_shape`` (the one ``simulate`` recorded beside the measurement) when
    the measurement fits it, else the operator's (its ``image_shape`` or ``img_size``, else the
    measurement's own shape). The record comes first because it says which image this measurement
    is of: a CT operator's ``img_width`` names one width, while its sinograms (with
    ``operator.detectors`` set) also fit images of other widths. An operator that shrinks its images,
    such as a custom downsampling, needs the record when it does not say how to invert its shape."""
    if image_shape is None:
        return _check_fits(y, cfg, physics, source)
    try:
        return _check_fits(y, cfg, physics, source, image_shape)
    except _ShapeMismatchError as record_error:
        # Only a shape that does not fit falls back (a stale record): a scale refusal stays.
        try:
            return _check_fits(y, cfg, physics, source)
        except _ShapeMismatchError:
            raise record_error from None


class _ShapeMismatchError(UserError):
    """A measurement whose shape (or channel count) the operator does not produce from the image
    shape tried."""


def _check_fits(
    y: Tensor, cfg: ProblemConfig, physics: PhysicsCache, source: str, image_shape: tuple[int, ...] | None = None
) -> Any:
    from jfb_inverse.problems.operators import image_shape_for

    def does_not_fit(exc: Exception) -> UserError:
        if isinstance(exc, UserError):
            text = str(exc)
            problem, sep, fix = text.partition("; ")
            if sep and "operator." in fix:
                # The fix names a definition field, which a checkpoint fixes: say what can change.
                text = (
                    f"{problem}; the checkpoint fixes its operator, so give a measurement that operator makes "
                    "(`jfb-inverse simulate --checkpoint` makes one, with the .json file that gives its image shape)"
                )
            return _ShapeMismatchError(f"{source}: {text}")
        return _ShapeMismatchError(
            f"{source}: a measurement of shape {tuple(y.shape)} does not fit the {cfg.problem!r} operator ({exc})"
        )

    try:
        img_size = image_shape if image_shape is not None else image_shape_for(cfg.operator, tuple(y.shape))
    except Exception as exc:
        raise does_not_fit(exc) from None
    if img_size[0] != cfg.data.channels:
        kind = "grey (1-channel)" if cfg.data.channels == 1 else f"{cfg.data.channels}-channel"
        raise _ShapeMismatchError(
            f"{source}: measurement of shape {tuple(y.shape)} is of {img_size[0]}-channel images, but the checkpoint "
            f"reconstructs {kind} images; give a measurement with {cfg.data.channels} channel(s)"
        )
    try:
        phys, expected = _made_by(physics, img_size)
    except Exception as exc:
        raise does_not_fit(exc) from None
    if expected != tuple(y.shape):
        hint = {
            "ct": "; a sinogram is (C, detectors, angles)",
            "mri": "; k-space is (2C, H, W): each channel's real part, then its imaginary part",
        }.get(cfg.operator.kind, "")
        if cfg.operator.kind == "custom" and expected != tuple(img_size):
            hint = (
                "; an operator whose measurements differ in shape from its images needs an image_shape method "
                "(or operator.img_size) unless the measurement comes with simulate's .json file"
            )
        raise _ShapeMismatchError(
            f"{source}: measurement shape {tuple(y.shape)} does not fit the {cfg.problem!r} operator "
            f"(it produces {expected} for images of {img_size}); use a measurement made for this checkpoint{hint}"
        )
    _check_scale(y, cfg, phys, img_size, source)
    return phys


def _check_scale(y: Tensor, cfg: ProblemConfig, phys: Any, img_size: tuple[int, ...], source: str) -> None:
    """Refuse a measurement far larger than the operator makes from any image in [0, 1] (pixel values
    0-255 saved as floats, say), which would otherwise reconstruct as a white image without a word.

    ``||A x|| <= ||A|| sqrt(n)`` for every image ``x`` of ``n`` pixels in [0, 1]; Gaussian noise adds
    about ``sigma sqrt(m)`` for ``m`` measured values (``sigma`` times the largest ``|A x|``, at most
    ``||A x||``, when relative), Poisson noise ``sqrt(sum(A x) / gain)``, at most
    ``sqrt(sqrt(m) ||A x|| / gain)``. The limit allows 3x that. The operator norm is the one the
    consistency step estimates (cached per physics, size and device: ``y``'s, as the model's)."""
    from jfb_inverse.consistency.norm import operator_norm_squared

    n, m = math.prod(img_size), y.numel()
    clean = math.sqrt(operator_norm_squared(phys, img_size, y.device) * n)
    noise = cfg.noise.sigma * math.sqrt(m) * (clean if cfg.noise.relative else 1.0)
    if cfg.noise.kind == "poisson":
        noise += math.sqrt(math.sqrt(m) * clean / cfg.noise.gain)
    scale = max(clean + noise, 1e-30)
    norm = float(torch.linalg.vector_norm(y.double()))
    if norm > 3.0 * scale:
        # Measurements that are images (blurred, masked or low-resolution) are often saved as pixels;
        # others (sinograms, k-space, a custom operator's other shapes) are not.
        pixels = cfg.operator.kind in ("blur", "inpainting", "superres") or tuple(y.shape) == tuple(img_size)
        hint = "divide 0-255 pixel values by 255" if pixels else "as simulate makes them from images in [0, 1]"
        raise UserError(
            f"{source}: the measurement is {norm / scale:.0f}x larger than the {cfg.problem!r} operator makes "
            f"from any image in [0, 1] with its noise; scale it to that range ({hint})"
        )


def provenance_path(path: str | Path) -> Path:
    """Where ``simulate`` records how the measurement at ``path`` was made: ``y.npy`` -> ``y.npy.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def provenance(cfg: ProblemConfig, image_shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """The provenance record of a simulated measurement."""
    return {
        "format": PROVENANCE_FORMAT,
        "problem": cfg.problem,
        "operator": cfg.operator.model_dump(mode="json"),
        "noise": cfg.noise.model_dump(mode="json"),
        "image_shape": list(image_shape),
        "seed": seed,
    }


def _read_provenance(path: str | Path) -> dict[str, Any] | None:
    """``simulate``'s record beside the measurement at ``path``; ``None`` where there is none or it
    is not ours. A file that is there but unreadable raises ``ValueError``."""
    meta_path = provenance_path(path)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return meta if isinstance(meta, dict) and meta.get("format") == PROVENANCE_FORMAT else None


def provenance_image_shape(path: str | Path) -> tuple[int, ...] | None:
    """The image shape that ``simulate`` recorded beside the measurement, if any."""
    try:
        meta = _read_provenance(path)
    except ValueError:
        return None  # check_provenance says so
    shape = (meta or {}).get("image_shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        return None
    return tuple(shape)


def _made_by(physics: PhysicsCache, img_size: tuple[int, ...]) -> tuple[Any, tuple[int, ...]]:
    """The physics for images of ``img_size`` and the shape (C, ...) of the measurements it makes."""
    phys = physics.for_image(img_size)
    return phys, tuple(phys.A(torch.zeros((1, *img_size), device=physics.device)).shape[1:])


def flat_measurement_shape(path: str | Path, cfg: ProblemConfig, physics: PhysicsCache) -> tuple[int, ...] | None:
    """The shape of the measurements the operator makes, where ``path`` is a ``.npy`` file whose image
    shape is known (``simulate``'s record beside it, else a custom operator's ``img_size``) and that
    shape is 2-D: a flat (C, m) measurement, which :func:`read_measurement` would otherwise take for
    a grey (H, W) image. ``None`` otherwise."""
    if Path(path).suffix.lower() != ".npy":
        return None
    image_shape = provenance_image_shape(path) or getattr(cfg.operator, "img_size", None)
    if image_shape is None:
        return None
    try:
        shape = _made_by(physics, tuple(image_shape))[1]
    except Exception:  # a stale record, or an operator that fails there: check_fits says what is wrong
        return None
    return shape if len(shape) == 2 else None


def check_provenance(
    path: str | Path, cfg: ProblemConfig, checkpoint: str, moved_from: str | None = None
) -> str | None:
    """Compare the measurement's provenance file (if any) with the checkpoint's operator.

    Another operator kind (or another custom operator) is a :class:`UserError`; the same kind with
    other parameters returns a warning text; no file, or a file that is not ours, returns ``None``.
    ``moved_from``: the custom operator's target as the checkpoint recorded it, when ``cfg`` reads
    the operator from another place (``--operator``): a measurement made with it is of this operator.
    """
    meta_path = provenance_path(path)
    try:
        meta = _read_provenance(path)
    except ValueError:
        return f"{meta_path.name} is not readable JSON; the measurement's operator was not checked"
    if meta is None or not isinstance(meta.get("operator"), dict):
        return None
    made = meta["operator"]
    have = cfg.operator.model_dump(mode="json")
    if moved_from is not None and made.get("target") == moved_from:
        made = {**made, "target": have.get("target")}
    name = Path(path).name
    if made.get("kind") != have["kind"] or made.get("target") != have.get("target"):
        what = made.get("target") or made.get("kind")
        same_kind = made.get("kind") == have["kind"]  # two custom operators: both runs are problem 'custom'
        fix = "a checkpoint trained on that operator" if same_kind else "a checkpoint of that problem"
        raise UserError(
            f"{name} was simulated with the {what!r} operator of problem {meta.get('problem')!r}, but checkpoint "
            f"{checkpoint!r} reconstructs problem {cfg.problem!r} ({have.get('target') or have['kind']!r} operator); "
            f"use {fix} (or delete {meta_path.name} if it is stale)"
        )
    # Only what each side's kernel kind uses: a motion blur's unused sigma says nothing of its kernel.
    made, have = used_fields(made), used_fields(have)
    differ = sorted(k for k in set(made) | set(have) if made.get(k) != have.get(k))
    # A kernel file's numbers (operator.values) say which kernel it was where both sides have them
    # (simulate and train embed them): the file's path then says only where it was read from. A
    # measurement simulated before kernels were embedded says which kernel by its path alone.
    if made.get("values") is not None and have.get("values") is not None:
        same = _same_kernel(made["values"], have["values"])
        differ = [k for k in differ if k != "path" and (k != "values" or not same)]
    else:
        differ = [k for k in differ if k != "values"]
    if "kernel" in differ:  # another blur kernel kind: its parameters (length, sigma, ...) say nothing more
        differ = ["kernel"]
    if "factor" in differ:
        # Another scale is another image size: the reconstruction would fit the measurement at the
        # checkpoint's scale and come out the wrong size, not merely degraded as with another blur.
        raise UserError(
            f"{name} was simulated at x{made.get('factor')} super-resolution, but checkpoint {checkpoint!r} "
            f"reconstructs at x{have.get('factor')}; use a checkpoint trained at x{made.get('factor')} "
            f"(operator.factor = {made.get('factor')})"
        )
    if differ:
        shown = ", ".join(f"{k} {_brief(made.get(k))} vs {_brief(have.get(k))}" for k in differ)
        return f"{name} was simulated with other operator parameters than the checkpoint's ({shown})"
    # The network was trained at one noise level: another one is allowed (a user may try it) but said.
    noise, trained = meta.get("noise"), used_fields(cfg.noise.model_dump(mode="json"))
    if isinstance(noise, dict):
        noise = used_fields(noise)
        differ = sorted(k for k in set(noise) | set(trained) if noise.get(k) != trained.get(k))
        if "kind" in differ:  # another noise kind: its own fields say nothing more
            differ = ["kind"]
        if differ:
            shown = ", ".join(f"{k} {noise.get(k)!r} vs {trained.get(k)!r}" for k in differ)
            return (
                f"{name} was simulated with other noise than the checkpoint was trained for ({shown}); "
                "expect lower quality and slower convergence"
            )
    return None


def _same_kernel(a: Any, b: Any) -> bool:
    """Two kernels' numbers (lists of rows) equal to float rounding once each is divided by its sum,
    as the operator uses them (``values`` may be written unnormalised)."""
    try:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        with np.errstate(all="ignore"):  # a zero sum (hand-edited) gives NaNs, which compare unequal
            x, y = x / x.sum(), y / y.sum()
    except (TypeError, ValueError):  # a hand-edited sidecar: not our numbers, so not the same kernel
        return False
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-6, atol=1e-9))


def _brief(value: Any) -> str:
    """A parameter for a one-line message: a kernel's numbers as its shape, anything else as repr."""
    if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
        return f"<{len(value)}x{len(value[0])} kernel>"
    return repr(value)


def check_output_path(path: str | Path, option: str = "--output") -> Path:
    """Fail early, before any work, unless ``path`` names a writable file of a type we write."""
    p = Path(path)
    if p.is_dir():
        suffix = p.suffix if p.suffix.lower() in OUTPUT_SUFFIXES else ".npy"
        raise UserError(f"{option} {str(p)!r} is a folder; give a file name such as {str(p / ('out' + suffix))!r}")
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"{option} {str(p)!r}: unsupported output type {p.suffix!r}; use .npy, .png or .tif")
    parent = p.parent
    if not parent.exists():
        raise UserError(f"output folder {str(parent)!r} does not exist; create it first")
    if not parent.is_dir():
        raise UserError(f"{option} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to folder {str(parent)!r} (permission denied); choose another {option}")
    return p


def write_array(x: Tensor, path: str | Path, png_slack: float = UNIT_RANGE_SLACK) -> None:
    """Save a (C, ...) tensor atomically: ``.npy`` and ``.tif`` raw float32, ``.png`` 8-bit.

    An 8-bit PNG holds [0, 1]: values beyond it by more than ``png_slack`` (a CT sinogram, often)
    are refused rather than clipped, values within it (the noise of a blurred image) clipped.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise UserError(f"output folder {str(p.parent)!r} does not exist; create it first")
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES and (x.dim() != 3 or x.shape[0] not in (1, 3)):
        raise UserError(f"{str(p)!r}: a measurement of shape {tuple(x.shape)} is not an image; write .npy instead")
    if suffix not in OUTPUT_SUFFIXES:
        raise UserError(f"{str(p)!r}: unsupported output type; use .npy, .png or .tif")
    if suffix == ".png" and x.numel():
        low, high = float(x.min()), float(x.max())
        if low < -png_slack or high > 1 + png_slack:
            raise UserError(
                f"{str(p)!r}: values span [{low:.3g}, {high:.3g}], beyond the [0, 1] an 8-bit PNG holds; "
                "write .npy or .tif (float32) instead"
            )
    with atomic_path(p) as tmp:
        if suffix == ".npy":
            np.save(tmp, x.detach().cpu().numpy().astype(np.float32))
        else:
            save_image(x.detach().cpu(), tmp, clip=suffix == ".png")


def write_json(data: Any, path: str | Path) -> None:
    """Write JSON text atomically (temporary file in the same folder, then a rename)."""
    text = (json.dumps(data, indent=2) + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(text))
