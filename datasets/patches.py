"""Random training patches from a list of images, with the 8 dihedral augmentations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from jfb_inverse.errors import UserError


class PatchSampler:
    """Draw batches of random square patches from (C, H, W) images.

    Each patch picks an image uniformly (so small and large images weigh the same), a position
    uniformly inside it, and one of the 8 dihedral transforms (4 rotations by 90 degrees, each
    with or without a horizontal flip). All randomness comes from the sampler's own CPU
    ``torch.Generator``, so a seed fixes the sequence of batches on any device, and
    :meth:`state_dict` / :meth:`load_state_dict` resume it exactly.

    Parameters
    ----------
    images : sequence of Tensor
        (C, H, W) images with the same C, each at least ``patch_size`` in H and W.
    patch_size : int
        Side p of the square patches.
    batch_size : int
        Number B of patches per call to :meth:`sample`.
    seed : int
        Seed of the sampler's generator.
    device : str or torch.device
        Where the images are kept and the batches returned.

    Examples
    --------
    >>> sampler = PatchSampler([torch.rand(1, 64, 80)], patch_size=32, batch_size=4, seed=0)
    >>> sampler.sample().shape
    torch.Size([4, 1, 32, 32])
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if patch_size < 1 or batch_size < 1:
            raise UserError(f"patch_size and batch_size must be positive, got {patch_size} and {batch_size}")
        if len(images) == 0:
            raise UserError("PatchSampler needs at least one image; got an empty list")
        channels = {int(x.shape[0]) for x in images if x.ndim == 3}
        for i, x in enumerate(images):
            if x.ndim != 3:
                raise UserError(f"image {i} has shape {tuple(x.shape)}; PatchSampler expects (C, H, W) images")
            if x.shape[-2] < patch_size or x.shape[-1] < patch_size:
                raise UserError(
                    f"image {i} is {x.shape[-2]}x{x.shape[-1]}, smaller than the patch size {patch_size}; "
                    "use a smaller patch_size or drop the image"
                )
        if len(channels) != 1:
            raise UserError(
                f"images have different channel counts {sorted(channels)}; load them with the same channels"
            )
        self.images = [x.to(device=device, dtype=torch.float32) for x in images]
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._gen = torch.Generator().manual_seed(seed)

    def sample(self) -> Tensor:
        """Return a (B, C, p, p) batch of augmented random patches."""
        p, b = self.patch_size, self.batch_size
        index = torch.randint(len(self.images), (b,), generator=self._gen).tolist()
        # Uniform fractions, scaled per image below, keep the number of draws independent of the sizes.
        frac = torch.rand(b, 2, generator=self._gen, dtype=torch.float64).tolist()
        transform = torch.randint(8, (b,), generator=self._gen).tolist()
        patches = []
        for i, (fy, fx), t in zip(index, frac, transform, strict=True):
            image = self.images[i]
            top = min(int(fy * (image.shape[-2] - p + 1)), image.shape[-2] - p)
            left = min(int(fx * (image.shape[-1] - p + 1)), image.shape[-1] - p)
            patch = image[:, top : top + p, left : left + p]
            if t >= 4:
                patch = patch.flip(-1)
            patches.append(torch.rot90(patch, t % 4, dims=(-2, -1)))
        return torch.stack(patches)

    def state_dict(self) -> dict[str, Any]:
        """Return the generator state, to save in a training checkpoint."""
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        if "generator" not in state:
            raise UserError("state has no 'generator' entry; pass the dict returned by PatchSampler.state_dict()")
        self._gen.set_state(state["generator"])
