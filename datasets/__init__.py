"""Offline data sources (installed as ``jfb_inverse.datasets``).

Everything here works without a network connection; images are (C, H, W) float32 tensors in
[0, 1] and batches (B, C, H, W).

Sources
-------
Builtin images
    The sample images bundled inside scikit-image, read from ``skimage.data.data_dir`` (never
    downloaded): :func:`load_builtin`. They are split once and for all into ``BUILTIN_TRAIN``
    (13 photos, textures, microscopy, astronomy and document images) and ``BUILTIN_TEST``
    (camera, astronaut, coins, rocket), which is held out for evaluation and never trained on.
    ``BUILTIN_PHANTOMS`` (the Shepp-Logan phantom) is loadable but in neither split.
Phantoms
    Random ellipse phantoms for CT-like problems, generated from a seed:
    :func:`ellipse_phantoms`.
Dead leaves
    Synthetic images of occluding disks with natural-image statistics, generated from a seed:
    :func:`dead_leaves` (mixed into training batches with ``data.dead_leaves``).
User folders
    A user's own PNG/JPEG/TIFF/BMP/GIF/WebP/``.npy`` images: :func:`load_image`, :func:`load_folder`, and
    :func:`save_image` to write results.

Training batches come from :class:`PatchSampler` (random crops with dihedral augmentation),
or directly from :func:`ellipse_phantoms`.
"""

from jfb_inverse.datasets.dead_leaves import dead_leaves
from jfb_inverse.datasets.images import (
    BUILTIN_NAMES,
    BUILTIN_PHANTOMS,
    BUILTIN_TEST,
    BUILTIN_TRAIN,
    IMAGE_SUFFIXES,
    load_builtin,
    load_folder,
    load_image,
    save_image,
)
from jfb_inverse.datasets.patches import PatchSampler
from jfb_inverse.datasets.phantoms import ellipse_phantoms

__all__ = [
    "BUILTIN_NAMES",
    "BUILTIN_PHANTOMS",
    "BUILTIN_TEST",
    "BUILTIN_TRAIN",
    "IMAGE_SUFFIXES",
    "PatchSampler",
    "dead_leaves",
    "ellipse_phantoms",
    "load_builtin",
    "load_folder",
    "load_image",
    "save_image",
]
