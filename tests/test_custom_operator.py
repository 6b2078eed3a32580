"""Custom forward operators: loading, construction, the adjointness test, the CLI path, the example.

The operators below are the user's code: the tests name them as ``<this file>:ClassName``, which
imports this file as a separate module, exactly as ``--operator path/to/ops.py:ClassName`` does.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from deepinv.physics import LinearPhysics
from torch import Tensor
from typer.testing import CliRunner

THIS = Path(__file__).resolve()
EXAMPLE = THIS.parent.parent / "examples" / "custom_operator.py"


class ShiftBlur(LinearPhysics):
    """Average of ``n`` circular horizontal shifts; the measurement has the image's shape."""

    def __init__(self, n: int = 3, img_size: tuple[int, int, int] | None = None, device: Any = "cpu") -> None:
        super().__init__(img_size=img_size, device=device)
        self.n = n
        self.seen_img_size = img_size

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:
        return sum(torch.roll(x, s, dims=-1) for s in range(self.n)) / self.n

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:
        return sum(torch.roll(y, -s, dims=-1) for s in range(self.n)) / self.n


class RowSubsample:
    """Not a deepinv physics, only ``A`` and ``A_adjoint``: keeps every ``step``-th row (fewer rows)."""

    def __init__(self, step: int = 2) -> None:
        self.step = step

    def A(self, x: Tensor) -> Tensor:
        return x[..., :: self.step, :]

    def A_adjoint(self, y: Tensor) -> Tensor:
        b, c, h, w = y.shape
        x = y.new_zeros(b, c, h * self.step, w)
        x[..., :: self.step, :] = y
        return x


class WrongAdjoint(ShiftBlur):
    """A_adjoint shifts the wrong way and is scaled: fails the dot-product test."""

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:
        return 0.5 * super().A(y)


class Exploding:
    def __init__(self, gain: float = 1.0) -> None:
        raise ValueError(f"gain {gain} is not supported\nsecond line")


class OneImageOnly(ShiftBlur):
    """Passes the one-image dot-product test, but flattens a batch into one image (a beginner's bug)."""

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:
        return super().A(x).reshape(1, *x.shape[1:])


class ComplexFourier:
    """An exact pair (the orthonormal FFT; the real part of its inverse for real images), but with
    complex measurements, which the models do not take."""

    def A(self, x: Tensor) -> Tensor:
        return torch.fft.fft2(x, norm="ortho")

    def A_adjoint(self, y: Tensor) -> Tensor:
        return torch.fft.ifft2(y, norm="ortho").real


NOT_A_CLASS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


class FlatMatrix(LinearPhysics):
    """A fixed random matrix on the flattened pixels: (B, C, H, W) -> (B, C, m), a 2-D measurement."""

    def __init__(self, img_size: tuple[int, int, int] | None = None, device: Any = "cpu") -> None:
        super().__init__(img_size=img_size, device=device)
        self.hw = tuple(img_size[1:])
        n = self.hw[0] * self.hw[1]
        self.register_buffer("M", torch.randn(n // 2, n, generator=torch.Generator().manual_seed(0)) / n**0.5)

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:
        return x.reshape(*x.shape[:2], -1) @ self.M.T

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:
        return (y @ self.M).reshape(*y.shape[:2], *self.hw)


class DoublePool:
    """2x2 average pooling computed (and returned) in float64 whatever the input's dtype."""

    def A(self, x: Tensor) -> Tensor:
        return torch.nn.functional.avg_pool2d(x.double(), 2)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest") / 4


class HalvingPool:
    """2x2 average pooling, without image_shape: its measurements do not say their images' shape."""

    def A(self, x: Tensor) -> Tensor:
        return torch.nn.functional.avg_pool2d(x, 2)

    def A_adjoint(self, y: Tensor) -> Tensor:
        return torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest") / 4


def target(name: str) -> str:
    return f"{THIS}:{name}"


# --- loading and construction ------------------------------------------------------------------


def test_load_from_file_and_module():
    from jfb_inverse.problems.custom import load_operator_class

    cls = load_operator_class(target("ShiftBlur"))
    assert cls.__name__ == "ShiftBlur" and cls is not ShiftBlur  # a separate module, as for a user's file
    assert load_operator_class(target("ShiftBlur")) is cls  # imported once
    from deepinv.physics import Denoising

    assert load_operator_class("deepinv.physics:Denoising") is Denoising


@pytest.mark.parametrize(
    ("make_target", "message"),
    [
        (lambda d: f"{d}/missing_ops.py:Op", "operator file '.*missing_ops.py' not found"),
        (lambda d: "no_such_package_xyz.ops:Op", "operator module 'no_such_package_xyz.ops' not found"),
        (lambda d: f"{d}/broken.py:Op", r"failed to import \(RuntimeError: boom\)"),
        (lambda d: f"{d}/syntax.py:Op", r"failed to import \(SyntaxError"),
        (lambda d: f"{d}/good.py:Nope", "has no class 'Nope'; it defines Good, Other"),
        (lambda d: target("NOT_A_CLASS"), "is a int, not a class"),
        (lambda d: "path/to/ops.py:ClassName", "problem 'custom' needs your operator"),
    ],
)
def test_load_errors_are_one_line(tmp_path, make_target, message):
    from jfb_inverse.errors import OperatorError
    from jfb_inverse.problems.custom import load_operator_class

    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    (tmp_path / "good.py").write_text("class Good:\n    pass\n\n\nclass Other:\n    pass\n")
    with pytest.raises(OperatorError, match=message) as info:
        load_operator_class(make_target(tmp_path))
    assert "\n" not in str(info.value)


def test_construction_passes_img_size_and_device_only_when_named():
    from jfb_inverse.problems import build_physics
    from jfb_inverse.problems.config import CustomOperator

    physics = build_physics(CustomOperator(target=target("ShiftBlur"), args={"n": 4}), (1, 8, 10))
    assert physics.n == 4 and physics.seen_img_size == (1, 8, 10)
    wrapped = build_physics(CustomOperator(target=target("RowSubsample")), (2, 8, 10))  # takes neither
    assert isinstance(wrapped, LinearPhysics) and wrapped.A(torch.rand(1, 2, 8, 10)).shape == (1, 2, 4, 10)


def test_construction_failure_is_an_operator_error():
    from jfb_inverse.errors import OperatorError
    from jfb_inverse.problems import build_physics
    from jfb_inverse.problems.config import CustomOperator

    constructed = r'constructed for 8x8 images with arguments \{"gain": 2\} \(ValueError: gain 2'
    with pytest.raises(OperatorError, match=constructed):
        build_physics(CustomOperator(target=target("Exploding"), args={"gain": 2}), (1, 8, 8))
    with pytest.raises(OperatorError, match="unexpected keyword argument 'size'"):
        build_physics(CustomOperator(target=target("RowSubsample"), args={"size": 2}), (1, 8, 8))


# --- adjointness -------------------------------------------------------------------------------


def test_adjointness_check_accepts_exact_and_refuses_wrong_adjoint():
    from jfb_inverse.errors import OperatorError
    from jfb_inverse.problems.custom import check_adjoint

    assert check_adjoint(ShiftBlur(n=3), (1, 16, 16)) < 1e-5
    with pytest.raises(OperatorError) as info:
        check_adjoint(WrongAdjoint(n=3), (1, 16, 16), name="ops.py:WrongAdjoint")
    message = str(info.value)
    assert message.startswith("operator ops.py:WrongAdjoint fails the adjointness test: relative mismatch ")
    assert message.endswith("> 1e-03; check that A_adjoint is the adjoint of A") and "\n" not in message


def test_adjointness_check_reports_shape_errors():
    from jfb_inverse.errors import OperatorError
    from jfb_inverse.problems.adapter import OperatorAdapter
    from jfb_inverse.problems.custom import check_adjoint

    class Cropping:
        def A(self, x):
            return x[..., 1:, :]

        def A_adjoint(self, y):
            return y

    with pytest.raises(OperatorError, match="A_adjoint returned shape"):
        check_adjoint(OperatorAdapter(Cropping(), (1, 8, 8)), (1, 8, 8))


# --- image shapes and definitions --------------------------------------------------------------


def test_image_shape_from_img_size_hook_or_measurement():
    from jfb_inverse.problems import image_shape_for
    from jfb_inverse.problems.config import CustomOperator

    assert image_shape_for(CustomOperator(target=target("ShiftBlur")), (1, 8, 10)) == (1, 8, 10)
    assert image_shape_for(CustomOperator(target=target("RowSubsample"), img_size=[1, 8, 10]), (1, 4, 10)) == (1, 8, 10)
    hooked = CustomOperator(target=f"{EXAMPLE}:StripedSensor", args={"stride": 4})
    assert image_shape_for(hooked, (3, 5, 10)) == (3, 20, 10)


def test_custom_config_from_a_class_and_trust():
    from jfb_inverse.errors import OperatorError
    from jfb_inverse.problems import resolve_config
    from jfb_inverse.problems.custom import custom_config, ensure_trusted, load_operator_class

    cls = load_operator_class(target("ShiftBlur"))
    cfg = custom_config(cls, {"n": 2}, overrides={"training": {"steps": 5}})
    assert cfg.problem == "custom" and cfg.operator.target == target("ShiftBlur")
    assert cfg.operator.args == {"n": 2} and cfg.training.steps == 5
    with pytest.raises(OperatorError) as info:
        ensure_trusted(cfg)
    assert str(info.value) == (
        f"checkpoint uses custom operator {target('ShiftBlur')}; rerun with --trust-operator (from Python: "
        "trust_operator=True) to import it (this runs its code)"
    )
    ensure_trusted(cfg, True)
    ensure_trusted(cfg, [target("ShiftBlur")])
    ensure_trusted(resolve_config("deblur"))  # built-in operators need no trust


class FlaggedSensor(ShiftBlur):
    """An operator with an attribute of its own called ``measured``, which has nothing to do with masks."""

    measured = True


def test_an_operators_own_measured_attribute_is_not_taken_for_a_mask():
    # simulate took any `measured` attribute for a mask of the measured entries: this one raised
    # "'bool' object has no attribute 'to'", and a tensor one masked simulate's noise but not physics(x)'s.
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import simulate
    from jfb_inverse.problems.custom import custom_config

    cfg = custom_config(FlaggedSensor)
    physics = PhysicsCache(cfg, torch.device("cpu")).for_image((1, 16, 16))
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    y = simulate(x, physics, cfg.noise)
    torch.manual_seed(3)
    torch.testing.assert_close(physics(x), y, rtol=0, atol=0)
    assert bool(((y - physics.A(x)) != 0).all())  # noise everywhere


def test_measurements_of_an_operator_that_shrinks_images_need_their_physics_from_python():
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems.custom import custom_config

    model, cache = build_model(custom_config(target("HalvingPool"), overrides={"model": {"width": 8, "depth": 3}}))
    model.eval()
    physics = cache.for_image((1, 32, 32))
    y = physics.A(torch.rand(2, 1, 32, 32))
    # The message advised reshaping y only; the measurements were right and the physics missing.
    expected = "at the image shape taken from them, (1, 16, 16), where it makes (1, 8, 8); pass the physics of these"
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        model(y)
    assert "(B, 1, 8, 8)" not in str(info.value)  # measurements of that shape would be refused the same way
    assert "image_shape method or operator.img_size" in str(info.value)
    with torch.no_grad():
        assert model(y, physics).shape == (2, 1, 32, 32)


# --- the CLI end to end ------------------------------------------------------------------------


def test_cli_reconstructs_a_flat_measurement_that_simulate_wrote(tmp_path):
    # simulate wrote (1, 128) for a 16x16 image; reconstruct read the 2-D array as a grey (1, 1, 128)
    # image and refused it although simulate's .json record was beside it.
    from jfb_inverse.models.build import build_model
    from jfb_inverse.problems.custom import custom_config
    from jfb_inverse.training.checkpoint import save_checkpoint

    cfg = custom_config(target("FlatMatrix"), overrides={"model": {"width": 8, "depth": 3}})
    save_checkpoint(tmp_path / "flat.pt", cfg, build_model(cfg)[0].state_dict(), step=0)
    np.save(tmp_path / "clean.npy", np.random.default_rng(0).random((1, 16, 16)).astype(np.float32))
    common = ["--checkpoint", str(tmp_path / "flat.pt"), "--trust-operator"]
    result = invoke("simulate", *common, "--input", str(tmp_path / "clean.npy"), "--output", str(tmp_path / "y.npy"))
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "y.npy").shape == (1, 128)
    result = invoke("reconstruct", *common, "--input", str(tmp_path / "y.npy"), "--output", str(tmp_path / "x.npy"))
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 16, 16)
    # Without simulate's record, an operator.img_size says the image shape, and so the measurement's.
    (tmp_path / "y.npy.json").unlink()
    result = invoke("reconstruct", *common, "--input", str(tmp_path / "y.npy"), "--output", str(tmp_path / "x.npy"))
    assert result.exit_code == 2 and "needs an image_shape method (or operator.img_size)" in result.output
    sized = cfg.model_copy(update={"operator": cfg.operator.model_copy(update={"img_size": [1, 16, 16]})})
    save_checkpoint(tmp_path / "flat.pt", sized, build_model(sized)[0].state_dict(), step=0)
    result = invoke("reconstruct", *common, "--input", str(tmp_path / "y.npy"), "--output", str(tmp_path / "x.npy"))
    assert result.exit_code == 0, result.output


runner = CliRunner()
TINY_TOML = (
    "[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
    "[training]\nbatch_size = 2\nlog_every = 1\n"
)


def invoke(*args: str):
    from jfb_inverse.cli.app import app

    return runner.invoke(app, list(args), catch_exceptions=False)


def _trust_flag() -> list[str]:
    # The checkpoint loaders are to require --trust-operator for custom operators (issue 6).
    return ["--trust-operator"] if "--trust-operator" in invoke("reconstruct", "--help").output else []


@pytest.fixture(scope="module")
def striped_run(tmp_path_factory):
    """The example operator (measurement (C, H/2, W)) trained for 2 steps from the CLI."""
    out = tmp_path_factory.mktemp("striped")
    (out / "tiny.toml").write_text(TINY_TOML)
    result = invoke(
        # Relative to the working folder, as users type it; the run stores it absolute.
        "train", "--operator", f"{os.path.relpath(EXAMPLE)}:StripedSensor",
        "--operator-args", '{"stride": 2, "length": 3}',
        "--config", str(out / "tiny.toml"), "--steps", "2", "--out", str(out / "run"), "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out / "run"


def test_an_operator_class_named_like_an_emoji_code_is_printed_as_named(tmp_path):
    # rich turns ":camera:" into an emoji unless told not to: "ops.py:Camera: ..." lost its name.
    (tmp_path / "ops.py").write_text(
        "class Camera:\n"
        "    def A(self, x):\n        return 0.5 * x\n"
        "    def A_adjoint(self, y):\n        return 0.5 * y\n"
    )
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    result = invoke("train", "--operator", f"{tmp_path / 'ops.py'}:Camera", "--config", str(tmp_path / "tiny.toml"),
                    "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ops.py:Camera:" in result.output.replace("\n", "") and "\U0001f4f7" not in result.output


def test_cli_train_records_the_operator(striped_run):
    problem = (striped_run / "problem.toml").read_text()
    assert 'problem = "custom"' in problem and "StripedSensor" in problem and "length = 3" in problem
    payload = torch.load(striped_run / "model.pt", weights_only=True)
    operator = json.loads(payload["config"])["operator"]
    assert operator["args"] == {"stride": 2, "length": 3}
    # Stored absolute: simulate/reconstruct find the file from any working folder.
    assert operator["target"] == f"{Path(EXAMPLE).resolve()}:StripedSensor"


def test_cli_resume_trusts_the_operator_named_again_as_typed(striped_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(striped_run, run)
    result = invoke("train", "--resume", "--out", str(run), "--steps", "3",
                    "--operator", f"{os.path.relpath(EXAMPLE)}:StripedSensor")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 3


def test_cli_simulate_reconstruct_with_smaller_measurements(striped_run, tmp_path):
    from jfb_inverse.datasets import load_builtin, save_image

    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    trust = _trust_flag()
    result = invoke("simulate", "--checkpoint", str(striped_run), "--input", str(tmp_path / "clean.png"),
                    "--output", str(tmp_path / "y.npy"), *trust)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "y.npy").shape == (1, 16, 32)
    result = invoke("reconstruct", "--checkpoint", str(striped_run), "--input", str(tmp_path / "y.npy"),
                    "--output", str(tmp_path / "x.npy"), "--device", "cpu", *trust)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 32, 32)


def test_cli_plain_object_operator_with_img_size(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML + "[operator]\nimg_size = [1, 32, 32]\n")
    result = invoke("train", "--operator", target("RowSubsample"), "--operator-args", '{"step": 4}',
                    "--config", str(tmp_path / "tiny.toml"), "--steps", "1", "--out", str(tmp_path / "run"),
                    "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    np.save(tmp_path / "y.npy", np.random.default_rng(0).random((1, 8, 32)).astype(np.float32))
    result = invoke("reconstruct", "--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "y.npy"),
                    "--output", str(tmp_path / "x.npy"), "--device", "cpu", *_trust_flag())  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 32, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--operator", target("WrongAdjoint")], "fails the adjointness test: relative mismatch"),
        (["--operator", target("ShiftBlur"), "--operator-args", "{n: 3}"], "--operator-args is not valid JSON"),
        (["--operator", target("ShiftBlur"), "--operator-args", "[3]"], "must be a JSON object"),
        (["--operator-args", '{"n": 3}'], "--operator-args needs --operator"),
        (["--operator", target("ShiftBlur"), "--problem", "deblur"], "drop --problem deblur"),
        (["--operator", target("Nope")], "has no class 'Nope'"),
        (["--operator", target("Exploding")], "could not be constructed"),
        # It passed the dot-product test, then failed on the first batch advising a cast to float32.
        (["--operator", target("ComplexFourier")], "returns complex measurements (torch.complex64)"),
        # It failed on the first batch, blaming batches and advising to move the model.
        (["--operator", target("DoublePool")], "A returns torch.float64 for torch.float32 input; return the input's"),
        (["--operator", "missing_dir/ops.py:Op"], "operator file 'missing_dir/ops.py' not found"),
        (["--problem", "custom"], "problem 'custom' needs your operator: pass --operator"),
    ],
)
def test_cli_operator_errors_are_one_line_exit_2(args, message, tmp_path):
    result = runner.invoke(
        __import__("jfb_inverse.cli.app", fromlist=["app"]).app,
        ["train", *args, "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu"],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]


# --- the shipped example -----------------------------------------------------------------------


def test_example_trains_and_reconstructs(tmp_path, monkeypatch, capsys):
    argv = ["custom_operator.py", "--steps", "2", "--patch-size", "32", "--batch-size", "2", "--width", "8",
            "--out", str(tmp_path / "run")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "measurement (1, 16, 32) -> image (1, 32, 32)" in out
    assert (tmp_path / "run" / "model.pt").is_file()


def test_load_model_refuses_a_custom_operator_unless_trusted(striped_run):
    # Every loader (the CLI, the benchmarks, users' scripts) goes through load_model: building the
    # physics would import and run the operator's file.
    from jfb_inverse.errors import OperatorError
    from jfb_inverse.training.checkpoint import load_model

    with pytest.raises(OperatorError, match="rerun with --trust-operator"):
        load_model(striped_run)
    model, cfg, _ = load_model(striped_run, trust_operator=True)
    assert cfg.operator.kind == "custom" and not model.training


def test_a_filtered_step_needs_a_ct_operator(tmp_path):
    # Built-in operators: refused with the definition; a custom one: when its physics is built at
    # the start of training, before anything is written.
    from jfb_inverse.errors import ConfigError, UserError
    from jfb_inverse.problems import resolve_config
    from jfb_inverse.problems.custom import custom_config, load_operator_class
    from jfb_inverse.training.loop import train

    with pytest.raises(ConfigError, match=r"model\.step 'filtered' .* needs operator\.kind 'ct', got 'blur'"):
        resolve_config("deblur", overrides={"model": {"step": "filtered"}})
    with pytest.raises(ConfigError, match="got 'blur'"):
        resolve_config("ct", overrides={"operator": {"kind": "blur"}})
    cfg = custom_config(
        load_operator_class(target("ShiftBlur")),
        {"n": 2},
        overrides={"model": {"step": "filtered", "width": 8, "depth": 3}, "data": {"patch_size": 32}},
    )
    with pytest.raises(UserError, match=r"needs a CT operator .* got ShiftBlur"):
        train(cfg, tmp_path / "run", "cpu")
    assert not (tmp_path / "run").exists()


def test_cli_resume_refuses_another_operator(striped_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(striped_run, run)
    result = invoke("train", "--resume", "--trust-operator", "--out", str(run), "--steps", "3",
                    "--operator", f"{os.path.relpath(EXAMPLE)}:ShiftedSensor")  # fmt: skip
    assert result.exit_code == 2
    assert "--operator" in result.output and "would be ignored" in result.output
    assert torch.load(run / "model.pt", weights_only=True)["step"] == 2  # untouched


def test_cli_simulate_from_a_config_names_the_operator_as_train_does(striped_run, tmp_path, monkeypatch):
    """A --config naming the operator file relative to the working folder: the sidecar holds the
    absolute target, as the run does, so reconstruct takes the measurement as its own operator's."""
    from jfb_inverse.datasets import load_builtin, save_image

    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    (tmp_path / "cfg").mkdir()
    config = tmp_path / "cfg" / "sim.toml"
    monkeypatch.chdir(EXAMPLE.parent)
    config.write_text('problem = "custom"\n[operator]\nkind = "custom"\ntarget = "custom_operator.py:StripedSensor"\n'
                      '[operator.args]\nstride = 2\nlength = 3\n')  # fmt: skip
    result = invoke("simulate", "--config", str(config), "--input", str(tmp_path / "clean.png"),
                    "--output", str(tmp_path / "y.npy"), "--trust-operator")  # fmt: skip
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "y.npy.json").read_text())
    assert sidecar["operator"]["target"] == f"{EXAMPLE.resolve()}:StripedSensor"
    result = invoke("reconstruct", "--checkpoint", str(striped_run), "--input", str(tmp_path / "y.npy"),
                    "--output", str(tmp_path / "x.npy"), "--device", "cpu", *_trust_flag())  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "other operator parameters" not in result.output


def test_cli_reconstructs_a_smaller_measurement_by_the_image_shape_simulate_recorded(tmp_path):
    """RowSubsample says nothing of its image shape: simulate's sidecar does, and reconstruct uses it."""
    from jfb_inverse.datasets import load_builtin, save_image

    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    trust = _trust_flag()
    result = invoke("train", "--operator", target("RowSubsample"), "--config", str(tmp_path / "tiny.toml"),
                    "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    save_image(load_builtin("camera", size=32)[:, :, :24], tmp_path / "clean.png")  # 32 x 24: not square
    result = invoke("simulate", "--checkpoint", str(tmp_path / "run"), "--input", str(tmp_path / "clean.png"),
                    "--output", str(tmp_path / "y.npy"), *trust)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "y.npy").shape == (1, 16, 24)
    args = ("--checkpoint", str(tmp_path / "run"), "--device", "cpu", *trust)
    result = invoke("reconstruct", *args, "--input", str(tmp_path / "y.npy"), "--output", str(tmp_path / "x.npy"))
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "x.npy").shape == (1, 32, 24)
    # Without the sidecar nothing says the image had 32 rows: refused, naming what would say it.
    np.save(tmp_path / "bare.npy", np.load(tmp_path / "y.npy"))
    result = invoke("reconstruct", *args, "--input", str(tmp_path / "bare.npy"), "--output", str(tmp_path / "b.npy"))
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "needs an image_shape method (or operator.img_size)" in text, result.output
    assert not (tmp_path / "b.npy").exists()


def test_cli_simulate_of_problem_custom_without_an_operator_names_what_simulate_takes(tmp_path):
    from jfb_inverse.datasets import load_builtin, save_image

    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    result = invoke("simulate", "--problem", "custom", "--input", str(tmp_path / "clean.png"),
                    "--output", str(tmp_path / "y.npy"))  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "set operator.target in a --config file" in text and "--checkpoint" in text
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize(
    ("operator", "config", "message"),
    [
        (lambda: target("OneImageOnly"), "", "fails on a batch, 2 image(s) of (1, 32, 32): RuntimeError"),
        # StripedSensor needs an even height: the held-out size is found wrong before any step.
        (lambda: f"{EXAMPLE}:StripedSensor", "eval_size = 33\n", "fails on the held-out images (data.eval_size)"),
    ],
)
def test_cli_train_tries_the_operator_on_a_batch_and_the_held_out_size_first(tmp_path, operator, config, message):
    (tmp_path / "tiny.toml").write_text(TINY_TOML.replace("eval_size = 32\n", config or "eval_size = 32\n"))
    result = invoke("train", "--operator", operator(), "--config", str(tmp_path / "tiny.toml"), "--steps", "2",
                    "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and message in text and "error:" in text, result.output
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_operator_file_moved_says_so_once(tmp_path):
    import shutil

    from jfb_inverse.datasets import load_builtin, save_image

    (tmp_path / "ops").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "ops" / "striped.py")
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    result = invoke("train", "--operator", f"{tmp_path / 'ops' / 'striped.py'}:StripedSensor",
                    "--config", str(tmp_path / "tiny.toml"), "--steps", "1", "--out", str(tmp_path / "run"),
                    "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    (tmp_path / "ops").rename(tmp_path / "moved")
    run = str(tmp_path / "run")
    for args in (
        ["simulate", "--checkpoint", run, "--input", str(tmp_path / "clean.png"), "--output", str(tmp_path / "y.npy")],
        ["evaluate", "--checkpoint", run, "--json", str(tmp_path / "r.json")],
    ):
        result = invoke(*args, "--trust-operator")
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "operator file" in text and "is gone (moved or deleted)" in text, text
        assert str(tmp_path / "ops" / "striped.py") in text and "camera" not in text
        assert "--operator NEW/PATH.py:StripedSensor" in text  # and how to say where it is now
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "r.json").exists()


def test_a_checkpoint_follows_its_moved_operator_file_named_by_operator(tmp_path):
    import json
    import shutil

    from jfb_inverse.datasets import load_builtin, save_image

    (tmp_path / "ops").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "ops" / "striped.py")
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    run = str(tmp_path / "run")
    result = invoke("train", "--operator", f"{tmp_path / 'ops' / 'striped.py'}:StripedSensor",
                    "--config", str(tmp_path / "tiny.toml"), "--steps", "1", "--out", run,
                    "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    save_image(load_builtin("camera", size=32), tmp_path / "clean.png")
    clean, before, after = str(tmp_path / "clean.png"), str(tmp_path / "before.npy"), str(tmp_path / "after.npy")
    y_old = str(tmp_path / "y_old.npy")  # simulated before the move: its .json names the old file
    for args in (["simulate", "--checkpoint", run, "--input", clean, "--output", y_old],
                 ["reconstruct", "--checkpoint", run, "--input", y_old, "--output", before,
                  "--device", "cpu"]):  # fmt: skip
        assert invoke(*args, "--trust-operator").exit_code == 0
    (tmp_path / "ops").rename(tmp_path / "moved")
    moved = f"{tmp_path / 'moved' / 'striped.py'}:StripedSensor"

    # Naming the new place is enough (it trusts it): the old measurement is of the same operator.
    result = invoke("reconstruct", "--checkpoint", run, "--input", y_old, "--output", after, "--device", "cpu",
                    "--operator", moved)  # fmt: skip
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    np.testing.assert_array_equal(np.load(after), np.load(before))
    y_new = str(tmp_path / "y_new.npy")
    result = invoke("simulate", "--checkpoint", run, "--input", clean, "--output", y_new, "--operator", moved)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(y_new), np.load(y_old))  # same operator, same noise seed
    assert json.loads((tmp_path / "y_new.npy.json").read_text())["operator"]["target"] == moved
    result = invoke("evaluate", "--checkpoint", run, "--json", str(tmp_path / "r.json"), "--device", "cpu",
                    "--operator", moved)  # fmt: skip
    assert result.exit_code == 0 and "model" in json.loads((tmp_path / "r.json").read_text())["mean"]["psnr"]
    from jfb_inverse.training.checkpoint import load_model

    assert load_model(run, operator=moved)[1].operator.target == moved  # the same from Python
    # --resume continues the run from the new place, and records it.
    result = invoke("train", "--resume", "--out", run, "--steps", "2", "--operator", moved)
    assert result.exit_code == 0, result.output
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert payload["step"] == 2 and json.loads(payload["config"])["operator"]["target"] == moved
    assert moved in (tmp_path / "run" / "problem.toml").read_text()

    # Another class, a missing file, a checkpoint of a built-in operator, or no checkpoint: refused.
    for args, message in (
        (["--checkpoint", run, "--operator", f"{moved[:-len('StripedSensor')]}ShiftedSensor"],
         "was trained on class 'StripedSensor', but --operator"),
        (["--checkpoint", run, "--operator", f"{tmp_path / 'nowhere.py'}:StripedSensor"], "not found"),
        (["--checkpoint", "builtin:deblur", "--operator", moved], "uses the built-in 'blur' operator; drop --operator"),
    ):  # fmt: skip
        result = invoke("reconstruct", *args, "--input", y_old, "--output", str(tmp_path / "x.npy"))
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    result = invoke("simulate", "--problem", "custom", "--operator", moved, "--input", clean,
                    "--output", str(tmp_path / "y.npy"))  # fmt: skip
    assert result.exit_code == 2 and "--operator points a --checkpoint" in " ".join(result.output.split())
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "y.npy").exists()


def make_a_number(**_kwargs: Any) -> int:
    """A factory that returns no operator."""
    return 3


def test_cli_operator_mistakes_name_what_went_wrong(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    (tmp_path / "deblur.toml").write_text('problem = "deblur"\n' + TINY_TOML)
    out = ("--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu")
    result = invoke("train", "--operator", target("make_a_number"), "--config", str(tmp_path / "tiny.toml"), *out)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "returned an int, which is neither a deepinv LinearPhysics" in text, text
    # No --problem was given: the message says that --operator asked for 'custom'.
    result = invoke("train", "--operator", target("ShiftBlur"), "--config", str(tmp_path / "deblur.toml"), *out)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "(--operator trains problem 'custom')" in text, text
    assert not (tmp_path / "run").exists()
