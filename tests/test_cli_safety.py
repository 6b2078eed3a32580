"""The CLI never loses or silently ignores the user's data: outputs that would replace inputs, two
inputs with one output name, an existing run, options that --resume would ignore, relative paths
stored in a run, and usage errors in the one-line ``error:`` format."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from jfb_inverse.cli.app import app, run_app
from jfb_inverse.datasets import load_builtin, save_image
from typer.testing import CliRunner

from jfb_inverse.errors import UserError
from jfb_inverse.problems import load_config_file

runner = CliRunner()
TINY = (
    "[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
    "[training]\nbatch_size = 2\nlog_every = 1\n"
)


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


@pytest.fixture
def clean_png(tmp_path):
    path = tmp_path / "clean.png"
    save_image(load_builtin("camera", size=40), path)
    return path


def test_simulate_refuses_to_overwrite_its_input(clean_png):
    before = clean_png.read_bytes()
    result = invoke("simulate", "--problem", "deblur", "--input", str(clean_png), "--output", str(clean_png))
    one_line_error(result, "is the input file")
    assert clean_png.read_bytes() == before


def test_simulate_refuses_two_definition_sources(clean_png, tmp_path):
    result = invoke("simulate", "--checkpoint", "builtin:deblur", "--problem", "ct",
                    "--input", str(clean_png), "--output", str(tmp_path / "y.npy"))  # fmt: skip
    one_line_error(result, "give either --checkpoint or --problem")
    assert not (tmp_path / "y.npy").exists()


def test_reconstruct_refuses_to_overwrite_its_input(tmp_path):
    y = tmp_path / "y.npy"
    np.save(y, np.zeros((1, 32, 32), dtype=np.float32))
    before = y.read_bytes()
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(y), "--output", str(y))
    one_line_error(result, "is the input file")
    assert y.read_bytes() == before


def test_reconstruct_folder_refuses_colliding_names_before_any_work(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.zeros((1, 32, 32), dtype=np.float32))
    save_image(torch.zeros(1, 32, 32), src / "a.png")
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(src),
                    "--output", str(tmp_path / "out"))  # fmt: skip
    one_line_error(result, "would both be written as a.png")
    assert not (tmp_path / "out").exists()
    # Into its own folder as .npy, a.npy's result would replace a.npy.
    (src / "a.png").unlink()
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(src),
                    "--output", str(src), "--format", "npy")  # fmt: skip
    one_line_error(result, "would replace an input file")
    assert not np.load(src / "a.npy").any()


def test_reconstruct_folder_where_every_file_fails_exits_2_and_leaves_no_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        np.save(src / f"{name}.npy", np.full((1, 32, 32), np.nan, dtype=np.float32))
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(src),
                    "--output", str(tmp_path / "out"), "--device", "cpu")  # fmt: skip
    one_line_error(result, "none of the 2 measurements")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "name", "other_option", "other_name"),
    [("--figure", "f.xyz", "--json", "r.json"), ("--json", "r.txt", "--figure", "f.png")],
)
def test_evaluate_checks_output_names_before_evaluating(tmp_path, option, name, other_option, other_name):
    other = tmp_path / other_name
    args = [option, str(tmp_path / name), other_option, str(other)]
    result = invoke("evaluate", "--checkpoint", "builtin:deblur", *args)
    one_line_error(result, option)
    assert not other.exists()  # the valid output is not written either: nothing half-done


def test_train_data_folder_errors_come_first_and_write_nothing(tmp_path, clean_png):
    (tmp_path / "empty").mkdir()
    for data, message in [
        (tmp_path / "missing", "no such folder"),
        (clean_png, "is a file, not a folder of images"),
        (tmp_path / "empty", "folder has no images"),
    ]:
        result = invoke("train", "--problem", "deblur", "--data", str(data), "--out", str(tmp_path / "run"))
        one_line_error(result, "--data: ")
        assert message in " ".join(result.output.split()) and data.name in result.output
        assert not (tmp_path / "run").exists()


def test_resume_refuses_options_it_would_ignore(tmp_path):
    result = invoke("train", "--resume", "--out", str(tmp_path / "run"), "--lr", "0.1", "--problem", "ct")
    one_line_error(result, "--problem, --lr would be ignored")


def test_nproc_checks_the_definition_before_launching_torchrun(monkeypatch):
    def launch(*_args):
        raise AssertionError("torchrun must not start for a definition that cannot train")

    from jfb_inverse.training import distributed

    monkeypatch.setattr(distributed, "launch", launch)
    one_line_error(invoke("train", "--nproc", "2", "--problem", "nope"), "unknown problem 'nope'")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(invoke("train", "--nproc", "2", "--problem", "deblur", "--device", "cuda"), "no CUDA GPU")


def _tiny_folder_run(tmp_path: Path, monkeypatch) -> None:
    """In ``tmp_path`` (the working folder): ``imgs/`` of two images and ``tiny.toml``, a fast definition."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    for name in ("camera", "coins"):
        save_image(load_builtin(name, size=48), tmp_path / "imgs" / f"{name}.png")
    (tmp_path / "tiny.toml").write_text(TINY)


def test_a_run_stores_absolute_paths_and_is_never_overwritten_silently(tmp_path, monkeypatch):
    _tiny_folder_run(tmp_path, monkeypatch)
    args = ["train", "--problem", "deblur", "--config", "tiny.toml", "--data", "imgs", "--steps", "1",
            "--out", "run", "--device", "cpu"]  # fmt: skip
    assert invoke(*args).exit_code == 0
    stored = load_config_file(tmp_path / "run" / "problem.toml")
    assert stored["data"]["path"] == str(tmp_path / "imgs")  # resumable from any folder
    weights = (tmp_path / "run" / "model.pt").read_bytes()

    one_line_error(invoke(*args), "already holds a trained run")
    assert (tmp_path / "run" / "model.pt").read_bytes() == weights
    one_line_error(invoke(*args, "--overwrite", "--resume"), "drop it to --resume")

    result = invoke(*args[:-4], "--steps", "2", "--out", "run", "--device", "cpu", "--overwrite")
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["step"] == 2
    # What --resume may change is validated like any definition.
    one_line_error(invoke("train", "--resume", "--out", "run", "--max-minutes", "0"), "training.max_minutes")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--bogus", "1"], "No such option: --bogus"),
        # click listed "--nproc, --problem": only the closest option is named.
        (["train", "--problme", "deblur"], "No such option: --problme; did you mean --problem? (see:"),
        (["train", "--steps", "0"], "Invalid value for '--steps'"),
        (["reconstruct", "--checkpoint", "builtin:deblur"], "Missing option '--input'"),
        (["train", "--debug"], "--debug goes before the command"),
        (["nope"], "No such command 'nope'"),
        # A Literal option's message without pydantic's "Value error, " prefix.
        (["evaluate", "--equivariance", "foo"], "'--equivariance': 'foo' is not one of 'none', 'rotations'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv, message, capsys):
    assert run_app(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_help_and_version_exit_0_and_no_arguments_prints_the_help(capsys):
    assert run_app(["--version"]) == 0
    assert "jfb-inverse" in capsys.readouterr().out
    assert run_app(["train", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out
    assert run_app([]) == 2  # click's convention for a bare command: help, exit 2
    captured = capsys.readouterr()
    assert "Usage" in captured.out and "error" not in captured.err


def test_resume_follows_a_moved_training_folder_and_says_when_it_changed(tmp_path, monkeypatch):
    _tiny_folder_run(tmp_path, monkeypatch)
    result = invoke("train", "--problem", "deblur", "--config", "tiny.toml", "--data", "imgs", "--steps", "1",
                    "--out", "run", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    # The run's own folder named again is no change (it was refused as "--data would be ignored").
    result = invoke("train", "--resume", "--out", "run", "--steps", "2", "--data", "imgs")
    assert result.exit_code == 0 and "has changed" not in result.output, result.output
    one_line_error(invoke("train", "--resume", "--out", "run", "--steps", "3", "--data", "run"),
                   "on its own data (" + str(tmp_path / "imgs") + "), so --data 'run' would be ignored")  # fmt: skip
    # Moved: the error names the way on (it advised --data, which --resume refused).
    (tmp_path / "imgs").rename(tmp_path / "photos")
    gone = f"the run's training folder '{tmp_path / 'imgs'}' is gone; if it moved, give its new place"
    one_line_error(invoke("train", "--resume", "--out", "run", "--steps", "3"), gone)
    save_image(load_builtin("rocket", size=48), tmp_path / "photos" / "rocket.png")
    with pytest.warns(
        UserWarning,
        match=re.escape("has changed since the run's last checkpoint (1 image(s) added, 0 gone: +rocket.png)"),
    ):
        result = invoke("train", "--resume", "--out", "run", "--steps", "3", "--data", "photos")
    assert result.exit_code == 0, result.output
    assert load_config_file(tmp_path / "run" / "problem.toml")["data"]["path"] == str(tmp_path / "photos")
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["step"] == 3


def test_overwrite_removes_the_old_run_before_training(tmp_path, monkeypatch):
    from jfb_inverse.errors import UserError
    from jfb_inverse.training import loop

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.pt", "problem.toml", "history.jsonl", "training.png"):
        (run / name).write_text("the old run")
    seen: list[list[str]] = []

    def interrupted(cfg, out, *args, on_start, **kwargs):
        on_start()  # the model and the data are set up: training begins
        seen.append(sorted(p.name for p in out.iterdir()))
        raise UserError("interrupted before the first checkpoint")

    monkeypatch.setattr(loop, "train", interrupted)
    result = invoke("train", "--problem", "deblur", "--out", str(run), "--overwrite", "--device", "cpu")
    one_line_error(result, "interrupted before the first checkpoint")
    assert seen == [[]]  # nothing of the old run is left for --resume to mix with the new one


def test_overwrite_with_bad_data_keeps_the_old_run_and_says_so_before_the_header(tmp_path):
    # Float pixels in 0-255: refused when the data are loaded, which comes before the old run goes.
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    for name in ("model.pt", "problem.toml", "history.jsonl", "training.png"):
        (run / name).write_text("the old run")
    np.save(data / "a.npy", np.full((80, 80), 200.0, dtype=np.float32))
    result = invoke("train", "--problem", "deblur", "--data", str(data), "--out", str(run), "--overwrite",
                    "--steps", "2", "--device", "cpu")  # fmt: skip
    one_line_error(result, "a.npy: pixel values span [200, 200], not [0, 1]; scale the image to [0, 1]")
    assert "training deblur" not in result.output
    assert all((run / name).read_text() == "the old run" for name in ("model.pt", "history.jsonl"))


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("builtin:deblur", "tiny.png: image of 8x8 px is smaller than the 15x15 blur kernel"),
        # CT takes an 8x8 image; SSIM's 11x11 window does not.
        ("builtin:ct", "tiny.png: image of 8x8 px is too small to score (SSIM needs at least 11x11)"),
    ],
)
def test_evaluate_names_the_image_that_does_not_fit_before_any_work(tmp_path, checkpoint, message):
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_image(load_builtin("camera", size=48), folder / "big.png")
    save_image(load_builtin("coins", size=8), folder / "tiny.png")
    result = invoke("evaluate", "--checkpoint", checkpoint, "--images", str(folder),
                    "--json", str(tmp_path / "r.json"))  # fmt: skip
    one_line_error(result, message)
    assert not (tmp_path / "r.json").exists()


def test_reconstruct_refuses_a_format_that_contradicts_the_output_file(tmp_path):
    y = tmp_path / "y.npy"
    np.save(y, np.zeros((1, 32, 32), dtype=np.float32))
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(y),
                    "--output", str(tmp_path / "x.npy"), "--format", "tif")  # fmt: skip
    one_line_error(result, "--format tif is for folder mode")
    assert not (tmp_path / "x.npy").exists()


def test_upper_case_output_names_are_written_and_leave_no_temporary_file(tmp_path, clean_png):
    for name in ("Y.NPY", "Y.PNG"):
        result = invoke("simulate", "--problem", "deblur", "--input", str(clean_png), "--output", str(tmp_path / name))
        assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "Y.NPY").shape == (1, 40, 40)
    assert (tmp_path / "Y.PNG").stat().st_size > 100
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_simulate_refuses_a_clean_image_outside_the_unit_range(tmp_path):
    np.save(tmp_path / "clean.npy", np.full((40, 40), 128.0, dtype=np.float32))
    out = tmp_path / "y.npy"
    result = invoke("simulate", "--problem", "deblur", "--input", str(tmp_path / "clean.npy"), "--output", str(out))
    one_line_error(result, "clean.npy: pixel values span [128, 128], not [0, 1]; scale the image to [0, 1]")
    assert not out.exists()


def test_tol_zero_is_a_one_line_error_not_a_traceback(tmp_path):
    y = tmp_path / "y.npy"
    np.save(y, np.zeros((1, 32, 32), dtype=np.float32))
    for command in ("reconstruct", "evaluate"):
        args = ["--input", str(y), "--output", str(tmp_path / "x.npy")] if command == "reconstruct" else []
        result = invoke(command, "--checkpoint", "builtin:deblur", *args, "--tol", "0")
        one_line_error(result, "--tol must be > 0, got 0")
    assert not (tmp_path / "x.npy").exists()


def test_an_empty_argument_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_app(["train", "--problem", "deblur", "--out", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "empty argument after --out" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_steps_it_has_already_done(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    run = str(tmp_path / "run")
    args = ["train", "--problem", "deblur", "--config", str(tmp_path / "tiny.toml"), "--steps", "2", "--out", run]
    assert invoke(*args, "--device", "cpu").exit_code == 0
    before = (tmp_path / "run" / "problem.toml").read_text()
    one_line_error(invoke("train", "--resume", "--out", run, "--steps", "1"), "is at step 2 of 2; give --steps above 2")
    one_line_error(invoke("train", "--resume", "--out", run), "is at step 2 of 2")
    # A finished run whose final evaluation was cut short is scored by evaluate, which the error names.
    one_line_error(invoke("train", "--resume", "--out", run), f"jfb-inverse evaluate --checkpoint {str(run)!r}")
    assert (tmp_path / "run" / "problem.toml").read_text() == before


def test_a_train_error_before_the_progress_bar_is_exactly_one_line(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('problem = "deblur"\n[operator]\nkernel = "file"\npath = "nothere.npy"\n')
    assert run_app(["train", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.startswith("error: operator.path 'nothere.npy'") and err.count("\n") == 1, repr(err)
    assert "looked in the file's folder" in captured.err  # where a relative name was looked for


def test_a_colour_measurement_for_a_grey_model_is_converted_and_said(tmp_path):
    rgb = tmp_path / "rgb.png"
    save_image(load_builtin("astronaut", channels=3, size=40), rgb)
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(rgb),
                    "--output", str(tmp_path / "x.png"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "colour image converted to grey (luminance)" in " ".join(result.output.split())
    assert (tmp_path / "x.png").is_file()


def test_measurements_beyond_the_unit_range_go_to_tif_unclipped_never_to_png(tmp_path):
    from jfb_inverse.measurements import read_measurement, write_array

    y = torch.linspace(-0.2, 1.7, 12 * 10).reshape(1, 12, 10)  # a CT sinogram's kind of range
    from jfb_inverse.errors import UserError

    with pytest.raises(UserError, match=r"beyond the \[0, 1\] an 8-bit PNG holds; write .npy or .tif"):
        write_array(y, tmp_path / "y.png")
    assert not (tmp_path / "y.png").exists()
    write_array(y, tmp_path / "y.tif")
    assert torch.equal(read_measurement(tmp_path / "y.tif", channels=1), y)
    write_array(y.clamp(0, 1), tmp_path / "ok.png")  # within [0, 1]: 8-bit
    assert float((read_measurement(tmp_path / "ok.png", channels=1) - y.clamp(0, 1)).abs().max()) <= 0.5 / 255 + 1e-6


def test_simulate_clips_a_png_measurements_noise_and_refuses_what_noise_does_not_explain(tmp_path):
    # A black image blurred, with noise sigma 0.02: about half its values are negative, the lowest
    # near -4 sigma, past the 0.05 a clean image may stray; a PNG takes them clipped to 0.
    np.save(tmp_path / "black.npy", np.zeros((1, 48, 48), np.float32))
    args = ["simulate", "--problem", "deblur", "--noise-sigma", "0.02", "--input", str(tmp_path / "black.npy")]
    assert (result := invoke(*args, "--output", str(tmp_path / "y.npy"))).exit_code == 0, result.output
    assert float(np.load(tmp_path / "y.npy").min()) < -0.06
    assert (result := invoke(*args, "--output", str(tmp_path / "y.png"))).exit_code == 0, result.output
    # Poisson noise (gain 1000: std about 0.03 at 1) on a white image overshoots 1.1: clipped too.
    np.save(tmp_path / "white.npy", np.ones((1, 48, 48), np.float32))
    (tmp_path / "poisson.toml").write_text('problem = "deblur"\n[noise]\nkind = "poisson"\n')
    poisson = ["simulate", "--config", str(tmp_path / "poisson.toml"), "--input", str(tmp_path / "white.npy")]
    assert (result := invoke(*poisson, "--output", str(tmp_path / "p.npy"))).exit_code == 0, result.output
    assert float(np.load(tmp_path / "p.npy").max()) > 1.08
    assert (result := invoke(*poisson, "--output", str(tmp_path / "p.png"))).exit_code == 0, result.output
    # Values further beyond [0, 1] than the noise explains (a CT sinogram of a white square peaks
    # near 1.75): refused, nothing written.
    ct = ["simulate", "--problem", "ct", "--input", str(tmp_path / "white.npy")]
    result = invoke(*ct, "--output", str(tmp_path / "b.png"))
    assert result.exit_code == 2 and "beyond the [0, 1] an 8-bit PNG holds" in " ".join(result.output.split())
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "b.png.json").exists()


def test_a_write_that_fails_names_the_users_file_not_the_temporary_one(tmp_path):
    from jfb_inverse.atomic import atomic_path

    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "x.npy"
    with pytest.raises(NotADirectoryError) as info, atomic_path(target) as tmp:
        np.save(tmp, np.zeros(3))
    assert info.value.filename == str(target)


def test_a_channels_last_npy_measurement_is_read_as_such(tmp_path):

    from jfb_inverse.measurements import read_measurement

    hw1 = np.random.default_rng(0).random((40, 48, 1), dtype=np.float32)
    np.save(tmp_path / "hw1.npy", hw1)
    notes: list[str] = []
    y = read_measurement(tmp_path / "hw1.npy", 1, notes.append)
    assert y.shape == (1, 40, 48) and torch.equal(y[0], torch.from_numpy(hw1[..., 0]))
    assert notes == ["hw1.npy: a 40x48x1 array, read as channels last"]
    sinogram = np.zeros((1, 46, 30), dtype=np.float32)  # channels first, as written: unchanged
    np.save(tmp_path / "sino.npy", sinogram)
    assert read_measurement(tmp_path / "sino.npy", 1).shape == (1, 46, 30)


def test_a_two_channel_image_measurement_is_refused_unless_its_second_channel_is_opaque_alpha(tmp_path):
    import skimage.io

    from jfb_inverse.measurements import read_measurement

    kspace = np.random.default_rng(0).standard_normal((24, 24, 2)).astype(np.float32)  # real, imaginary
    skimage.io.imsave(tmp_path / "k.tif", kspace, check_contrast=False)
    with pytest.raises(UserError, match=r"not an opaque alpha.*\(2C, H, W\) \.npy"):
        read_measurement(tmp_path / "k.tif", 1)  # its imaginary half used to be dropped as alpha
    grey_alpha = np.stack([np.linspace(0, 1, 576, dtype=np.float32).reshape(24, 24), np.ones((24, 24), np.float32)], -1)
    skimage.io.imsave(tmp_path / "ga.tif", grey_alpha, check_contrast=False)
    assert torch.equal(read_measurement(tmp_path / "ga.tif", 1)[0], torch.from_numpy(grey_alpha[..., 0]))


def test_evaluate_refuses_outputs_that_are_its_input_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    image = folder / "a.png"
    save_image(load_builtin("camera", size=32), image)
    before = image.read_bytes()
    result = invoke("evaluate", "--checkpoint", "builtin:deblur", "--images", str(folder), "--figure", str(image))
    one_line_error(result, "--figure")
    assert "is one of the --images inputs" in " ".join(result.output.split())
    assert image.read_bytes() == before


def test_train_refuses_to_write_into_its_data_folder(tmp_path):
    # The run's figure (training.png) would replace a user's image of that name, and be read as a
    # training image by a later run.
    data = tmp_path / "data"
    data.mkdir()
    save_image(load_builtin("camera", size=64), data / "training.png")
    before = (data / "training.png").read_bytes()
    result = invoke("train", "--problem", "deblur", "--data", str(data), "--steps", "2", "--out", str(data))
    one_line_error(result, "is the training-data folder (--data); give another --out")
    assert sorted(p.name for p in data.iterdir()) == ["training.png"]
    assert (data / "training.png").read_bytes() == before


def test_integer_npy_measurements_are_scaled_like_image_files(tmp_path):
    from jfb_inverse.measurements import read_measurement

    pixels = (np.arange(16 * 16) % 256).astype(np.uint8).reshape(16, 16)
    np.save(tmp_path / "y8.npy", pixels)
    save_image(torch.from_numpy(pixels / 255.0).float()[None], tmp_path / "y8.png")
    notes: list[str] = []
    from_npy = read_measurement(tmp_path / "y8.npy", 1, notes.append)
    assert torch.allclose(from_npy, read_measurement(tmp_path / "y8.png", 1), atol=1e-6)
    assert float(from_npy.max()) == 1.0 and "scaled to [0, 1] by 255" in notes[0]
    np.save(tmp_path / "y16.npy", np.full((16, 16), 65535, dtype=np.uint16))
    assert float(read_measurement(tmp_path / "y16.npy", 1).min()) == 1.0
    np.save(tmp_path / "i32.npy", np.zeros((16, 16), dtype=np.int32))
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(tmp_path / "i32.npy"),
                    "--output", str(tmp_path / "x.npy"))  # fmt: skip
    one_line_error(result, "holds int32 integers, which have no agreed scale")
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("command", ["simulate", "evaluate", "demo"])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_seeds_outside_the_definitions_range_are_usage_errors(command, seed, capsys, tmp_path):
    args = {"simulate": ["--problem", "deblur", "--input", "x.png", "--output", str(tmp_path / "y.npy")],
            "evaluate": ["--checkpoint", "builtin:deblur"], "demo": ["--steps", "1"]}[command]  # fmt: skip
    assert run_app([command, *args, "--seed", seed]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid value for '--seed'") and len(err.strip().splitlines()) == 1, err


def test_reconstruct_folder_mode_refuses_an_output_named_like_a_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.zeros((1, 32, 32), dtype=np.float32))
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(src),
                    "--output", str(tmp_path / "out.png"))  # fmt: skip
    one_line_error(result, "names a file, but --input is a folder")
    assert not (tmp_path / "out.png").exists()


def test_simulate_refuses_a_folder_where_its_record_goes(tmp_path, clean_png):
    (tmp_path / "y.npy.json").mkdir()
    result = invoke("simulate", "--problem", "deblur", "--input", str(clean_png), "--output", str(tmp_path / "y.npy"))
    one_line_error(result, "where simulate records how 'y.npy' was made, is a folder")
    assert not (tmp_path / "y.npy").exists()


def test_a_kernel_larger_than_the_training_patches_names_the_patch_size(tmp_path):
    np.save(tmp_path / "k.npy", np.ones((101, 101)))
    config = tmp_path / "k.toml"
    config.write_text(f'[operator]\nkernel = "file"\npath = "{tmp_path / "k.npy"}"\n')
    result = invoke("train", "--problem", "deblur", "--config", str(config), "--steps", "1",
                    "--out", str(tmp_path / "run"))  # fmt: skip
    one_line_error(result, "training patches: image of 64x64 px is smaller than the 101x101 blur kernel")
    assert "change data.patch_size (64)" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_a_held_out_size_the_operator_refuses_is_refused_before_training(tmp_path):
    # It used to train every step, then skip the held-out evaluation with a warning and exit 0.
    config = tmp_path / "sr.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 65\n[model]\nwidth = 8\n[training]\nbatch_size = 2\n")
    result = invoke("train", "--problem", "superres", "--config", str(config), "--steps", "1",
                    "--out", str(tmp_path / "run"))  # fmt: skip
    one_line_error(result, "held-out images: super-resolution x2 needs image sides divisible by 2, got 65x65")
    assert "change data.eval_size (65)" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_names_that_differ_only_in_case_are_refused_with_both_output_names(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.zeros((1, 32, 32), dtype=np.float32))
    (src / "A.NPY").write_bytes((src / "a.npy").read_bytes())  # np.save would append .npy to this name
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(src),
                    "--output", str(tmp_path / "out"))  # fmt: skip
    one_line_error(result, "would be written as A.png and a.png, one file on macOS and Windows")
    assert not (tmp_path / "out").exists()


def test_evaluate_says_when_it_converts_a_colour_image(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_image(load_builtin("astronaut", channels=3, size=32), folder / "rgb.png")
    result = invoke("evaluate", "--checkpoint", "builtin:deblur", "--images", str(folder), "--max-iter", "2")
    assert result.exit_code == 0, result.output
    assert "rgb.png: colour image converted to grey" in " ".join(result.output.split())


def test_evaluate_names_the_unconverged_images_and_the_fix(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_image(load_builtin("camera", size=32), folder / "cam.png")
    result = invoke("evaluate", "--checkpoint", "builtin:deblur", "--images", str(folder), "--max-iter", "1")
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "did not reach its tolerance on cam.png (best iterate kept); evaluate with a larger --max-iter" in text


def test_evaluate_writes_no_json_when_its_figure_fails(tmp_path, monkeypatch):
    import jfb_inverse.evaluation

    def fails(*_args, **_kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "f.png"))

    monkeypatch.setattr(jfb_inverse.evaluation, "comparison_figure", fails)
    folder = tmp_path / "imgs"
    folder.mkdir()
    save_image(load_builtin("camera", size=32), folder / "cam.png")
    result = invoke("evaluate", "--checkpoint", "builtin:deblur", "--images", str(folder), "--max-iter", "1",
                    "--json", str(tmp_path / "r.json"), "--figure", str(tmp_path / "f.png"))  # fmt: skip
    one_line_error(result, "No space left on device")
    assert not (tmp_path / "r.json").exists()


def test_sigterm_during_the_final_evaluation_says_where_the_model_is(tmp_path, monkeypatch):
    import os
    import signal

    import jfb_inverse.evaluation

    def terminated(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the evaluation")

    monkeypatch.setattr(jfb_inverse.evaluation, "evaluate", terminated)
    (tmp_path / "tiny.toml").write_text(TINY)
    run = tmp_path / "run"
    result = invoke("train", "--problem", "deblur", "--config", str(tmp_path / "tiny.toml"), "--steps", "2",
                    "--out", str(run), "--device", "cpu")  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "interrupted during the held-out evaluation" in text and f"jfb-inverse evaluate --checkpoint {run}" in text
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 2 and (run / "training.png").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again


def test_a_command_whose_output_reader_goes_away_finishes_its_work(tmp_path):
    import subprocess
    import sys

    # `jfb-inverse train ... | head -1`: rich used to exit with code 1 at the next print, so a
    # finished run lost its figure and held-out report. The output is dropped; the work goes on.
    script = (
        "import sys\n"
        "from jfb_inverse.cli.common import console\n"
        "for _ in range(200):\n"
        "    console.print('x' * 1000)\n"  # far more than a pipe holds
        "open(sys.argv[1], 'w').write('done')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "done.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader goes away before the first line
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b"" and (tmp_path / "done.txt").read_text() == "done"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--problem", "nosuch"],
        ["train", "--problem", "deblur", "--config", "missing.toml"],
        ["reconstruct", "--checkpoint", "builtin:deblur", "--input", "missing.png", "--output", "y.png"],
        ["simulate", "--problem", "deblur", "--input", "missing.png", "--output", "y.npy"],
        ["evaluate", "--checkpoint", "builtin:deblur", "--json", "missing-folder/report.json"],
    ],
    ids=["train-problem", "train-config", "reconstruct", "simulate", "evaluate"],
)
def test_a_mistyped_command_is_refused_before_deepinv_is_imported(tmp_path, args):
    # deepinv takes about 3 s to import: a typo used to wait 4-5 s for its one-line error.
    code = f"import sys; from jfb_inverse.cli.app import run_app; print(run_app({args!r}), 'deepinv' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.split()[-2:] == ["2", "False"], (result.stdout, result.stderr[-2000:])
    assert "error:" in result.stdout + result.stderr
