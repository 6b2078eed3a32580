"""Image IO and scikit-image's bundled sample images, as (C, H, W) float32 tensors in [0, 1].

The bundled images are read straight from the files shipped inside scikit-image
(``skimage.data.data_dir``), never through its download cache, so they load offline.
"""

from __future__ import annotations

import errno
import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.io
import torch
from skimage.color import rgb2gray
from skimage.data import data_dir
from skimage.transform import resize
from torch import Tensor

from jfb_inverse.errors import UserError

# name -> file bundled in skimage.data.data_dir; names follow skimage.data's loader functions.
_BUNDLED_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
    "shepp_logan_phantom": "phantom.png",
}

#: Held-out natural images, never trained on: a grey portrait, a colour portrait, grey objects
#: with sharp edges, and a colour outdoor scene. Every one has a shorter side of at least 256.
BUILTIN_TEST: tuple[str, ...] = ("camera", "astronaut", "coins", "rocket")

#: Natural images for training: photos, textures, microscopy, astronomy and documents. Left out
#: on purpose: ``clock`` (motion-blurred, not a clean reference), ``microaneurysms`` (102 x 102,
#: smaller than a training patch), ``cat`` (same picture as ``chelsea``), binary or synthetic
#: images (``horse``, ``checkerboard``, ``logo``, ``colorwheel``) and every image that skimage
#: must download (``eagle``, ``cells3d``, ``kidney``, ``lily``, ``brain``, ...).
BUILTIN_TRAIN: tuple[str, ...] = (
    "brick",
    "cell",
    "chelsea",
    "coffee",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle",
    "page",
    "retina",
    "text",
)

#: Loadable by name but in neither natural split (a synthetic CT test image).
BUILTIN_PHANTOMS: tuple[str, ...] = ("shepp_logan_phantom",)

#: Every name that :func:`load_builtin` accepts.
BUILTIN_NAMES: tuple[str, ...] = BUILTIN_TRAIN + BUILTIN_TEST + BUILTIN_PHANTOMS

#: File suffixes that :func:`load_image` and :func:`load_folder` read (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".npy")


@functools.cache
def _read_bundled(name: str) -> np.ndarray:
    # Cached because evaluation and tests load the same few images many times; callers copy.
    path = Path(data_dir) / _BUNDLED_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"bundled image {name!r} is missing (reinstall scikit-image)", str(path))
    array = skimage.io.imread(path)
    array.setflags(write=False)
    return array


def _to_unit_float(array: np.ndarray, source: str) -> np.ndarray:
    """Scale integer data to [0, 1] by its dtype's range; keep float data as they are."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise UserError(f"{source}: image has NaN or infinite values; clean it before loading")
        return array.astype(np.float32)
    raise UserError(f"{source}: unsupported pixel type {array.dtype}; save it as uint8, uint16 or float in [0, 1]")


def without_alpha(array: np.ndarray) -> np.ndarray:
    """The colour channels of an (H, W) or (H, W, C) array: grey+alpha and RGBA lose their last."""
    return array[..., :-1] if array.ndim == 3 and array.shape[-1] in (2, 4) else array


_PNG16_WARNED = False  # once per process: a folder of such files would repeat it for each


def _warn_if_png_loses_bits(path: Path) -> None:
    """Warn (once) of a 16-bit PNG of colour type RGB, grey+alpha or RGBA (IHDR's bit depth and colour
    type bytes): Pillow decodes those at 8 bits; 16-bit grey keeps 16."""
    global _PNG16_WARNED
    if _PNG16_WARNED:
        return  # said already: no need to read the header again
    with open(path, "rb") as fh:
        header = fh.read(26)
    if len(header) == 26 and header[12:16] == b"IHDR" and header[24] == 16 and header[25] in (2, 4, 6):
        _PNG16_WARNED = True
        warnings.warn(
            f"{path}: a 16-bit PNG with colour or alpha, which Pillow decodes at 8 bits; save such images as "
            "16-bit TIFF to keep their precision (said once)",
            UserWarning,
            stacklevel=3,
        )


def _equal_channels(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


#: How far apart the colour channels of a grey image saved in a lossy format may be: lossy WebP's
#: YUV rounding leaves them 1/255 apart (measured on `camera`, qualities 50 and 80). Two levels, with
#: room for float32 rounding (2 levels apart read as above 2 / 255 for 10 of 254 pairs).
GREY_SLACK = 2.5 / 255


def _nearly_equal_channels(rgb: np.ndarray) -> bool:
    return bool(np.abs(rgb[..., :3] - rgb[..., [1, 2, 0]]).max() <= GREY_SLACK)


def _to_channels(
    array: np.ndarray,
    channels: int,
    source: str,
    note: Callable[[str], None] | None = None,
    opaque_alpha: bool = False,
) -> np.ndarray:
    """Turn an (H, W) or (H, W, C) float array into (channels, H, W); ``note`` hears of a colour
    change (colour to grey, grey to RGB), not of a dropped alpha channel. ``opaque_alpha``: refuse
    a 2- or 4-channel array whose last channel is not a fully opaque alpha (1.0 everywhere)."""
    if channels < 1:
        raise UserError(f"channels must be a positive integer, got {channels}")
    if array.ndim == 2:
        array = array[..., None]
    have = array.shape[-1]
    if opaque_alpha and have in (2, 4) and not bool((array[..., -1] == 1.0).all()):
        # A measurement has no transparency: a 2-channel float TIFF is most likely k-space's real and
        # imaginary parts, whose second half dropping as "alpha" would go unnoticed.
        raise UserError(
            f"{source}: a {have}-channel image whose last channel is not an opaque alpha; image files hold "
            "1- or 3-channel measurements (MRI k-space is a (2C, H, W) .npy array, as `simulate` writes it)"
        )
    if have == channels:
        out = array
    elif channels == 1 and have in (3, 4) and _equal_channels(array[..., :3]):
        out = array[..., :1]  # a grey image stored as RGB (GIF and WebP have no grey mode): no change
    elif channels == 1 and have in (3, 4):
        # Luminance (ITU-R 709 weights) of the colour channels; an alpha channel is dropped.
        out = rgb2gray(array[..., :3])[..., None]
        if note is not None and not _nearly_equal_channels(array[..., :3]):  # a grey lossy WebP: no note
            note(f"{source}: colour image converted to grey (luminance); this problem's images are grey")
    elif channels == 1 and have == 2:
        out = array[..., :1]  # grey + alpha
    elif channels == 3 and have in (1, 2):
        out = np.repeat(array[..., :1], 3, axis=-1)
        if note is not None:
            note(f"{source}: grey image repeated to 3 channels; this problem's images are RGB")
    elif channels == 3 and have == 4:
        out = array[..., :3]  # RGBA: drop alpha
    else:
        raise UserError(
            f"{source}: cannot convert a {have}-channel image to {channels} channels; "
            "use channels=1 (grey) or 3 (RGB), or pass channels equal to the file's channel count"
        )
    return np.ascontiguousarray(np.moveaxis(out, -1, 0), dtype=np.float32)


def _center_square_resize(x: np.ndarray, size: int) -> np.ndarray:
    """Crop (C, H, W) to its central min(H, W) square, then resize it to size x size."""
    _, h, w = x.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = x[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = resize(square, (square.shape[0], size, size), order=1, anti_aliasing=side > size, preserve_range=True)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def load_builtin(name: str, channels: int = 1, size: int | None = None) -> Tensor:
    """Load one of scikit-image's bundled images as a (C, H, W) float32 tensor in [0, 1].

    Parameters
    ----------
    name : str
        One of ``BUILTIN_NAMES`` (see ``BUILTIN_TRAIN``, ``BUILTIN_TEST`` and ``BUILTIN_PHANTOMS``).
    channels : int
        1 for grey (luminance, :func:`skimage.color.rgb2gray`) or 3 for RGB (grey images repeated).
    size : int, optional
        If given, crop the central square of side min(H, W) and resize it (bilinear, anti-aliased)
        to ``size x size``; otherwise keep the native size.

    Examples
    --------
    >>> load_builtin("camera", size=128).shape
    torch.Size([1, 128, 128])
    """
    if name not in _BUNDLED_FILES:
        raise UserError(f"unknown builtin image {name!r}; valid names: {', '.join(BUILTIN_NAMES)}")
    _check_size(size)
    source = f"builtin image {name!r}"
    array = _to_channels(_to_unit_float(_read_bundled(name), source), channels, source)
    if size is not None:
        array = _center_square_resize(array, size)
    return torch.from_numpy(array)


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, int) or size < 1):
        raise UserError(f"size must be a positive integer or None, got {size!r}")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such image file (check the path)", str(path))
    if path.is_dir():
        raise UserError(f"{path}: is a folder; use load_folder() for a folder of images")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")


def _npy_to_hwc(array: np.ndarray, source: str) -> np.ndarray:
    """Bring a 2-D (H, W) or 3-D (C, H, W) / (H, W, C) array to (H, W) or (H, W, C)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[0] <= 4:
        # Channels first wins a tie (e.g. 3 x 3 x 3): it is the layout save_image writes.
        return np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] <= 4:
        return array
    if array.ndim == 3:
        raise UserError(
            f"{source}: cannot tell the channel axis of a .npy array of shape {array.shape}; "
            "save it as (C, H, W) or (H, W, C) with at most 4 channels"
        )
    raise UserError(f"{source}: .npy array has shape {array.shape}; save it as (H, W), (C, H, W) or (H, W, C)")


#: How far a clean float image may stray outside [0, 1] (rounding, interpolation overshoot).
UNIT_RANGE_SLACK = 0.05


def load_image(
    path: str | Path,
    channels: int = 1,
    size: int | None = None,
    *,
    check_range: bool = False,
    note: Callable[[str], None] | None = None,
    opaque_alpha: bool = False,
) -> Tensor:
    """Read an image file as a (C, H, W) float32 tensor.

    PNG, JPEG and TIFF are read with :func:`skimage.io.imread`; ``.npy`` files may hold an
    (H, W) array, or a 3-D array taken as (C, H, W) when its first axis has at most 4 entries,
    else as (H, W, C) when its last axis has at most 4. uint8 and uint16 pixels are scaled to
    [0, 1]; float pixels are kept unchanged (not clipped). Colour is converted to grey by
    luminance and grey repeated to RGB as ``channels`` asks; an alpha channel is dropped. ``size``
    crops the central square and resizes it as :func:`load_builtin` does. ``check_range``: refuse
    float pixels outside [0, 1] (by more than ``UNIT_RANGE_SLACK``), for clean images, whose noise
    model and metrics assume that range (measurements may leave it). ``note``: called with a
    one-line message when colour is converted to grey or grey to RGB (the CLI shows it).
    ``opaque_alpha``: refuse a 2- or 4-channel file whose alpha is not opaque everywhere (for
    measurements, which have no transparency to drop).

    Examples
    --------
    >>> x = load_image("photo.png", channels=3)  # doctest: +SKIP
    """
    path = Path(path)
    _check_readable(path)
    _check_size(size)
    source = str(path)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            # numpy's own text advises unpickling "if you trust the file": never repeat that to a user.
            reason = "it holds Python objects or is not a .npy file" if "allow_pickle" in str(err) else str(err)
            raise UserError(f"{path}: not a readable .npy array ({reason}); save it with numpy.save") from err
        array = _npy_to_hwc(array, source)
    else:
        try:
            with warnings.catch_warnings():
                # imageio tries every backend on a file it cannot identify, and some warn that
                # they are deprecated: noise for the user, who gets the UserError below.
                warnings.simplefilter("ignore", DeprecationWarning)
                array = skimage.io.imread(path)
        except Exception:  # the imageio/PIL/tifffile backends raise many unrelated types
            raise UserError(f"{path}: not a readable image; check the file is a valid {path.suffix} image") from None
        if path.suffix.lower() == ".png":
            _warn_if_png_loses_bits(path)
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _single_tiff_page(path, array)
        if array.ndim == 3 and array.shape[-1] == 4:
            array = _rgb_if_cmyk(path, array)
        if array.ndim == 4 and array.shape[0] == 1:  # imageio reads a GIF as (frames, H, W, C)
            array = array[0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] > 4):
            raise UserError(
                f"{path}: image has shape {array.shape}, expected (H, W) or (H, W, C); "
                "multi-page, animated or volume files are not supported; save the one image as PNG"
            )
    array = _to_unit_float(array, source)
    if check_range:
        # The file's own pixels, before a colour image becomes grey: a luminance inside [0, 1] can
        # hide channels outside it. An alpha channel is dropped unchecked.
        _check_unit_range(without_alpha(array), source)
    array = _to_channels(array, channels, source, note, opaque_alpha)
    return torch.from_numpy(array if size is None else _center_square_resize(array, size))


def _rgb_if_cmyk(path: Path, array: np.ndarray) -> np.ndarray:
    """A CMYK file (JPEG, TIFF) as RGB, by Pillow's conversion; any other 4-channel array as it is.
    imageio returns CMYK's four inks, which would pass as RGB plus an alpha channel."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode == "CMYK":
                if array.dtype != np.uint8:
                    warnings.warn(
                        f"{path}: a {array.dtype.itemsize * 8}-bit CMYK image, which Pillow converts to RGB at "
                        "8 bits; convert it to RGB yourself to keep the bits",
                        UserWarning,
                        stacklevel=2,
                    )
                return np.asarray(image.convert("RGB"))
    except Exception:  # imageio read it and Pillow cannot: not CMYK as far as Pillow knows
        pass
    return array


def _single_tiff_page(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` as read from the TIFF ``path``, refused if it stacks several pages on its last axis.
    imageio returns 3 or 4 grey pages as (H, W, 3) or (H, W, 4), which would pass as colour or RGBA
    and be silently turned grey or lose a page as alpha. Stacks it returns as they are stored, such
    as (pages, H, W), or an (H, W, 2) array that tifffile stores as H pages, are left to the shape
    checks. A one-page file saved from a (1, H, W) array reads as (1, H, W): one grey image."""
    import tifffile  # a dependency of scikit-image

    try:
        with tifffile.TiffFile(path) as tif:
            stored = tuple(tif.series[0].shape) if tif.series else array.shape
            pages = len(tif.series[0].pages) if tif.series else 1
    except Exception:  # imageio read it; the shape checks below judge it
        stored, pages = array.shape, 1
    if pages > 1 and array.shape != stored:
        raise UserError(
            f"{path}: a TIFF with {pages} pages; multi-page, animated or volume files "
            "are not supported; save the one image as PNG or as a one-page TIFF"
        )
    if array.ndim == 3 and array.shape[0] == 1 and array.shape[-1] > 4:
        return array[0]
    return array


def _check_unit_range(array: np.ndarray, source: str) -> None:
    if array.size == 0:
        return
    low, high = float(array.min()), float(array.max())
    if low < -UNIT_RANGE_SLACK or high > 1 + UNIT_RANGE_SLACK:
        raise UserError(
            f"{source}: pixel values span [{low:.4g}, {high:.4g}], not [0, 1]; scale the image to [0, 1] "
            "(e.g. divide 8-bit data by 255)"
        )


def save_image(x: Tensor, path: str | Path, *, clip: bool = True) -> None:
    """Write a (C, H, W) or (1, C, H, W) tensor to ``path``.

    ``.png`` stores 8-bit pixels (always clipped to [0, 1]) and ``.tif``/``.tiff`` float32 pixels,
    clipped to [0, 1] unless ``clip=False`` (1, 3 or 4 channels); ``.npy`` stores the raw float32
    (C, H, W) array, unclipped. The parent folder must exist: nothing is created.
    """
    path = Path(path)
    if not isinstance(x, Tensor):
        raise TypeError(f"save_image expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise UserError(f"save_image expects a (C, H, W) or (1, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "cannot save: folder does not exist (create it first)", str(path.parent))
    suffix = path.suffix.lower()
    array = x.detach().to("cpu", torch.float32).numpy()
    if suffix == ".npy":
        np.save(path, array)
        return
    if suffix not in (".png", ".tif", ".tiff"):
        raise UserError(f"cannot save {path}: unsupported file type {path.suffix!r}; use .png, .tif, .tiff or .npy")
    if array.shape[0] not in (1, 3, 4):
        raise UserError(f"cannot save a {array.shape[0]}-channel image as {suffix}; use .npy for that")
    hwc = np.moveaxis(array, 0, -1)
    hwc = np.clip(hwc, 0.0, 1.0) if clip or suffix == ".png" else hwc
    hwc = hwc[..., 0] if hwc.shape[-1] == 1 else hwc
    if suffix == ".png":
        hwc = np.round(hwc * 255.0).astype(np.uint8)
    skimage.io.imsave(path, hwc, check_contrast=False)


def load_folder(
    path: str | Path, channels: int = 1, *, check_range: bool = True, note: Callable[[str], None] | None = None
) -> list[tuple[str, Tensor]]:
    """Load every image in a folder (not its subfolders), sorted by file name.

    Reads the files whose suffix is in ``IMAGE_SUFFIXES`` with :func:`load_image` and returns
    ``(file name, (C, H, W) tensor)`` pairs; hidden files (names starting with ".") are skipped.
    The folder holds clean images (training data, evaluation sets), so float pixels outside
    [0, 1] are refused unless ``check_range=False``. ``note`` hears of each colour change, as in
    :func:`load_image`.
    """
    images, failed = [], []
    for p in image_files(path):
        try:
            images.append((p.name, load_image(p, channels, check_range=check_range, note=note)))
        except UserError as exc:  # read on: one run should name every file to fix, not one at a time
            failed.append((p.name, exc))
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        names = ", ".join(name for name, _ in failed[:5]) + (", ..." if len(failed) > 5 else "")
        raise UserError(f"{len(failed)} files in {path} cannot be used ({names}); the first: {failed[0][1]}")
    return images


def image_files(path: str | Path) -> list[Path]:
    """The image files :func:`load_folder` reads in a folder, sorted by name; ``FileNotFoundError``
    for a missing folder, :class:`UserError` for a file or a folder without images."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(errno.ENOENT, "no such folder (check the path)", str(folder))
    if not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder of images")
    named = [p for p in folder.iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    broken = sorted(p.name for p in named if p.is_symlink() and not p.exists())
    if broken:  # meant as images, and would otherwise vanish from the set without a word
        raise UserError(f"{folder}: broken link(s) {', '.join(broken[:3])}; fix or remove them")
    files = sorted(p for p in named if p.is_file())
    if not files:
        subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        hint = f" (its {len(subfolders)} subfolder(s) are not searched: give one of them)" if subfolders else ""
        raise UserError(f"{folder}: folder has no images{hint}; add files of type {', '.join(IMAGE_SUFFIXES)}")
    return files
