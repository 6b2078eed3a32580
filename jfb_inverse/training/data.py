"""Training batches and the held-out evaluation set of a problem definition."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from skimage.transform import rescale
from torch import Tensor

from jfb_inverse.datasets import (
    BUILTIN_TEST,
    BUILTIN_TRAIN,
    PatchSampler,
    dead_leaves,
    ellipse_phantoms,
    load_builtin,
    load_folder,
)
from jfb_inverse.errors import UserError
from jfb_inverse.problems.config import DataConfig

# Held-out phantoms use a seed far from any training seed (training draws seed + step).
EVAL_PHANTOM_SEED = 10_000_019
EVAL_PHANTOMS = 4
# The dead-leaves bank: enough distinct 256-px images that patches rarely repeat (0.1 s each).
DEAD_LEAVES_BANK = 48
DEAD_LEAVES_SIZE = 256


def _multiscale(images: list[Tensor], scales: Sequence[float], patch: int) -> list[Tensor]:
    """Each image at each of ``scales`` (1.0: as it is; others: anti-aliased downscaling), where
    the result still holds a ``patch`` x ``patch`` patch."""
    out = []
    for x in images:
        for s in scales:
            if s == 1.0:
                out.append(x)
            elif min(x.shape[-2:]) * s >= patch:
                arr = rescale(x.permute(1, 2, 0).numpy(), s, channel_axis=-1, anti_aliasing=True)
                out.append(torch.from_numpy(arr).permute(2, 0, 1).float().clamp(0, 1))
    return out


class TrainingSource:
    """Clean training patches for a definition: builtin images, a folder, phantoms, or a mix."""

    def __init__(self, data: DataConfig, batch_size: int, seed: int, device: torch.device) -> None:
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.draws = 0
        self.files: list[str] | None = None  # a folder's images trained on, by name (a resume compares them)
        self.sampler: PatchSampler | None = None
        self.synthetic: PatchSampler | None = None
        n_synthetic = round(data.dead_leaves * batch_size)
        if n_synthetic and data.source in ("builtin", "folder", "mixed"):
            side = max(DEAD_LEAVES_SIZE, data.patch_size)
            bank = dead_leaves(DEAD_LEAVES_BANK, side, seed=seed * 1_000_003 + 7)
            bank = bank.expand(-1, data.channels, -1, -1)
            self.synthetic = PatchSampler(list(bank), data.patch_size, n_synthetic, seed=seed + 1, device=device)
        if data.source == "folder" and n_synthetic >= batch_size:
            warnings.warn(
                f"data.dead_leaves = {data.dead_leaves:g} makes every patch of a batch of {batch_size} synthetic: "
                f"the images of data.path are not used; lower data.dead_leaves to train on them too",
                UserWarning,
                stacklevel=2,
            )
        if data.source in ("builtin", "folder", "mixed") and n_synthetic < batch_size:
            if data.source == "folder":
                converted: list[str] = []
                try:
                    named = load_folder(data.path or "", channels=data.channels, note=converted.append)
                except FileNotFoundError as exc:  # from a --config file, whose key the OS error does not name
                    raise UserError(
                        f"data.path {data.path!r}: {exc.strerror}; give the folder of training images "
                        "(--data DIR, or data.path in the --config file, relative to that file or the working folder)"
                    ) from None
                usable = [(name, x) for name, x in named if min(x.shape[-2:]) >= data.patch_size]
                if not usable:
                    raise UserError(
                        f"no image in {data.path!r} is at least {data.patch_size} px on each side; "
                        "use larger images or a smaller data.patch_size"
                    )
                small = [name for name, x in named if min(x.shape[-2:]) < data.patch_size]
                if small:
                    warnings.warn(
                        f"{len(small)} of {len(named)} images in {data.path!r} are smaller than data.patch_size "
                        f"({data.patch_size} px) and are not trained on: {', '.join(small[:3])}"
                        f"{', ...' if len(small) > 3 else ''}",
                        UserWarning,
                        stacklevel=2,
                    )
                if converted:
                    change = "colour converted to grey" if data.channels == 1 else "grey repeated to RGB"
                    warnings.warn(
                        f"{len(converted)} of {len(named)} images in {data.path!r}: {change} "
                        f"(data.channels = {data.channels})",
                        UserWarning,
                        stacklevel=2,
                    )
                images = [x for _, x in usable]
                self.files = [name for name, _ in usable]
            else:
                images = [load_builtin(n, channels=data.channels) for n in BUILTIN_TRAIN]
                images = [x for x in images if min(x.shape[-2:]) >= data.patch_size]
            scaled = _multiscale(images, data.scales, data.patch_size)
            if not scaled:
                raise UserError(
                    f"at data.scales {data.scales} no training image holds a {data.patch_size} px patch; "
                    "add larger scales (1.0 is native) or use a smaller data.patch_size"
                )
            self.sampler = PatchSampler(
                scaled,
                data.patch_size,
                batch_size - n_synthetic,
                seed=seed,
                device=device,
            )

    def sample(self) -> Tensor:
        """One batch (B, C, p, p) in [0, 1]; phantoms are fresh each call (seed + draw index)."""
        self.draws += 1
        use_phantoms = self.data.source == "phantoms" or (self.data.source == "mixed" and self.draws % 2 == 0)
        if use_phantoms:
            x = ellipse_phantoms(self.batch_size, self.data.patch_size, seed=self.seed * 1_000_003 + self.draws)
            return x.to(self.device).expand(-1, self.data.channels, -1, -1).contiguous()
        parts = [s.sample() for s in (self.synthetic, self.sampler) if s is not None]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state_dict(self) -> dict[str, Any]:
        """Position in the data stream, for exact resumption."""
        return {
            "draws": self.draws,
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "synthetic": self.synthetic.state_dict() if self.synthetic else None,
            "files": self.files,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the data stream saved by :meth:`state_dict`."""
        self.draws = int(state["draws"])
        before = state.get("files")  # absent from checkpoints of earlier versions
        if self.files is not None and before is not None and before != self.files:
            added, gone = sorted(set(self.files) - set(before)), sorted(set(before) - set(self.files))
            shown = ", ".join([f"+{n}" for n in added[:3]] + [f"-{n}" for n in gone[:3]])
            warnings.warn(
                f"the training folder {self.data.path!r} has changed since the run's last checkpoint "
                f"({len(added)} image(s) added, {len(gone)} gone: {shown}); training goes on with its images "
                "now, so the run will differ from one that was not interrupted",
                UserWarning,
                stacklevel=2,
            )
        if self.sampler is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        if self.synthetic is not None and state.get("synthetic") is not None:
            self.synthetic.load_state_dict(state["synthetic"])


def evaluation_images(data: DataConfig) -> list[tuple[str, Tensor]]:
    """The fixed held-out set: the builtin test split at ``eval_size`` px (plus phantoms of a fixed
    seed for phantom-trained problems). Never used for training."""
    images = [(name, load_builtin(name, channels=data.channels, size=data.eval_size)) for name in BUILTIN_TEST]
    if data.source in ("phantoms", "mixed"):
        phantoms = ellipse_phantoms(EVAL_PHANTOMS, data.eval_size, seed=EVAL_PHANTOM_SEED)
        phantoms = phantoms.expand(-1, data.channels, -1, -1)
        images = [(f"phantom{i}", phantoms[i].clone()) for i in range(EVAL_PHANTOMS)] + images
    return images
