"""``jfb-inverse info``: a checkpoint's contents, read without running it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from jfb_inverse.cli.app import app
from typer.testing import CliRunner

from jfb_inverse.models.precision import native_bf16_cpu
from jfb_inverse.training.checkpoint import load_model
from jfb_inverse.training.summary import describe_checkpoint

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_operator.py"
TINY_TOML = (
    "[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
    "[training]\nbatch_size = 2\nlog_every = 1\n"
)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_info_of_the_shipped_model_reports_what_it_records(tmp_path):
    result = invoke("info", "--checkpoint", "builtin:deblur", "--json", tmp_path / "info.json")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "8,000 of 8,000 steps (finished)" in text and "blur: kernel gaussian, sigma 2" in text
    assert "length" not in text  # a Gaussian kernel's summary leaves the motion fields out
    assert "data builtin, grey (1 channel)" in text  # an RGB checkpoint read the same before
    assert "precision fp32," in text  # no record of where it ran: the setting as it is
    summary = json.loads((tmp_path / "info.json").read_text())
    model, cfg, _ = load_model("builtin:deblur")
    assert summary["problem"] == "deblur" and summary["model"]["equivariance"] == cfg.model.equivariance
    assert summary["model"]["parameters"] == sum(p.numel() for p in model.regularizer.parameters())
    assert (
        summary["model"]["eta"] == float(model.eta.detach())
        or abs(summary["model"]["eta"] / float(model.eta.detach()) - 1) < 1e-5
    )
    assert summary["solver"]["reconstruction"] == {"name": "anderson", "tol": 1e-4, "max_iter": 100}
    assert summary["training"]["steps_done"] == 8000 and summary["last_log"] is None
    assert f"{summary['model']['parameters']:,} parameters" in text


def test_info_of_an_unfinished_run_says_it_can_be_resumed(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    run = tmp_path / "run"
    result = invoke("train", "--problem", "deblur", "--config", tmp_path / "tiny.toml", "--steps", "3",
                    "--out", run, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    # The run's final held-out evaluation is written beside it, and info reads it back.
    report = json.loads((run / "evaluation.json").read_text())
    assert report["settings"]["checkpoint_step"] == 3 and report["images"][0]["name"] == "camera"
    held = describe_checkpoint(run)["held_out"]
    psnr = report["mean"]["psnr"]
    assert held["psnr"] == psnr and held["best_baseline"] == max(("wiener", "tv"), key=psnr.get)
    assert held["gain_db"] == round(psnr["model"] - psnr[held["best_baseline"]], 4)
    assert "held out model" in " ".join(invoke("info", "--checkpoint", run).output.split())
    # What precision auto ran as (bf16 on a CPU with native bf16 arithmetic, else fp32) is recorded.
    ran = "bf16" if native_bf16_cpu() else "fp32"
    assert describe_checkpoint(run)["training"]["ran_on"] == {"device": "cpu", "precision": ran}
    assert f"precision auto ({ran} on cpu)" in " ".join(invoke("info", "--checkpoint", run).output.split())
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["step"] = 2  # as a run stopped by --max-minutes after 2 of its 3 steps records itself
    torch.save(payload, run / "model.pt")
    summary = describe_checkpoint(run)
    assert summary["training"]["finished"] is False and summary["training"]["resumable"] is True
    assert summary["last_log"]["step"] == 2  # the record of the saved step, not the later ones
    assert summary["held_out"] is None  # the evaluation scored other weights (step 3): not shown as these
    text = " ".join(invoke("info", "--checkpoint", run).output.split())
    assert "2 of 3 steps (not finished: train --resume continues it)" in text


def test_info_reads_a_custom_operator_run_without_running_its_code(tmp_path):
    (tmp_path / "ops").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "ops" / "striped.py")
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    result = invoke("train", "--operator", f"{tmp_path / 'ops' / 'striped.py'}:StripedSensor",
                    "--operator-args", '{"stride": 2, "length": 3}', "--config", tmp_path / "tiny.toml",
                    "--steps", "1", "--out", tmp_path / "run", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    (tmp_path / "ops").rename(tmp_path / "moved")  # gone: importing it would fail, and info does not try
    result = invoke("info", "--checkpoint", tmp_path / "run")
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "args {'stride': 2, 'length': 3}" in text and "(missing: name where it is now with --operator" in text


def test_info_refuses_a_bad_checkpoint_or_json_name_in_one_line(tmp_path):
    for args, message in (
        (["--checkpoint", tmp_path / "nowhere"], "not found"),
        (["--checkpoint", "builtin:deblur", "--json", tmp_path / "info.txt"], "ending in .json"),
        (["--checkpoint", "builtin:deblur", "--json", tmp_path / "no" / "info.json"], "does not exist"),
    ):
        result = invoke("info", *args)
        assert result.exit_code == 2 and message in result.output and "error:" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_info_shows_what_plans_and_drives_the_run(tmp_path):
    """The saved step bounds the log shown; a time budget and Muon's own learning rate are said."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML + 'optimizer = "muon"\nlr = 1e-3\nminutes = 5.0\n')
    run = tmp_path / "run"
    result = invoke("train", "--problem", "deblur", "--config", tmp_path / "tiny.toml", "--steps", "4",
                    "--out", run, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    # A killed run logs past its last checkpoint: those lines describe weights that were not saved.
    with (run / "history.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 9, "loss": 1.0}) + "\n")
    summary = describe_checkpoint(run)
    assert summary["last_log"]["step"] == 4
    assert summary["training"]["muon_lr"] == 0.005 and summary["training"]["minutes"] == 5.0
    text = " ".join(invoke("info", "--checkpoint", run).output.split())
    assert "muon lr 0.005 (adam lr 0.001 for the rest)" in text
    assert "of 4 steps" in text and "5-minute budget" in text
