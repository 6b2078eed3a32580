"""The CLI end to end: train (20 steps) -> simulate -> reconstruct -> evaluate, and clean errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from jfb_inverse.cli.app import app
from jfb_inverse.datasets import load_builtin, save_image
from typer.testing import CliRunner

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = out / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 48\n[training]\nbatch_size = 4\nlog_every = 5\n")
    result = invoke(
        "train",
        "--problem",
        "deblur",
        "--config",
        str(config),
        "--steps",
        "20",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--seed",
        "1",
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_all_outputs(trained):
    for name in ("model.pt", "problem.toml", "history.jsonl", "training.png"):
        assert (trained / name).is_file(), name
    lines = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20]
    for record in lines:
        assert {"loss", "psnr", "iterations", "residual"} <= record.keys()
        assert np.isfinite(record["loss"]) and record["iterations"] >= 1
    problem = (trained / "problem.toml").read_text()
    assert 'problem = "deblur"' in problem and "steps = 20" in problem
    payload = torch.load(trained / "model.pt", weights_only=True)
    assert payload["step"] == 20 and "optimizer" in payload


def test_simulate_then_reconstruct_non_square(trained, tmp_path):
    clean = load_builtin("camera", size=None)[:, 100:148, 200:280]  # 48 x 80
    save_image(clean, tmp_path / "clean.png")
    result = invoke(
        "simulate",
        "--checkpoint",
        str(trained / "model.pt"),
        "--input",
        str(tmp_path / "clean.png"),
        "--output",
        str(tmp_path / "y.npy"),
        "--seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (1, 48, 80)
    result = invoke(
        "reconstruct",
        "--checkpoint",
        str(trained / "model.pt"),
        "--input",
        str(tmp_path / "y.npy"),
        "--output",
        str(tmp_path / "x.npy"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert "fixed-point iterations" in result.output
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (1, 48, 80)
    truth = np.asarray(clean)
    assert np.mean((x.clip(0, 1) - truth) ** 2) < np.mean((y - truth) ** 2)


def test_reconstruct_folder_skips_bad_files(trained, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.random.default_rng(0).random((1, 40, 40)).astype(np.float32))
    np.save(src / "b.npy", np.full((1, 40, 40), np.nan, dtype=np.float32))
    result = invoke(
        "reconstruct",
        "--checkpoint",
        str(trained),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 1
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "b.png").exists()
    assert "NaN" in result.output


def test_reconstruct_folder_leaves_hidden_files_out(trained, tmp_path):
    # A folder copied from macOS holds "._a.npy" resource forks: they made the run exit 1.
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.random.default_rng(0).random((1, 40, 40)).astype(np.float32))
    (src / "._a.npy").write_bytes(b"\x00\x05\x16\x07 resource fork")
    out = tmp_path / "out"
    result = invoke("reconstruct", "--checkpoint", str(trained), "--input", str(src), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png"] and "._a" not in result.output


def test_evaluate_json_schema_and_figure(trained, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("camera", "coins"):
        save_image(load_builtin(name, size=48), folder / f"{name}.png")
    result = invoke(
        "evaluate",
        "--checkpoint",
        str(trained / "model.pt"),
        "--images",
        str(folder),
        "--json",
        str(tmp_path / "r.json"),
        "--figure",
        str(tmp_path / "f.png"),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["name"] for r in report["images"]] == ["camera.png", "coins.png"]
    methods = set(report["mean"]["psnr"])
    assert {"model", "measurement"} <= methods and len(methods) >= 4  # + at least two classical baselines
    for row in report["images"]:
        assert set(row["psnr"]) == methods == set(row["ssim"])
        assert all(isinstance(v, float) for v in row["psnr"].values())
        assert row["iterations"] >= 1 and isinstance(row["converged"], bool)
    assert report["settings"] == {
        "noise_seed": 0,
        "equivariance": "rotations",
        "solver": "anderson",
        "tol": 1e-4,
        "max_iter": 100,
    }
    assert (tmp_path / "f.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--problem", "nope"], "unknown problem 'nope'"),
        (["train", "--problem", "deblur", "--device", "cuda"], "no CUDA GPU"),
        (["reconstruct", "--checkpoint", "missing.pt", "--input", "y.npy", "--output", "x.png"], "not found"),
        (["simulate", "--problem", "deblur", "--input", "missing.png", "--output", "y.npy"], "missing.png"),
        (["train", "--problem", "deblur", "--init-from", "missing.pt"], "'missing.pt' not found"),
        (["train", "--problem", "deblur", "--init-from", "builtin:nope"], "no built-in model 'nope'"),
        (["train", "--resume", "--init-from", "builtin:deblur"], "drop it to --resume"),
        (["train", "--problem", "deblur", "--init-from", "runs/x", "--out", "runs/x"], "is this run's own --out"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_problems_command_lists_deblur_with_its_presets(monkeypatch):
    from jfb_inverse.cli.common import console

    monkeypatch.setattr(console, "width", 200)  # rich's console took its width when created
    result = CliRunner().invoke(app, ["problems"])
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if "deblur" in line and "Deblurring" in line)
    assert row.rstrip(" │").endswith("full, quick")


def test_train_warns_when_the_map_is_not_contractive(tmp_path):
    # A gradient step of 5 / ||A||^2 makes T expansive (Lipschitz 4, see test_training): the monitor says so.
    config = tmp_path / "run.toml"
    config.write_text('[data]\npatch_size = 32\neval_size = 32\n[model]\nstep = "gradient"\neta_init = 5.0\n'
                      "width = 8\ndepth = 3\n[training]\nbatch_size = 2\nlog_every = 2\n")  # fmt: skip
    result = invoke("train", "--problem", "deblur", "--config", str(config), "--steps", "2", "--lipschitz-every", "2",
                    "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not contractive at step 2" in " ".join(result.output.split())
    record = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[0])
    assert record["lipschitz"] > 1.0


def test_train_warns_once_about_unconverged_steps_and_totals_them(tmp_path):
    # max_iter 1 cannot reach tol 1e-9: every step is counted, warned about once, totalled at the end.
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      "[solver]\ntol = 1e-9\nmax_iter = 1\n[training]\nbatch_size = 2\nlog_every = 2\n")  # fmt: skip
    result = invoke("train", "--problem", "deblur", "--config", str(config), "--steps", "6",
                    "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("hit max_iter (1) before tol") == 1
    assert "6 of the 6 training steps of this run (100%) hit max_iter" in text
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["not_converged_steps"] for r in records] == [2, 2, 2]
    # A resumed run counts the steps it trained itself.
    more = invoke("train", "--resume", "--out", str(tmp_path / "run"), "--steps", "10")
    assert more.exit_code == 0, more.output
    assert "4 of the 4 training steps of this run (100%) hit max_iter" in " ".join(more.output.split())
    assert "10 steps, resuming after step 6, batch 2" in " ".join(more.output.split())


def test_an_interrupted_final_evaluation_leaves_the_training_figure(tmp_path, monkeypatch):
    import jfb_inverse.evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jfb_inverse.evaluation, "evaluate", interrupted)
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      "[solver]\ntol = 1e-9\nmax_iter = 1\n[training]\nbatch_size = 2\nlog_every = 1\n")  # fmt: skip
    result = runner.invoke(app, ["train", "--problem", "deblur", "--config", str(config), "--steps", "2",
                                 "--out", str(tmp_path / "run"), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "1 step before step 1 hit max_iter (1)" in " ".join(result.output.split())
    # The run is whole without its evaluation (which `evaluate` redoes): weights and curves.
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary left


def test_init_from_is_stored_as_an_absolute_path(trained, tmp_path, monkeypatch):
    # Typed relative to the working folder; stored absolute, so problem.toml works from anywhere.
    monkeypatch.chdir(trained.parent)
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[training]\nbatch_size = 2\n")
    result = invoke("train", "--problem", "deblur", "--config", str(config), "--init-from", trained.name,
                    "--steps", "1", "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "run" / "problem.toml").read_text()
    assert f'init_from = "{trained.resolve()}"' in saved
    assert f"1 step, from the weights of {trained.resolve()}, batch 2" in " ".join(result.output.split())


def test_resume_of_a_folder_without_a_run_and_an_output_folder_say_so(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("train", "--resume", "--out", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "nothing to resume" in result.output
    clean = load_builtin("camera", size=None)[:, :40, :48]
    save_image(clean, tmp_path / "clean.png")
    result = invoke(
        "simulate", "--problem", "deblur", "--input", str(tmp_path / "clean.png"), "--output", str(tmp_path)
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "is a folder; give a file name such as" in text and "out.npy" in text


def test_train_header_and_warnings_of_an_unrolled_run(tmp_path):
    # Unrolled training runs K iterations from the model's start: no solver tolerance to miss, no
    # warm start, so neither is claimed.
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      "[solver]\ntol = 1e-9\n[training]\nbatch_size = 2\nlog_every = 2\nbatch_reuse = 2\n"
                      "unrolled_k = 3\n")  # fmt: skip
    result = invoke("train", "--problem", "deblur", "--config", str(config), "--steps", "4", "--gradient", "unrolled",
                    "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "(each used 2x)" in text and "3 unrolled iterations" in text
    assert "warm-started" not in text and "hit max_iter" not in text


def test_train_optimizer_option_reaches_the_definition_and_the_header(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      "[training]\nbatch_size = 2\nlog_every = 2\n")  # fmt: skip
    result = invoke("train", "--problem", "deblur", "--config", str(config), "--steps", "2", "--optimizer", "muon",
                    "--out", str(tmp_path / "run"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "muon (lr 0.005; Adam lr 0.002 for the rest)" in text
    assert 'optimizer = "muon"' in (tmp_path / "run" / "problem.toml").read_text()
    result = invoke("train", "--problem", "deblur", "--optimizer", "sgd", "--out", str(tmp_path / "other"))
    # Typer's error box wraps lines: compare the words without the box's borders.
    words = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "'sgd' is not one of 'adam', 'muon'" in words


def test_reconstruct_equivariance_option_changes_the_result(tmp_path):
    clean = load_builtin("camera", size=None)[:, 100:140, 200:264]  # 40 x 64
    save_image(clean, tmp_path / "clean.png")
    args = ("--checkpoint", "builtin:deblur", "--device", "cpu")
    assert (
        invoke(
            "simulate", *args[:2], "--input", str(tmp_path / "clean.png"), "--output", str(tmp_path / "y.npy")
        ).exit_code
        == 0
    )
    outputs = {}
    for group in ("none", "rotations"):
        out = tmp_path / f"x_{group}.npy"
        result = invoke(
            "reconstruct", *args, "--input", str(tmp_path / "y.npy"), "--output", str(out), "--equivariance", group
        )
        assert result.exit_code == 0, result.output
        outputs[group] = np.load(out)
    assert outputs["rotations"].shape == (1, 40, 64)
    assert 1e-4 < np.abs(outputs["rotations"] - outputs["none"]).max() < 0.1


def test_reconstruct_rejects_an_unknown_equivariance(tmp_path):
    np.save(tmp_path / "y.npy", np.zeros((1, 16, 16), dtype=np.float32))
    result = invoke(
        "reconstruct",
        "--checkpoint",
        "builtin:deblur",
        "--input",
        str(tmp_path / "y.npy"),
        "--output",
        str(tmp_path / "x.npy"),
        "--equivariance",
        "mirror",
    )
    assert result.exit_code == 2
    assert "mirror" in result.output and not (tmp_path / "x.npy").exists()


def test_the_console_script_shows_python_warnings_as_one_line(capsys):
    import warnings

    from jfb_inverse.cli.app import _warnings_as_lines

    with warnings.catch_warnings():  # restores showwarning afterwards
        warnings.simplefilter("always")
        _warnings_as_lines()
        warnings.warn("3 of 5 images are smaller than data.patch_size", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "warning: 3 of 5 images are smaller than data.patch_size" in err
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_one_reconstruction_on_a_terminal_shows_its_iterations_whatever_its_file_name(tmp_path, monkeypatch):
    import jfb_inverse.cli.reconstruct as reconstruct_cli

    # The status line took the file name as a format string: braces in it raised an IndexError.
    shown: list[int] = []
    counting = reconstruct_cli.solve_counting_iterations
    monkeypatch.setattr(reconstruct_cli, "stdout_is_terminal", lambda: True)
    monkeypatch.setattr(
        reconstruct_cli, "solve_counting_iterations", lambda m, y, p, _: counting(m, y, p, shown.append)
    )
    save_image(load_builtin("camera", size=None)[:, 100:140, 200:264], tmp_path / "clean.png")
    measured = tmp_path / "scan{1}.npy"
    assert invoke("simulate", "--checkpoint", "builtin:deblur", "--input", str(tmp_path / "clean.png"),
                  "--output", str(measured)).exit_code == 0  # fmt: skip
    result = invoke("reconstruct", "--checkpoint", "builtin:deblur", "--input", str(measured),
                    "--output", str(tmp_path / "x{}.png"), "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x{}.png").is_file() and shown and f"{shown[-1]} fixed-point iterations" in result.output


@pytest.mark.parametrize("equivariance", ["none", "rotations", "dihedral"])
def test_the_iteration_count_shown_while_an_image_reconstructs_is_the_solves(equivariance):
    from jfb_inverse.cli.reconstruct import solve_counting_iterations

    from jfb_inverse.training.checkpoint import load_model

    model, _, operators = load_model("builtin:deblur")
    model.equivariance = equivariance
    x = load_builtin("camera", size=48)[None]
    physics = operators.for_image(x.shape[1:])
    shown: list[int] = []
    with torch.inference_mode():
        solve_counting_iterations(model, physics.A(x), physics, shown.append)
    stats = model.last_stats
    assert shown == list(range(1, stats.evaluations + 1)) and stats.evaluations == int(stats.iterations.max()) > 5
    assert not model.regularizer._forward_hooks  # the counter is removed afterwards
