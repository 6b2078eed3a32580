"""Issue 6, reliability and security, end to end through the CLI.

* Bad input: exit code 2, a single ``error: ...`` line that names the problem, no traceback, and
  nothing written (every test compares the files under ``tmp_path`` before and after).
* ``--debug`` / ``JFB_INVERSE_DEBUG=1`` show the traceback instead.
* Untrusted files: a pickle that would run code is refused before it runs; a checkpoint's custom
  operator is never imported without ``--trust-operator``.
* Written paths stay inside the output folder.
* Interrupted training (SIGKILL, SIGTERM of a real process) loses nothing: ``--resume`` ends with
  bitwise the same weights as an uninterrupted run (CPU, one thread, same machine).
* A folder of measurements is reconstructed one file at a time; a bad file is reported and skipped.

Documented behaviour checked here: an RGB PNG given to a grey model is converted to luminance (as
everywhere in jfb-inverse); a 2-channel ``.npy`` is refused (no silent guess). A measurement made
by ``simulate`` carries ``<name>.json`` (its operator), so a checkpoint of another operator kind is
refused; a measurement from elsewhere (no such file) is checked by shape only.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from jfb_inverse.cli.app import app
from jfb_inverse.datasets import load_builtin, save_image
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
DEBLUR_PT = REPO / "jfb_inverse" / "builtin" / "deblur.pt"
runner = CliRunner()
FAST = ["--device", "cpu", "--max-iter", "3"]  # reconstructions in tests only need to run, not converge
TINY_TOML = (
    "[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
    "[training]\nbatch_size = 2\nlog_every = 5\ncheckpoint_every = 5\n"
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _debug_off(monkeypatch):
    # --debug sets JFB_INVERSE_DEBUG in os.environ; monkeypatch restores it after each test.
    monkeypatch.setenv("JFB_INVERSE_DEBUG", "0")


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time (ns): "nothing written" compares two."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def assert_clean_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one non-empty line ``error: ...`` holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def expect_refusal(root: Path, args, *fragments: str) -> str:
    before = snapshot(root)
    line = assert_clean_error(cli(*args), *fragments)
    assert snapshot(root) == before, "a refused command wrote or touched files"
    return line


def rand_image(path: Path, shape=(1, 32, 32), seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).random(shape).astype(np.float32))
    return path


def reconstruct_args(tmp_path: Path, input_path: Path, checkpoint: str = "builtin:deblur", output: str = "out.png"):
    return ["reconstruct", "--checkpoint", checkpoint, "--input", input_path, "--output", tmp_path / output, *FAST]


# --- bad measurement files -----------------------------------------------------------------------


def _not_an_image(p: Path) -> Path:
    p.write_text("this is text, not a PNG\n")
    return p


def _not_npy(p: Path) -> Path:
    p.write_text("1 2 3\n")
    return p


def _empty_npy(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _two_channels(p: Path) -> Path:
    return rand_image(p, (2, 32, 32))


def _too_small(p: Path) -> Path:
    return rand_image(p, (1, 8, 8))


def _small_png(p: Path) -> Path:
    save_image(torch.rand(1, 8, 8), p)
    return p


def _nan(p: Path) -> Path:
    a = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    a[0, 3, 4] = np.nan
    np.save(p, a)
    return p


def _inf(p: Path) -> Path:
    a = np.zeros((1, 32, 32), np.float32)
    a[0, 0, 0] = -np.inf
    np.save(p, a)
    return p


def _complex(p: Path) -> Path:
    np.save(p, np.ones((1, 32, 32), np.complex64))
    return p


def _four_dims(p: Path) -> Path:
    return rand_image(p, (1, 1, 32, 32))


@pytest.mark.parametrize(
    ("name", "make", "fragments"),
    [
        ("missing.npy", None, ["'", "missing.npy", "not found"]),
        ("text.png", _not_an_image, ["text.png", "not a readable image"]),
        ("text.npy", _not_npy, ["text.npy", "not a valid .npy array", "no .npy header"]),
        ("empty.npy", _empty_npy, ["empty.npy", "not a valid .npy array"]),
        ("two.npy", _two_channels, ["two.npy", "2-channel", "grey (1-channel)"]),
        ("small.npy", _too_small, ["small.npy", "8x8", "15x15 blur kernel"]),
        ("small.png", _small_png, ["small.png", "8x8", "15x15 blur kernel"]),
        ("nan.npy", _nan, ["nan.npy", "NaN or Inf"]),
        ("inf.npy", _inf, ["inf.npy", "NaN or Inf"]),
        ("complex.npy", _complex, ["complex.npy", "complex64"]),
        ("four.npy", _four_dims, ["four.npy", "(1, 1, 32, 32)"]),
    ],
)
def test_bad_measurement_files(tmp_path, name, make, fragments):
    path = tmp_path / name
    if make is not None:
        make(path)
    expect_refusal(tmp_path, reconstruct_args(tmp_path, path), *fragments)


def test_unreadable_input_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not apply")
    path = rand_image(tmp_path / "y.npy")
    path.chmod(0)
    try:
        expect_refusal(tmp_path, reconstruct_args(tmp_path, path), "y.npy")
    finally:
        path.chmod(0o600)


def test_pickled_npy_is_never_unpickled(tmp_path):
    marker = tmp_path / "PWNED"
    arr = np.array([_Evil(marker)], dtype=object)
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    line = expect_refusal(tmp_path, reconstruct_args(tmp_path, tmp_path / "evil.npy"), "evil.npy", "never loaded")
    assert "allow_pickle" not in line  # numpy's "load it unsafely if you trust it" advice is not passed on
    assert not marker.exists()


def test_rgb_png_is_converted_to_grey_for_a_grey_model(tmp_path):
    # Documented behaviour: colour images are read as luminance when the model is grey.
    save_image(load_builtin("astronaut", channels=3, size=32), tmp_path / "rgb.png")
    result = cli(*reconstruct_args(tmp_path, tmp_path / "rgb.png", output="x.npy"))
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 32, 32)


def test_markup_in_file_names_is_shown_verbatim(tmp_path):
    # Rich markup in a name ("[/b]" closes no tag) used to crash the error printer itself.
    folder = tmp_path / "a[red]"
    folder.mkdir()
    expect_refusal(tmp_path, reconstruct_args(tmp_path, folder / "y[/b].npy"), "a[red]/y[/b].npy", "not found")


# --- measurements that do not fit the checkpoint -------------------------------------------------


def test_image_shaped_array_for_a_ct_checkpoint(tmp_path):
    path = rand_image(tmp_path / "image.npy", (1, 40, 40))
    expect_refusal(
        tmp_path,
        reconstruct_args(tmp_path, path, checkpoint="builtin:ct"),
        "image.npy",
        "does not fit the 'ct' operator",
    )


def test_sinogram_for_a_deblurring_checkpoint_is_refused(tmp_path):
    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    result = cli("simulate", "--checkpoint", "builtin:ct", "--input", tmp_path / "clean.png",
                 "--output", tmp_path / "sino.npy")  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "sino.npy.json").read_text())
    assert meta["problem"] == "ct" and meta["operator"]["kind"] == "ct" and meta["image_shape"] == [1, 32, 32]
    # The sinogram (1, 46, 30) would fit a blur of a 46 x 30 image: only the provenance file tells.
    expect_refusal(
        tmp_path,
        reconstruct_args(tmp_path, tmp_path / "sino.npy"),
        "sino.npy was simulated with the 'ct' operator",
        "checkpoint 'builtin:deblur'",
        "sino.npy.json",
    )


def test_same_operator_kind_other_parameters_warns(tmp_path):
    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    (tmp_path / "box.toml").write_text('problem = "deblur"\n[operator]\nkernel = "box"\nsize = 3\n')
    result = cli("simulate", "--config", tmp_path / "box.toml", "--input", tmp_path / "clean.png",
                 "--output", tmp_path / "y.npy")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli(*reconstruct_args(tmp_path, tmp_path / "y.npy", output="x.npy"))
    assert result.exit_code == 0, result.output
    assert "other operator parameters" in result.output and "kernel 'box' vs 'gaussian'" in result.output
    assert "size" not in result.output.split("kernel 'box' vs 'gaussian'")[1]  # the box's size says nothing more
    assert (tmp_path / "x.npy").is_file()


def test_a_measurement_at_another_super_resolution_factor_is_refused(tmp_path):
    """An x2 model reconstructed an x4 measurement of a 64-px image as a 32-px image, with a warning."""
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems import resolve_config
    from jfb_inverse.training.checkpoint import save_checkpoint

    ckpt = tmp_path / "x2.pt"
    cfg = resolve_config("superres", overrides={"model": {"width": 8}})
    save_checkpoint(ckpt, cfg, build_model(cfg)[0].state_dict(), step=0)
    (tmp_path / "x4.toml").write_text('problem = "superres"\n[operator]\nfactor = 4\n')
    clean = rand_image(tmp_path / "clean.npy", shape=(1, 64, 64))
    for name, how in (("y4.npy", ("--config", tmp_path / "x4.toml")), ("y2.npy", ("--checkpoint", ckpt))):
        assert cli("simulate", *how, "--input", clean, "--output", tmp_path / name).exit_code == 0
    args = reconstruct_args(tmp_path, tmp_path / "y4.npy", checkpoint=str(ckpt), output="x.npy")
    expect_refusal(tmp_path, args, "y4.npy was simulated at x4 super-resolution", "reconstructs at x2",
                   "operator.factor = 4")  # fmt: skip
    result = cli(*reconstruct_args(tmp_path, tmp_path / "y2.npy", checkpoint=str(ckpt), output="x.npy"))
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 64, 64)


def test_same_operator_other_noise_warns(tmp_path):
    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    result = cli("simulate", "--problem", "deblur", "--noise-sigma", "0.05", "--input", tmp_path / "clean.png",
                 "--output", tmp_path / "y.npy")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli(*reconstruct_args(tmp_path, tmp_path / "y.npy", output="x.npy"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "other noise than the checkpoint was trained for (sigma 0.05 vs 0.01)" in text
    assert (tmp_path / "x.npy").is_file()
    # The same noise: no warning.
    cli("simulate", "--problem", "deblur", "--input", tmp_path / "clean.png", "--output", tmp_path / "y2.npy")
    result = cli(*reconstruct_args(tmp_path, tmp_path / "y2.npy", output="x2.npy"))
    assert result.exit_code == 0 and "other noise" not in result.output


# --- checkpoints -------------------------------------------------------------------------------


def _random_bytes(p: Path) -> None:
    data = random.Random(0).randbytes(4096)
    p.write_bytes(b"\x00" + data)  # neither a zip archive ("PK") nor a pickle (0x80)


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _truncated(p: Path) -> None:
    data = DEBLUR_PT.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _not_ours(p: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, p)


def _bad_definition(p: Path) -> None:
    torch.save({"format": "jfb-inverse-checkpoint/1", "config": '{"problem": "deblur"}', "state_dict": {}}, p)


def _wrong_weights(p: Path) -> None:
    payload = torch.load(DEBLUR_PT, weights_only=True)
    payload["state_dict"] = {"nonsense": torch.zeros(2)}
    torch.save(payload, p)


@pytest.mark.parametrize(
    ("make", "fragments", "resume_fragment"),
    [
        (_random_bytes, ["is not a checkpoint", "corrupted, truncated or another kind of file"], None),
        (_empty, ["is empty"], None),
        (_truncated, ["is corrupted or truncated"], None),
        (_not_ours, ["is not a jfb-inverse checkpoint"], None),
        (_bad_definition, ["invalid problem definition", "operator: Field required"], None),
        (_wrong_weights, ["does not match its own definition"], "cannot be resumed"),
    ],
)
def test_damaged_checkpoints(tmp_path, make, fragments, resume_fragment):
    make(tmp_path / "model.pt")
    y = rand_image(tmp_path / "y.npy")
    expect_refusal(tmp_path, reconstruct_args(tmp_path, y, checkpoint=str(tmp_path / "model.pt")), *fragments)
    resume = ["train", "--resume", "--out", tmp_path, "--device", "cpu"]
    expect_refusal(tmp_path, resume, *([resume_fragment] if resume_fragment else fragments))


def test_checkpoint_without_training_state_cannot_be_resumed(tmp_path):
    (tmp_path / "model.pt").write_bytes(DEBLUR_PT.read_bytes())  # shipped models hold weights only
    expect_refusal(tmp_path, ["train", "--resume", "--out", tmp_path, "--device", "cpu"], "cannot be resumed")


# --- config files, problems, devices -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("[training]\nstepz = 3\n", ["training.stepz: Extra inputs are not permitted"]),
        ("[trainingg]\nsteps = 3\n", ["trainingg: Extra inputs are not permitted"]),
        ("[training]\nsteps = 'many'\n", ["training.steps: Input should be a valid integer"]),
        ("[training]\nsteps = 2.5\n", ["training.steps"]),
        ("[training]\nsteps = -5\n", ["training.steps: Input should be greater than 0"]),
        ("[noise]\nsigma = -0.1\n", ["noise.sigma: Input should be greater than or equal to 0"]),
        ("[noise]\nsigma = inf\n", ["noise.sigma", "finite number", "inf"]),
        ("[training]\nlr = nan\n", ["training.lr"]),
        ("[training\nsteps = 1\n", ["not valid TOML"]),
        ("training = 5\n", ["training must be a table of settings", "got int 5"]),
        ("operator = 5\n", ["operator must be a table of settings"]),
        ('problem = "ct"\n', ["config is for problem 'ct', but the command asks for 'deblur'"]),
        ('"training" = {"a\\nb" = 1}\n', ["training.a\\nb: Extra inputs are not permitted"]),
    ],
)
def test_bad_config_files(tmp_path, text, fragments):
    (tmp_path / "run.toml").write_text(text)
    # No --steps here: options override the file, and `steps = 'many'` must be seen.
    args = ["train", "--problem", "deblur", "--config", tmp_path / "run.toml", "--out", tmp_path / "run",
            "--device", "cpu"]  # fmt: skip
    expect_refusal(tmp_path, args, *fragments)
    assert not (tmp_path / "run").exists()


def test_binary_and_missing_config_files(tmp_path):
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00garbage")
    base = ["train", "--problem", "deblur", "--out", tmp_path / "run", "--device", "cpu"]
    expect_refusal(tmp_path, [*base, "--config", tmp_path / "bin.toml"], "bin.toml", "not valid TOML")
    expect_refusal(tmp_path, [*base, "--config", tmp_path / "nope.toml"], "nope.toml", "not found")
    (tmp_path / "list.json").write_text("[1, 2]")
    expect_refusal(tmp_path, [*base, "--config", tmp_path / "list.json"], "must hold a table of sections")


def test_infinite_option_value_is_refused(tmp_path):
    args = ["train", "--problem", "deblur", "--lr", "inf", "--out", tmp_path / "run", "--device", "cpu"]
    expect_refusal(tmp_path, args, "training.lr", "finite number")


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_unknown_problem(tmp_path, command):
    args = ["train", "--problem", "deblurr", "--out", tmp_path / "run"]
    if command == "simulate":
        save_image(torch.rand(1, 32, 32), tmp_path / "clean.png")
        args = ["simulate", "--problem", "deblurr", "--input", tmp_path / "clean.png", "--output", tmp_path / "y.npy"]
    expect_refusal(tmp_path, args, "unknown problem 'deblurr'", "deblur")


def test_unknown_device_is_a_usage_error(tmp_path):
    result = cli("reconstruct", "--checkpoint", "builtin:deblur", "--input", tmp_path / "y.npy",
                 "--output", tmp_path / "x.png", "--device", "tpu")  # fmt: skip
    assert result.exit_code == 2 and "Invalid value for '--device'" in result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_cuda_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    y = rand_image(tmp_path / "y.npy")
    args = reconstruct_args(tmp_path, y)
    args[args.index("cpu")] = "cuda"
    expect_refusal(tmp_path, args, "no CUDA GPU")
    expect_refusal(tmp_path, ["train", "--problem", "deblur", "--device", "cuda", "--out", tmp_path / "run"],
                   "no CUDA GPU")  # fmt: skip


# --- output paths ------------------------------------------------------------------------------


def test_output_in_a_missing_folder(tmp_path):
    y = rand_image(tmp_path / "y.npy")
    save_image(torch.rand(1, 32, 32), tmp_path / "clean.png")
    expect_refusal(tmp_path, reconstruct_args(tmp_path, y, output="nope/x.png"), "'", "nope", "does not exist")
    expect_refusal(
        tmp_path,
        ["simulate", "--problem", "deblur", "--input", tmp_path / "clean.png", "--output", tmp_path / "nope/y.npy"],
        "nope",
        "does not exist",
    )
    expect_refusal(
        tmp_path,
        ["evaluate", "--checkpoint", "builtin:deblur", "--json", tmp_path / "nope/r.json", "--device", "cpu"],
        "nope",
        "does not exist",
    )


def test_output_under_a_file_or_onto_a_folder(tmp_path):
    y = rand_image(tmp_path / "y.npy")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    for output in ("afile/x.npy", "afile/x.png"):
        expect_refusal(tmp_path, reconstruct_args(tmp_path, y, output=output), "afile", "is a file, not a folder")
    expect_refusal(tmp_path, reconstruct_args(tmp_path, y, output="adir"), "is a folder; give a file name")
    expect_refusal(tmp_path, reconstruct_args(tmp_path, y, output="x.bmp"), "unsupported output type '.bmp'")
    # A folder to be (outdir/) for one input file: said as such, with a file name to give instead.
    expect_refusal(
        tmp_path, reconstruct_args(tmp_path, y, output="outdir/"), "has no file type and --input is one file", "y.png"
    )
    train = ["train", "--problem", "deblur", "--device", "cpu", "--steps", "1", "--out"]
    expect_refusal(tmp_path, [*train, tmp_path / "afile"], "is a file; give a folder")
    expect_refusal(tmp_path, [*train, tmp_path / "afile" / "run"], "a file, not a folder; give a folder")
    expect_refusal(tmp_path, reconstruct_args(tmp_path, tmp_path, output="afile"), "must be a folder")


def test_output_folder_without_write_permission(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: permission checks do not apply to root")
    y = rand_image(tmp_path / "y.npy")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expect_refusal(tmp_path, reconstruct_args(tmp_path, y, output="locked/x.png"), "permission denied")
        expect_refusal(tmp_path, ["train", "--problem", "deblur", "--device", "cpu", "--out", locked / "run"],
                       "permission denied")  # fmt: skip
    finally:
        locked.chmod(0o700)


def test_format_is_a_choice_so_outputs_stay_inside_the_folder(tmp_path):
    (tmp_path / "in").mkdir()
    rand_image(tmp_path / "in" / "a.npy")
    result = cli("reconstruct", "--checkpoint", "builtin:deblur", "--input", tmp_path / "in",
                 "--output", tmp_path / "out", "--format", "../../x", *FAST)  # fmt: skip
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.output
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == ["in"]


def test_links_in_the_output_folder_are_not_followed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    rand_image(src / "a.npy")
    rand_image(src / "b.npy", seed=1)
    outside = tmp_path / "outside.npy"
    outside.write_text("precious")
    (out / "a.npy").symlink_to(outside)
    result = cli("reconstruct", "--checkpoint", "builtin:deblur", "--input", src, "--output", out,
                 "--format", "npy", *FAST)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "skipped a.npy" in result.output and "outside" in result.output
    assert outside.read_text() == "precious"
    assert np.load(out / "b.npy").shape == (1, 32, 32)


# --- custom operators ----------------------------------------------------------------------------

OPS = """
import pathlib

pathlib.Path(__file__).with_name("IMPORTED").write_text("imported")

from deepinv.physics import LinearPhysics


class Ident(LinearPhysics):
    def A(self, x, **kwargs):
        return x

    def A_adjoint(self, y, **kwargs):
        return y


class WrongAdjoint(Ident):
    def A_adjoint(self, y, **kwargs):
        return 0.5 * y


class Exploding:
    def __init__(self):
        raise ValueError("cannot build")
"""


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("no_such_package_xyz.ops:Op", ["operator module 'no_such_package_xyz.ops' not found"]),
        ("{ops}:Exploding", ["could not be constructed", "ValueError: cannot build"]),
        ("{ops}:WrongAdjoint", ["fails the adjointness test"]),
    ],
)
def test_bad_custom_operator_writes_nothing(tmp_path, target, fragments):
    (tmp_path / "ops.py").write_text(OPS)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    args = ["train", "--operator", target.format(ops=tmp_path / "ops.py"), "--config", tmp_path / "tiny.toml",
            "--steps", "1", "--out", tmp_path / "run", "--device", "cpu"]  # fmt: skip
    before = snapshot(tmp_path)
    assert_clean_error(cli(*args), *fragments)
    after = snapshot(tmp_path)
    after.pop("IMPORTED", None)  # the user named the operator: importing it is expected
    assert after == before


@pytest.fixture
def custom_checkpoint(tmp_path):
    """The shipped deblurring weights under a definition whose operator is a module in tmp_path."""
    from jfb_inverse.problems.config import ProblemConfig
    from jfb_inverse.training.checkpoint import save_checkpoint

    (tmp_path / "ops.py").write_text(OPS)
    payload = torch.load(DEBLUR_PT, weights_only=True)
    values = json.loads(payload["config"])
    values["problem"] = "custom"
    values["operator"] = {"kind": "custom", "target": f"{tmp_path / 'ops.py'}:Ident"}
    save_checkpoint(tmp_path / "run" / "model.pt", ProblemConfig.model_validate(values), payload["state_dict"])
    return tmp_path / "run" / "model.pt"


def test_checkpoint_never_imports_its_operator_without_trust(tmp_path, custom_checkpoint):
    y = rand_image(tmp_path / "y.npy")
    save_image(torch.rand(1, 32, 32), tmp_path / "clean.png")
    args = reconstruct_args(tmp_path, y, checkpoint=str(custom_checkpoint), output="x.npy")
    expect_refusal(tmp_path, args, "custom operator", "ops.py:Ident", "--trust-operator")
    simulate = ["simulate", "--checkpoint", custom_checkpoint, "--input", tmp_path / "clean.png",
                "--output", tmp_path / "y2.npy"]  # fmt: skip
    expect_refusal(tmp_path, simulate, "--trust-operator")
    expect_refusal(tmp_path, ["evaluate", "--checkpoint", custom_checkpoint, "--device", "cpu"], "--trust-operator")
    assert not (tmp_path / "IMPORTED").exists()
    result = cli(*args, "--trust-operator")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "IMPORTED").exists() and np.load(tmp_path / "x.npy").shape == (1, 32, 32)


# --- malicious pickles ---------------------------------------------------------------------------


class _Evil:
    """Unpickling this calls ``exec``: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _EvilSystem(_Evil):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle", "system"])
def test_malicious_checkpoint_is_refused_before_it_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "run" / "model.pt"
    path.parent.mkdir()
    evil = _EvilSystem(marker) if how == "system" else _Evil(marker)
    payload = {"format": "jfb-inverse-checkpoint/1", "config": "{}", "state_dict": {"w": evil}}
    if how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif how == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, path)
    y = rand_image(tmp_path / "y.npy")
    line = expect_refusal(tmp_path, reconstruct_args(tmp_path, y, checkpoint=str(path)), "was refused and not loaded")
    assert "could run code" in line
    expect_refusal(tmp_path, ["train", "--resume", "--out", path.parent, "--device", "cpu"], "was refused")
    save_image(torch.rand(1, 32, 32), tmp_path / "clean.png")
    expect_refusal(tmp_path, ["simulate", "--checkpoint", path, "--input", tmp_path / "clean.png",
                              "--output", tmp_path / "y2.npy"], "was refused")  # fmt: skip
    assert not marker.exists()


# --- --debug -----------------------------------------------------------------------------------


def test_debug_env_var_and_flag_let_the_error_propagate(tmp_path, monkeypatch):
    from jfb_inverse.errors import CheckpointError

    args = reconstruct_args(tmp_path, rand_image(tmp_path / "y.npy"), checkpoint=str(tmp_path / "none.pt"))
    monkeypatch.setenv("JFB_INVERSE_DEBUG", "1")
    result = cli(*args)
    assert isinstance(result.exception, CheckpointError) and result.exit_code == 1
    monkeypatch.setenv("JFB_INVERSE_DEBUG", "0")
    result = cli("--debug", *args)
    assert isinstance(result.exception, CheckpointError) and result.exit_code == 1


def test_debug_flag_prints_the_traceback(tmp_path):
    # Without --debug the same command is a one-line error: every other test here checks that.
    rand_image(tmp_path / "y.npy")
    env = {**os.environ, "JFB_INVERSE_DEBUG": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jfb_inverse.cli", "--debug", "reconstruct", "--checkpoint",
           str(tmp_path / "none.pt"), "--input", "y.npy", "--output", "x.png"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "CheckpointError" in proc.stderr


# --- folders of measurements ---------------------------------------------------------------------


def _folder_run(tmp_path: Path, n: int, size: int = 24) -> tuple[Path, Path]:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(src / f"m{i:04d}.npy", rng.random((1, size, size)).astype(np.float32))
    (src / "m0007.npy").write_text("not an array")  # one bad file among them
    return src, out


def test_folder_streams_one_file_at_a_time_and_skips_a_bad_one(tmp_path, monkeypatch):
    import jfb_inverse.measurements as measurements

    src, out = _folder_run(tmp_path, 50)
    events: list[str] = []
    real_read, real_write = measurements.read_measurement, measurements.write_array

    def read(path, channels, **kwargs):
        events.append("read")
        return real_read(path, channels, **kwargs)

    def write(x, path):
        events.append("write")
        real_write(x, path)

    monkeypatch.setattr(measurements, "read_measurement", read)
    monkeypatch.setattr(measurements, "write_array", write)
    result = cli("reconstruct", "--checkpoint", "builtin:deblur", "--input", src, "--output", out,
                 "--format", "npy", "--device", "cpu", "--max-iter", "2")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "skipped m0007.npy" in result.output and "not a valid .npy array" in result.output
    assert "49 of 50 reconstructed" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 49 and "m0007.npy" not in names and names[0] == "m0000.npy"
    # Streaming: each file is read and written before the next is read (the bad one is only read).
    assert "".join("r" if e == "read" else "w" for e in events) == "rw" * 7 + "r" + "rw" * 42


@pytest.mark.slow
def test_thousand_files_bounded_memory(tmp_path):
    """Peak RSS of a 1,000-file run exceeds a 100-file run's by little: nothing accumulates per file."""
    peaks = {}
    for n in (100, 1000):
        src, out = _folder_run(tmp_path / str(n), n, size=48)
        code = (
            "import resource, sys\nfrom jfb_inverse.cli.app import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)\n"
        )
        args = ["reconstruct", "--checkpoint", "builtin:deblur", "--input", str(src), "--output", str(out),
                "--format", "npy", "--device", "cpu", "--max-iter", "5"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "JFB_INVERSE_DEBUG": "0"}
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                              timeout=900)  # fmt: skip
        match = re.search(r"MAXRSS (\d+) 1", proc.stdout)
        assert match, proc.stdout[-2000:] + proc.stderr[-2000:]
        peaks[n] = int(match.group(1)) / 1024  # MiB
        assert len(list(out.iterdir())) == n - 1 and "skipped m0007.npy" in proc.stderr
    assert peaks[1000] - peaks[100] < 40, peaks


# --- interrupted training (real processes) ------------------------------------------------------


def _train_cmd(out: Path, config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jfb_inverse.cli", "train", "--problem", "deblur", "--config", str(config),
            "--out", str(out), "--device", "cpu", *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "JFB_INVERSE_DEBUG": "0",
            "COLUMNS": "200"}  # fmt: skip


def _checkpoint_step(path: Path) -> int | None:
    """The step of ``path``, or None while it does not exist (writes are atomic: never half a file)."""
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except FileNotFoundError:
        return None


def _wait_for_step(proc: subprocess.Popen, path: Path, step: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reached = _checkpoint_step(path)
        if reached is not None and reached >= step:
            return reached
        assert proc.poll() is None, f"training ended before step {step}: {proc.communicate()}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _write_config(folder: Path, steps: int) -> Path:
    config = folder / "tiny.toml"
    config.write_text(TINY_TOML.replace("log_every = 5\n", f"log_every = 5\nsteps = {steps}\n"))
    return config


def _kill_at_random_point(proc: subprocess.Popen, run: Path, steps: int) -> int:
    """SIGKILL ``proc`` a random while after a random checkpoint; return the step on disk then."""
    _wait_for_step(proc, run / "model.pt", random.Random().randint(10, min(30, steps // 2)))
    return _kill_now(proc, run, steps)


def _kill_now(proc: subprocess.Popen, run: Path, steps: int) -> int:
    time.sleep(random.uniform(0, 0.2))  # somewhere inside a step, or inside a checkpoint write
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_step(run / "model.pt")  # intact after SIGKILL: written to a temp file, then renamed
    assert killed_at is not None and killed_at % 5 == 0 and 10 <= killed_at < steps, killed_at
    return killed_at


KILL_STEPS = 120


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    """Two real training processes, started together (their imports dominate): one gets SIGTERM after
    its checkpoint at step 5, the other SIGKILL at a random point after step 10."""
    root = tmp_path_factory.mktemp("interrupted")
    term_run, kill_run = root / "term", root / "kill"
    term = subprocess.Popen(_train_cmd(term_run, _write_config(root, 100_000)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    (root / "k").mkdir()
    kill_config = _write_config(root / "k", KILL_STEPS)
    kill = subprocess.Popen(_train_cmd(kill_run, kill_config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env())  # fmt: skip
    kill_target = random.Random().randint(10, 30)
    term_sent = term_seconds = killed_at = None
    try:
        deadline = time.monotonic() + 240
        while (term_seconds is None or killed_at is None) and time.monotonic() < deadline:
            # Never block on one process here: the other keeps training meanwhile (on an idle machine
            # the tiny run finished all its steps while this loop waited for the SIGTERM'd one).
            if term_sent is None and (_checkpoint_step(term_run / "model.pt") or 0) >= 5:
                term.send_signal(signal.SIGTERM)
                term_sent = time.monotonic()
            elif term_sent is not None and term_seconds is None and term.poll() is not None:
                term_seconds = time.monotonic() - term_sent
            if killed_at is None and (_checkpoint_step(kill_run / "model.pt") or 0) >= kill_target:
                killed_at = _kill_now(kill, kill_run, KILL_STEPS)
            if term_sent is None:
                assert term.poll() is None, term.communicate()
            if killed_at is None:
                assert kill.poll() is None, kill.communicate()
            time.sleep(0.02)
        assert term_seconds is not None and killed_at is not None, "no checkpoints within 240 s"
        _, term_stderr = term.communicate(timeout=60)
    finally:
        for proc in (term, kill):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {
        "term_run": term_run, "term_rc": term.returncode, "term_stderr": term_stderr, "term_seconds": term_seconds,
        "kill_run": kill_run, "killed_at": killed_at,
    }  # fmt: skip


def test_sigterm_writes_a_checkpoint_and_says_resume(interrupted_runs):
    r = interrupted_runs
    stderr = r["term_stderr"]
    assert r["term_rc"] == 128 + 15, stderr  # as a shell reports a process SIGTERM ended
    assert r["term_seconds"] < 30  # prompt: at the end of the current step
    assert "Traceback" not in stderr
    match = re.search(r"interrupted by signal 15 after step (\d+); checkpoint written to .*; continue with --resume",
                      " ".join(stderr.split()))  # fmt: skip
    assert match, stderr
    reached = int(match.group(1))
    assert _checkpoint_step(r["term_run"] / "model.pt") == reached >= 5
    history = [json.loads(line) for line in (r["term_run"] / "history.jsonl").read_text().splitlines()]
    assert history and all(record["step"] <= reached for record in history)


def _resume_and_compare(run: Path, ref: Path, steps: int, killed_at: int, reference: subprocess.Popen | None) -> None:
    """``train --resume`` ends with bitwise the weights of the uninterrupted run.

    ``reference=None``: resume and reference run in this process (one thread, as the subprocesses;
    the CLI's imports are already paid here); else both are processes.
    """
    if reference is None:
        from jfb_inverse.training.checkpoint import load_checkpoint
        from jfb_inverse.training.loop import train

        result = cli("train", "--resume", "--out", run, "--device", "cpu")
        assert result.exit_code == 0, result.output
        train(load_checkpoint(run / "model.pt")[1], ref)  # the same resolved definition, uninterrupted
    else:
        resume = [sys.executable, "-m", "jfb_inverse.cli", "train", "--resume", "--out", str(run), "--device", "cpu"]
        resumed = subprocess.run(resume, capture_output=True, text=True, env=_env(), timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _, err = reference.communicate(timeout=600)
        assert reference.returncode == 0, err[-3000:]
    final, expected = _weights(run / "model.pt"), _weights(ref / "model.pt")
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected), f"resumed from step {killed_at}"
    assert _checkpoint_step(run / "model.pt") == steps
    steps_logged = [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(5, steps + 1, 5))


def test_sigkill_then_resume_gives_bitwise_the_same_weights(interrupted_runs, tmp_path):
    r = interrupted_runs
    _resume_and_compare(r["kill_run"], tmp_path / "ref", KILL_STEPS, r["killed_at"], reference=None)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_process(tmp_path):
    """The issue's test as stated: two processes, one killed at a random point and resumed."""
    steps = 400
    config = _write_config(tmp_path, steps)
    run, ref = tmp_path / "run", tmp_path / "ref"
    proc = subprocess.Popen(_train_cmd(run, config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env())  # fmt: skip
    reference = subprocess.Popen(_train_cmd(ref, config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True, env=_env())  # fmt: skip
    try:
        killed_at = _kill_at_random_point(proc, run, steps)
        _resume_and_compare(run, ref, steps, killed_at, reference)
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.communicate()


def test_a_measurement_in_0_255_is_refused_not_reconstructed_white(tmp_path):
    """Pixel values 0-255 saved as floats: far beyond anything the operator makes from an image in
    [0, 1], so refused in one line (no range check would otherwise catch a float measurement)."""
    clean = rand_image(tmp_path / "clean.npy", shape=(1, 40, 40))
    y = tmp_path / "y.npy"
    assert cli("simulate", "--problem", "deblur", "--input", clean, "--output", y).exit_code == 0
    np.save(tmp_path / "y255.npy", np.load(y) * 255)
    y255 = reconstruct_args(tmp_path, tmp_path / "y255.npy")
    expect_refusal(tmp_path, y255, "larger than the 'deblur' operator", "255")
    # A stale record beside it (another image shape) does not turn that into a shape refusal.
    record = json.loads((tmp_path / "y.npy.json").read_text())
    (tmp_path / "y255.npy.json").write_text(json.dumps({**record, "image_shape": [1, 20, 20]}))
    expect_refusal(tmp_path, y255, "larger than the 'deblur' operator", "255")
    # The measurement itself, and a darker or brighter one, pass (an image of ones is the limit's scale).
    for scale in (1.0, 0.1, 2.0):
        np.save(tmp_path / "ys.npy", np.load(y) * scale)
        assert cli(*reconstruct_args(tmp_path, tmp_path / "ys.npy")).exit_code == 0
    # CT (noise relative to the sinogram's maximum): its own measurement passes, x255 does not.
    ct_clean = rand_image(tmp_path / "ct_clean.npy", shape=(1, 32, 32))
    sino = tmp_path / "s.npy"
    assert cli("simulate", "--problem", "ct", "--input", ct_clean, "--output", sino).exit_code == 0
    assert cli(*reconstruct_args(tmp_path, sino, checkpoint="builtin:ct", output="ct.npy")).exit_code == 0
    np.save(tmp_path / "s255.npy", np.load(sino) * 255)
    expect_refusal(tmp_path, reconstruct_args(tmp_path, tmp_path / "s255.npy", checkpoint="builtin:ct"), "larger than")


def test_a_transposed_sinogram_is_refused_with_the_layout(tmp_path):
    clean = rand_image(tmp_path / "clean.npy", shape=(1, 32, 32))
    sino = tmp_path / "s.npy"
    assert cli("simulate", "--problem", "ct", "--input", clean, "--output", sino).exit_code == 0
    np.save(tmp_path / "t.npy", np.load(sino).transpose(0, 2, 1))  # (C, angles, detectors)
    args = reconstruct_args(tmp_path, tmp_path / "t.npy", checkpoint="builtin:ct", output="t.png")
    expect_refusal(tmp_path, args, "a sinogram is (C, detectors, angles)")


@pytest.mark.parametrize(("problem", "hint"), [("mri", "as simulate makes them"), ("superres", "divide 0-255 pixel")])
def test_a_measurement_too_large_gets_the_hint_of_its_kind(problem, hint):
    """k-space is not pixels; a low-resolution image is, though its shape is not the image's."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import check_fits
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import resolve_config, simulate

    cfg = resolve_config(problem)
    cache = PhysicsCache(cfg, torch.device("cpu"))
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = simulate(x, cache.for_image((1, 32, 32)), cfg.noise, torch.Generator().manual_seed(0))[0]
    assert check_fits(y, cfg, cache, "y.npy") is not None  # as simulated: fits
    with pytest.raises(UserError, match=hint):
        check_fits(y * 255, cfg, cache, "y.npy")


def test_a_bare_measurement_refusal_names_what_reconstruct_can_change():
    """reconstruct cannot set operator fields (the checkpoint fixes them): its refusal says what it can do."""
    from jfb_inverse.errors import UserError
    from jfb_inverse.measurements import check_fits
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import resolve_config

    cfg = resolve_config("ct", overrides={"operator": {"detectors": 48}})
    cache = PhysicsCache(cfg, torch.device("cpu"))
    y = cache.for_image((1, 32, 32)).A(torch.rand(1, 1, 32, 32))[0]
    assert check_fits(y, cfg, cache, "s.npy", image_shape=(1, 32, 32)) is not None  # with simulate's record
    with pytest.raises(UserError, match="the checkpoint fixes its operator, so give a measurement") as info:
        check_fits(y, cfg, cache, "s.npy")
    assert "set operator.img_width" not in str(info.value)


def test_a_ct_sinogram_is_reconstructed_at_the_image_size_simulate_recorded(tmp_path):
    """With operator.detectors and img_width set, a sinogram of a 64-px image also fits the 32 px that
    img_width names: reconstruct used to return a 32x32 image without a word."""
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems import resolve_config
    from jfb_inverse.training.checkpoint import save_checkpoint

    ckpt = tmp_path / "ct.pt"
    cfg = resolve_config("ct", overrides={"operator": {"detectors": 48, "img_width": 32}, "model": {"width": 8}})
    save_checkpoint(ckpt, cfg, build_model(cfg)[0].state_dict(), step=0)
    clean = rand_image(tmp_path / "clean.npy", shape=(1, 64, 64))
    sino = tmp_path / "s.npy"
    assert cli("simulate", "--checkpoint", ckpt, "--input", clean, "--output", sino).exit_code == 0
    assert np.load(sino).shape == (1, 48, 30)
    out = tmp_path / "x.npy"
    result = cli("reconstruct", "--checkpoint", ckpt, "--input", sino, "--output", out, "--max-iter", "2")
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (1, 64, 64)
    (tmp_path / "s.npy.json").unlink()  # without the record, img_width decides
    out.unlink()
    result = cli("reconstruct", "--checkpoint", ckpt, "--input", sino, "--output", out, "--max-iter", "2")
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (1, 32, 32)


def test_a_jpeg_measurement_is_reconstructed_alone_and_in_a_folder(tmp_path):
    """A user's own blurred photo is often a JPEG: read like a PNG (the README and --help say so)."""
    from PIL import Image

    clean = rand_image(tmp_path / "clean.npy")
    assert cli("simulate", "--problem", "deblur", "--input", clean, "--output", tmp_path / "y.png").exit_code == 0
    folder = tmp_path / "measurements"
    folder.mkdir()
    Image.open(tmp_path / "y.png").save(folder / "y.jpg", quality=95)
    result = cli(*reconstruct_args(tmp_path, folder / "y.jpg", output="x.npy"))
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 32, 32)
    result = cli(
        "reconstruct", "--checkpoint", "builtin:deblur", "--input", folder, "--output", tmp_path / "out", *FAST
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["y.png"]


def _untrained_checkpoint(path: Path, problem: str, channels: int = 1) -> Path:
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems import resolve_config
    from jfb_inverse.training.checkpoint import save_checkpoint

    cfg = resolve_config(problem, overrides={"data": {"channels": channels}, "model": {"width": 8}})
    save_checkpoint(path, cfg, build_model(cfg)[0].state_dict(), step=0)
    return path


def test_complex_k_space_is_refused_with_the_line_that_gives_simulates_layout(tmp_path):
    """Colour k-space interleaves each channel's real and imaginary parts: the hint used to
    concatenate all real parts, then all imaginary ones, which reconstructed the wrong channels."""
    ckpt = _untrained_checkpoint(tmp_path / "mri.pt", "mri", channels=3)
    clean = rand_image(tmp_path / "clean.npy", shape=(3, 16, 16))
    assert cli("simulate", "--checkpoint", ckpt, "--input", clean, "--output", tmp_path / "y.npy").exit_code == 0
    y = np.load(tmp_path / "y.npy")
    complex_y = y[0::2] + 1j * y[1::2]
    np.save(tmp_path / "c.npy", complex_y)
    line = expect_refusal(tmp_path, reconstruct_args(tmp_path, tmp_path / "c.npy", str(ckpt), "x.npy"), "complex")
    hint = re.search(r"e\.g\. (numpy\..+?) for y of shape", line).group(1)
    rebuilt = eval(hint, {"numpy": np, "y": complex_y, "H": 16, "W": 16})  # the line exactly as the error gives it
    assert np.array_equal(rebuilt, y)


def test_a_measurement_with_energy_where_the_operator_measures_nothing_warns(tmp_path):
    """Another mask, or k-space that is not centred: A^T drops those entries without a word."""
    ckpt = _untrained_checkpoint(tmp_path / "mri.pt", "mri")
    clean = rand_image(tmp_path / "clean.npy", shape=(1, 16, 16))
    assert cli("simulate", "--checkpoint", ckpt, "--input", clean, "--output", tmp_path / "y.npy").exit_code == 0
    result = cli(*reconstruct_args(tmp_path, tmp_path / "y.npy", str(ckpt), "x.npy"))
    assert result.exit_code == 0 and "measures nothing" not in result.output, result.output
    np.save(tmp_path / "u.npy", np.fft.ifftshift(np.load(tmp_path / "y.npy"), axes=(-2, -1)))
    result = cli(*reconstruct_args(tmp_path, tmp_path / "u.npy", str(ckpt), "xu.npy"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert re.search(
        r"u\.npy: \d+% of the measurement's energy lies where the checkpoint's operator measures nothing", text
    )


def test_an_empty_measurement_is_refused_in_one_line(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((2, 0, 8), dtype=np.float32))  # torch's stride error leaked before
    expect_refusal(tmp_path, reconstruct_args(tmp_path, tmp_path / "e.npy"), "holds no values (shape (2, 0, 8))")


def test_a_signal_during_the_last_step_finishes_the_run_and_skips_only_the_evaluation(tmp_path, monkeypatch):
    """It used to say "continue with --resume", which then refused a run with no steps left, and the
    figure was never drawn (nothing else draws it)."""
    import jfb_inverse.training.loop as loop

    train = loop.train

    def signal_at_the_last_step(*args, on_step=None, **kwargs):
        def hook(step: int) -> None:
            if on_step is not None:
                on_step(step)
            if step + 1 == 3:
                os.kill(os.getpid(), signal.SIGINT)

        return train(*args, on_step=hook, **kwargs)

    monkeypatch.setattr(loop, "train", signal_at_the_last_step)
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    run = tmp_path / "run"
    result = cli("train", "--problem", "deblur", "--config", tmp_path / "tiny.toml", "--steps", "3", "--out", run,
                 "--device", "cpu")  # fmt: skip
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert "during the last step; the run is complete" in text and "jfb-inverse evaluate --checkpoint" in text
    payload = torch.load(run / "model.pt", weights_only=True)
    assert payload["step"] == 3 and payload["finished"] and payload["batch_pool"] is None
    assert (run / "training.png").is_file() and not (run / "evaluation.json").exists()
