"""Tests for jfb_inverse.datasets: builtin images, IO, ellipse phantoms and the patch sampler."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from jfb_inverse.datasets import (
    BUILTIN_NAMES,
    BUILTIN_PHANTOMS,
    BUILTIN_TEST,
    BUILTIN_TRAIN,
    PatchSampler,
    dead_leaves,
    ellipse_phantoms,
    load_builtin,
    load_folder,
    load_image,
    save_image,
)
from jfb_inverse.datasets.dead_leaves import _topmost_disk
from jfb_inverse.datasets.images import _BUNDLED_FILES
from skimage.color import rgb2gray

from jfb_inverse.errors import UserError


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to open a network connection fail loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- builtin images ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_loads_offline_gray_and_rgb(name: str, no_network: None) -> None:
    assert (Path(skimage.data.data_dir) / _BUNDLED_FILES[name]).is_file()
    gray = load_builtin(name, channels=1)
    rgb = load_builtin(name, channels=3)
    assert gray.dtype == rgb.dtype == torch.float32
    assert gray.ndim == 3 and gray.shape[0] == 1
    assert rgb.shape == (3, *gray.shape[1:])
    assert min(gray.shape[1:]) >= 128
    for x in (gray, rgb):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert x.std() > 0.01  # a real picture, not a blank


def test_split_is_disjoint_and_complete() -> None:
    assert set(BUILTIN_TRAIN).isdisjoint(BUILTIN_TEST)
    assert set(BUILTIN_PHANTOMS).isdisjoint(set(BUILTIN_TRAIN) | set(BUILTIN_TEST))
    assert len(BUILTIN_TEST) == 4
    assert sorted(BUILTIN_NAMES) == sorted(set(BUILTIN_TRAIN) | set(BUILTIN_TEST) | set(BUILTIN_PHANTOMS))
    assert "shepp_logan_phantom" in BUILTIN_NAMES


def test_builtin_gray_is_luminance_and_rgb_of_gray_repeats() -> None:
    expected = rgb2gray(skimage.data.astronaut()).astype(np.float32)
    np.testing.assert_allclose(load_builtin("astronaut")[0].numpy(), expected, atol=1e-6)
    camera = load_builtin("camera", channels=3)
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[0], camera[2])
    assert torch.equal(camera[:1], load_builtin("camera"))


@pytest.mark.parametrize("size", [64, 256])
def test_builtin_size_center_crops_and_resizes(size: int) -> None:
    x = load_builtin("coins", channels=3, size=size)  # 303 x 384: the crop must drop the sides
    assert x.shape == (3, size, size)
    assert x.min() >= 0.0 and x.max() <= 1.0
    # The central square of the native image, downsampled, has the same mean brightness.
    native = load_builtin("coins", channels=3)
    left = (native.shape[-1] - native.shape[-2]) // 2
    assert abs(x.mean() - native[..., left : left + native.shape[-2]].mean()) < 0.01


def test_builtin_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown builtin image 'lena'.*camera"):
        load_builtin("lena")
    with pytest.raises(ValueError, match="channels"):
        load_builtin("camera", channels=2)


# --- image IO -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy"])
def test_save_load_round_trip(tmp_path: Path, suffix: str, channels: int) -> None:
    x = torch.rand(channels, 20, 24, generator=torch.Generator().manual_seed(0))
    path = tmp_path / f"image{suffix}"
    save_image(x.unsqueeze(0), path)  # (1, C, H, W) is accepted too
    y = load_image(path, channels=channels)
    assert y.shape == x.shape and y.dtype == torch.float32
    atol = 0.5 / 255 + 1e-6 if suffix == ".png" else 0.0
    torch.testing.assert_close(y, x, atol=atol, rtol=0.0)


def test_save_png_clips_and_npy_keeps_raw_values(tmp_path: Path) -> None:
    x = torch.tensor([[[-0.5, 0.25], [0.75, 1.5]]])
    save_image(x, tmp_path / "a.png")
    save_image(x, tmp_path / "a.npy")
    torch.testing.assert_close(load_image(tmp_path / "a.png"), x.clamp(0, 1), atol=0.5 / 255 + 1e-6, rtol=0)
    assert torch.equal(load_image(tmp_path / "a.npy"), x)


def test_load_npy_layouts_and_integer_scaling(tmp_path: Path) -> None:
    hwc = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
    np.save(tmp_path / "hw.npy", hwc[..., 0])
    np.save(tmp_path / "hwc.npy", hwc)
    np.save(tmp_path / "chw.npy", np.moveaxis(hwc, -1, 0))
    np.save(tmp_path / "u16.npy", np.full((6, 6), 65535, dtype=np.uint16))
    assert torch.equal(load_image(tmp_path / "hw.npy")[0], torch.from_numpy(hwc[..., 0]))
    assert torch.equal(load_image(tmp_path / "hwc.npy", 3), load_image(tmp_path / "chw.npy", 3))
    assert load_image(tmp_path / "hwc.npy", 3).shape == (3, 10, 12)
    assert torch.equal(load_image(tmp_path / "u16.npy"), torch.ones(1, 6, 6))


def test_load_image_size_crops_and_resizes_like_load_builtin(tmp_path: Path) -> None:
    native = load_builtin("coffee", channels=1)  # 400 x 600: not square
    save_image(native, tmp_path / "coffee.npy")
    assert torch.allclose(load_image(tmp_path / "coffee.npy", size=96), load_builtin("coffee", size=96))
    with pytest.raises(UserError, match="size"):
        load_image(tmp_path / "coffee.npy", size=0)


def test_a_folder_names_every_file_it_cannot_use_in_one_error(tmp_path: Path) -> None:
    save_image(torch.full((1, 8, 8), 0.5), tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    with pytest.raises(UserError, match=r"b\.png: not a readable image"):  # one: its own message, as before
        load_folder(tmp_path)
    (tmp_path / "c.png").write_bytes(b"")
    np.save(tmp_path / "d.npy", np.full((8, 8), 255.0, dtype=np.float32))  # 0-255 floats: refused
    # It stopped at the first, so a folder with several bad files took a run to find each.
    with pytest.raises(
        UserError, match=r"^3 files in .* cannot be used \(b\.png, c\.png, d\.npy\); the first: .*b\.png"
    ):
        load_folder(tmp_path)


def test_load_image_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no such image file.*missing\.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "fake.png").write_text("not an image")
    # UserError (a ValueError) is what the CLI prints as a one-line message.
    with pytest.raises(UserError, match=r"fake\.png: not a readable image"):
        load_image(tmp_path / "fake.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_image(tmp_path / "notes.txt")
    np.save(tmp_path / "four.npy", np.zeros((4, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="cannot convert a 4-channel image to 2 channels"):
        load_image(tmp_path / "four.npy", channels=2)
    np.save(tmp_path / "volume.npy", np.zeros((8, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        load_image(tmp_path / "volume.npy")


def test_save_image_errors_are_clear(tmp_path: Path) -> None:
    target = tmp_path / "missing_dir" / "out.png"
    with pytest.raises(FileNotFoundError, match=r"folder does not exist.*missing_dir"):
        save_image(torch.rand(1, 8, 8), target)
    assert not target.parent.exists()
    with pytest.raises(ValueError, match=r"unsupported file type '\.bmp'"):
        save_image(torch.rand(1, 8, 8), tmp_path / "out.bmp")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        save_image(torch.rand(8, 8), tmp_path / "out.png")


def test_load_folder_sorted_and_errors(tmp_path: Path) -> None:
    save_image(torch.full((1, 8, 8), 0.2), tmp_path / "b.png")
    save_image(torch.full((1, 8, 8), 0.4), tmp_path / "a.npy")
    save_image(torch.full((1, 8, 8), 0.6), tmp_path / ".hidden.png")
    (tmp_path / "readme.txt").write_text("not an image")
    items = load_folder(tmp_path, channels=3)
    assert [name for name, _ in items] == ["a.npy", "b.png"]
    assert all(x.shape == (3, 8, 8) for _, x in items)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="folder has no images; add files"):
        load_folder(empty)
    (empty / "2024").mkdir()  # images one level down are not read: the error says where to look
    with pytest.raises(ValueError, match=r"folder has no images \(its 1 subfolder\(s\) are not searched: give one"):
        load_folder(empty)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_folder(tmp_path / "nowhere")


# --- ellipse phantoms ---------------------------------------------------------------------------


def test_ellipse_phantoms_shape_range_and_determinism() -> None:
    rng_state = torch.random.get_rng_state()
    x = ellipse_phantoms(8, 64, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is untouched
    assert x.shape == (8, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(x, ellipse_phantoms(8, 64, seed=3))
    assert not torch.equal(x, ellipse_phantoms(8, 64, seed=4))
    # Every phantom has structure: several distinct levels and non-zero pixels.
    for phantom in x:
        assert (phantom > 0).float().mean() > 0.05
        assert phantom.unique().numel() > 3
    assert not torch.equal(x[0], x[1])


def test_ellipse_phantoms_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        ellipse_phantoms(0, 64, seed=0)


# --- dead leaves --------------------------------------------------------------------------------


def test_topmost_disk_matches_brute_force() -> None:
    # Disks of every size class, against a direct per-pixel search for the first covering disk.
    gen = torch.Generator().manual_seed(0)
    s, n = 40, 300
    radius = 0.3 + 25 * torch.rand(n, generator=gen) ** 3
    cx, cy = torch.rand(n, generator=gen) * 60 - 10, torch.rand(n, generator=gen) * 60 - 10
    centre = torch.arange(s) + 0.5
    dx = centre.view(1, 1, s) - cx.view(-1, 1, 1)
    dy = centre.view(1, s, 1) - cy.view(-1, 1, 1)
    inside = dx * dx + dy * dy <= (radius * radius).view(-1, 1, 1)
    expected = torch.where(inside.any(0), inside.to(torch.uint8).argmax(0), n)
    assert torch.equal(_topmost_disk(cx, cy, radius, s), expected)


def test_dead_leaves_shape_range_determinism_and_coverage() -> None:
    rng_state = torch.random.get_rng_state()
    x = dead_leaves(3, 64, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert x.shape == (3, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert torch.equal(x, dead_leaves(3, 64, seed=1))
    assert not torch.equal(x, dead_leaves(3, 64, seed=2))
    # Many objects at many scales: lots of distinct levels and strong edges, but also flat areas.
    grad = (x[..., 1:, :] - x[..., :-1, :]).abs()
    assert x.unique().numel() > 500
    assert (grad > 0.2).float().mean() > 0.01 and (grad < 0.02).float().mean() > 0.3


def test_dead_leaves_rejects_bad_parameters() -> None:
    with pytest.raises(UserError, match="r_min"):
        dead_leaves(2, 64, seed=0, r_min=20.0, r_max=10.0)


def test_training_batches_mix_in_dead_leaves_and_resume_exactly() -> None:
    from jfb_inverse.problems.config import DataConfig
    from jfb_inverse.training.data import TrainingSource

    data = DataConfig(dead_leaves=0.5, patch_size=32)
    source = TrainingSource(data, batch_size=4, seed=0, device=torch.device("cpu"))
    first = source.sample()
    assert first.shape == (4, 1, 32, 32)
    state = source.state_dict()
    expected = source.sample()
    again = TrainingSource(data, batch_size=4, seed=0, device=torch.device("cpu"))
    again.load_state_dict(state)
    assert torch.equal(again.sample(), expected)
    with pytest.raises(ValueError, match="dead_leaves"):
        DataConfig(source="phantoms", dead_leaves=0.5)


def test_training_scales_select_the_resolutions_of_the_training_images() -> None:
    from jfb_inverse.problems.config import DataConfig
    from jfb_inverse.training.data import TrainingSource, _multiscale

    assert DataConfig().scales == [1.0, 0.5, 0.25]
    assert DataConfig(scales=[0.7, 0.35]).scales == [0.7, 0.35]
    with pytest.raises(ValueError, match="scales"):
        DataConfig(scales=[1.5])
    image = torch.rand(1, 100, 120)
    sizes = [tuple(x.shape[-2:]) for x in _multiscale([image], (1.0, 0.5, 0.25), patch=32)]
    assert sizes == [(100, 120), (50, 60)]  # 0.25 would leave 25 px < 32: skipped
    sizes = [tuple(x.shape[-2:]) for x in _multiscale([image], (0.7,), patch=32)]
    assert sizes == [(70, 84)]  # no native resolution unless 1.0 is listed
    with pytest.raises(UserError, match=r"data\.scales"):
        TrainingSource(DataConfig(scales=[0.01]), batch_size=2, seed=0, device=torch.device("cpu"))


# --- patch sampler ------------------------------------------------------------------------------


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]


def test_patch_sampler_returns_dihedral_crops() -> None:
    h, w, p = 20, 30, 8
    image = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)  # every pixel value unique
    sampler = PatchSampler([image], patch_size=p, batch_size=64, seed=0)
    batch = sampler.sample()
    assert batch.shape == (64, 1, p, p) and batch.dtype == torch.float32
    seen = set()
    for patch in batch:
        top, left = divmod(int(patch.min()), w)  # the smallest value is the crop's top-left pixel
        crop = image[:, top : top + p, left : left + p]
        matches = [i for i, t in enumerate(_dihedral(crop)) if torch.equal(t, patch)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_patch_sampler_deterministic_and_resumable() -> None:
    images = [torch.rand(3, 40, 50), torch.rand(3, 33, 33)]
    a = PatchSampler(images, patch_size=16, batch_size=4, seed=7)
    b = PatchSampler(images, patch_size=16, batch_size=4, seed=7)
    assert torch.equal(a.sample(), b.sample())
    assert not torch.equal(a.sample(), PatchSampler(images, 16, 4, seed=8).sample())
    state = a.state_dict()
    expected = [a.sample() for _ in range(3)]
    resumed = PatchSampler(images, patch_size=16, batch_size=4, seed=0)
    resumed.load_state_dict(state)
    for batch in expected:
        assert torch.equal(resumed.sample(), batch)


def test_patch_sampler_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="image 1 is 20x40, smaller than the patch size 32"):
        PatchSampler([torch.rand(1, 64, 64), torch.rand(1, 20, 40)], patch_size=32, batch_size=2)
    with pytest.raises(ValueError, match="different channel counts"):
        PatchSampler([torch.rand(1, 64, 64), torch.rand(3, 64, 64)], patch_size=32, batch_size=2)
    with pytest.raises(ValueError, match="at least one image"):
        PatchSampler([], patch_size=32, batch_size=2)
    with pytest.raises(ValueError, match="state_dict"):
        PatchSampler([torch.rand(1, 64, 64)], 32, 2).load_state_dict({})


def test_clean_images_in_another_range_are_refused_with_the_fix(tmp_path):
    np.save(tmp_path / "scaled.npy", np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8))
    np.save(tmp_path / "overshoot.npy", np.linspace(-0.03, 1.04, 64, dtype=np.float32).reshape(8, 8))
    with pytest.raises(UserError, match=r"scaled.npy: pixel values span \[0, 255\], not \[0, 1\]; scale"):
        load_image(tmp_path / "scaled.npy", check_range=True)
    with pytest.raises(UserError, match=r"scaled\.npy"):
        load_folder(tmp_path)  # a folder holds clean images: checked by default
    # Measurements may leave [0, 1]: unchecked unless asked; slight overshoot is accepted.
    assert float(load_image(tmp_path / "scaled.npy").max()) == 255.0
    assert float(load_image(tmp_path / "overshoot.npy", check_range=True).min()) == pytest.approx(-0.03)
    assert [n for n, _ in load_folder(tmp_path, check_range=False)] == ["overshoot.npy", "scaled.npy"]


def test_a_colour_image_outside_the_range_is_refused_before_it_becomes_grey(tmp_path):
    rgb = np.stack([np.full((8, 8), v, np.float32) for v in (1.6, 0.5, 0.2)])  # luminance 0.74: inside [0, 1]
    np.save(tmp_path / "over.npy", rgb)
    with pytest.raises(UserError, match=r"over.npy: pixel values span \[0.2, 1.6\]"):
        load_image(tmp_path / "over.npy", channels=1, check_range=True)
    rgba = np.concatenate([rgb / 2, np.full((1, 8, 8), 7.0, np.float32)])  # in range; alpha is not checked
    np.save(tmp_path / "alpha.npy", rgba)
    assert load_image(tmp_path / "alpha.npy", channels=3, check_range=True).shape == (3, 8, 8)


def test_a_training_folder_reports_images_it_drops_or_converts(tmp_path: Path) -> None:
    import warnings

    import skimage.io

    from jfb_inverse.problems.config import DataConfig
    from jfb_inverse.training.data import TrainingSource

    skimage.io.imsave(tmp_path / "big.png", skimage.data.camera()[:64, :64], check_contrast=False)
    skimage.io.imsave(tmp_path / "small.png", skimage.data.camera()[:16, :16], check_contrast=False)
    skimage.io.imsave(tmp_path / "colour.png", skimage.data.astronaut()[:48, :48], check_contrast=False)
    data = DataConfig(source="folder", path=str(tmp_path), patch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = TrainingSource(data, batch_size=2, seed=0, device=torch.device("cpu"))
    messages = [str(w.message) for w in caught]
    assert any(
        "1 of 3 images" in m and "smaller than data.patch_size (32 px)" in m and "small.png" in m for m in messages
    )
    assert any("1 of 3 images" in m and "colour converted to grey" in m for m in messages)
    assert source.sample().shape == (2, 1, 32, 32)


def test_a_missing_data_path_names_the_key_and_an_all_synthetic_batch_says_the_folder_is_unused(tmp_path):
    from jfb_inverse.problems.config import DataConfig
    from jfb_inverse.training.data import TrainingSource

    missing = DataConfig(source="folder", path=str(tmp_path / "nope"), patch_size=32)
    with pytest.raises(UserError, match=r"data.path '.*nope': no such folder .*data.path in the --config file"):
        TrainingSource(missing, batch_size=2, seed=0, device=torch.device("cpu"))
    save_image(load_builtin("camera", size=48), tmp_path / "a.png")
    synthetic = DataConfig(source="folder", path=str(tmp_path), patch_size=32, dead_leaves=1.0)
    with pytest.warns(UserWarning, match="the images of data.path are not used"):
        TrainingSource(synthetic, batch_size=2, seed=0, device=torch.device("cpu"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "mixed" has no data.path to speak of
        TrainingSource(DataConfig(source="mixed", dead_leaves=1.0, patch_size=32), 2, 0, torch.device("cpu"))


def test_a_folder_reads_bmp_and_refuses_broken_links_named_as_images(tmp_path):
    from jfb_inverse.datasets.images import image_files

    x = load_builtin("camera", size=24)
    save_image(x, tmp_path / "a.png")
    import skimage.io

    skimage.io.imsave(tmp_path / "b.bmp", (x[0].numpy() * 255).round().astype(np.uint8), check_contrast=False)
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.bmp"]
    assert torch.equal(load_folder(tmp_path)[1][1], load_folder(tmp_path)[0][1])  # lossless, same 8-bit pixels
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(UserError, match=r"broken link\(s\) c.png; fix or remove them"):
        image_files(tmp_path)  # it used to vanish from the training set without a word


def test_a_folder_reads_gif_and_webp_and_refuses_animated_gifs(tmp_path):
    from PIL import Image

    x = load_builtin("camera", size=24)
    pixels = (x[0].numpy() * 255).round().astype(np.uint8)
    save_image(x, tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "b.gif")
    Image.fromarray(pixels).save(tmp_path / "c.webp", lossless=True)
    notes: list[str] = []
    images = load_folder(tmp_path, note=notes.append)
    assert [name for name, _ in images] == ["a.png", "b.gif", "c.webp"]  # they were skipped without a word
    for _, image in images[1:]:  # both decode as RGB with equal channels: the grey is the PNG's pixels
        assert torch.equal(image, images[0][1])
    assert notes == []  # a grey image stored as RGB is not reported as a colour image converted
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(tmp_path / "d.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(UserError, match=r"d.gif: image has shape \(2, 24, 24, 3\).*animated.*as PNG"):
        load_folder(tmp_path)


@pytest.mark.parametrize("writer", ["tifffile", "pillow"])
@pytest.mark.parametrize("pages", [2, 3, 4])
def test_a_multi_page_tiff_is_refused_not_read_as_colour(tmp_path, pages, writer):
    import tifffile
    from PIL import Image

    frames = (np.random.default_rng(0).random((pages, 16, 20)) * 255).astype(np.uint8)
    if writer == "tifffile":
        tifffile.imwrite(tmp_path / "stack.tif", frames, photometric="minisblack")
    else:
        first, *rest = (Image.fromarray(frame) for frame in frames)
        first.save(tmp_path / "stack.tif", save_all=True, append_images=rest)
    # imageio returns 3 and 4 grey pages as (16, 20, 3) and (16, 20, 4): they became one image turned
    # grey by luminance, or three pages with the fourth dropped as alpha, without a word.
    # Two pages come as (2, 16, 20), which the shape check refuses.
    with pytest.raises(UserError, match=r"stack.tif: .*multi-page, animated or volume files are not supported"):
        load_image(tmp_path / "stack.tif")


def test_a_one_page_tiff_saved_from_a_channel_first_array_is_one_grey_image(tmp_path):
    import tifffile

    x = np.random.default_rng(0).random((1, 16, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", x, photometric="minisblack")  # as torch's (1, H, W) saves
    assert torch.equal(load_image(tmp_path / "x.tif"), torch.from_numpy(x))  # it was refused as multi-page
    rgba = (np.random.default_rng(1).random((4, 16, 20)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgba)  # one page, planar RGB + alpha: still read as RGBA
    assert load_image(tmp_path / "planar.tif", channels=3).shape == (3, 16, 20)


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_a_cmyk_file_is_read_as_its_rgb_colours(tmp_path, suffix):
    from PIL import Image

    rgb = Image.fromarray((np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8))
    rgb.convert("CMYK").save(tmp_path / f"print{suffix}")
    expected = np.asarray(Image.open(tmp_path / f"print{suffix}").convert("RGB"), dtype=np.float32) / 255
    # Its four inks were read as R, G, B and an alpha channel to drop: colours off by 0.5 on average.
    image = load_image(tmp_path / f"print{suffix}", channels=3)
    torch.testing.assert_close(image, torch.from_numpy(expected).permute(2, 0, 1), rtol=0, atol=1e-6)


def test_a_16_bit_cmyk_tiff_says_it_loses_bits(tmp_path):
    import tifffile

    inks = (np.random.default_rng(0).random((16, 20, 4)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", inks, photometric="separated")
    with pytest.warns(UserWarning, match=r"c16.tif: a 16-bit CMYK image, which Pillow converts to RGB at 8 bits"):
        assert load_image(tmp_path / "c16.tif", channels=3).shape == (3, 16, 20)


def test_a_grey_lossy_webp_is_not_reported_as_a_colour_image(tmp_path):
    # Lossy WebP's YUV rounding leaves a grey image's channels 1/255 apart: it was reported as a colour
    # image converted to grey. A colour photo still is.
    from PIL import Image

    grey = (load_builtin("camera", size=64)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.webp", quality=80)
    colour = (load_builtin("astronaut", size=64, channels=3).permute(1, 2, 0).numpy() * 255).round()
    Image.fromarray(colour.astype(np.uint8)).save(tmp_path / "colour.webp", quality=80)
    decoded = np.asarray(Image.open(tmp_path / "grey.webp").convert("RGB")).astype(int)
    assert 0 < np.abs(decoded - decoded[..., [1, 2, 0]]).max() <= 2  # unequal, as the format leaves them
    notes: list[str] = []
    image = load_image(tmp_path / "grey.webp", channels=1, note=notes.append)
    assert notes == [] and image.shape == (1, 64, 64)
    assert (image[0] - torch.from_numpy(grey / 255)).abs().mean() < 0.02  # lossy, but the same picture
    load_image(tmp_path / "colour.webp", channels=1, note=notes.append)
    assert len(notes) == 1 and "colour image converted to grey" in notes[0]


def _png16(path: Path, pixels: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_a_16_bit_colour_png_warns_once_that_it_is_read_at_8_bits(tmp_path, monkeypatch):
    from jfb_inverse.datasets import images

    monkeypatch.setattr(images, "_PNG16_WARNED", False)
    rng = np.random.default_rng(0)
    _png16(tmp_path / "grey.png", rng.integers(0, 65536, (8, 8)), colour_type=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16-bit grey keeps its 16 bits: nothing to say
        grey = load_image(tmp_path / "grey.png")
    assert not np.allclose(grey.numpy() * 255, np.round(grey.numpy() * 255))  # not 8-bit steps
    for name in ("a.png", "b.png"):
        _png16(tmp_path / name, rng.integers(0, 65536, (8, 8, 3)), colour_type=2)
    with pytest.warns(UserWarning, match=r"a.png: a 16-bit PNG with colour or alpha.*16-bit TIFF") as record:
        load_image(tmp_path / "a.png", channels=3)
        load_image(tmp_path / "b.png", channels=3)
    assert len([w for w in record if "16-bit PNG" in str(w.message)]) == 1  # once, not once per file
