"""Distributed training with torchrun on CPU (gloo, 2 processes): same weights as one process over
the same global batch, and a failing rank stops the whole run instead of hanging."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from jfb_inverse.training.torchrun import PEER_LOST, report_failure

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = """
problem = "deblur"
[data]
patch_size = 32
eval_size = 32
[model]
width = 8
depth = 3
[solver]
tol = 1e-6
max_iter = 200
[training]
steps = 4
batch_size = 4
log_every = 2
# fp32: bf16 (precision auto on a CPU with native bf16) rounds a batch of 2 and a batch of 4
# differently, and a tol of 1e-6 is below its residual floor; this file checks DDP's arithmetic.
precision = "fp32"
"""


def run_train(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "jfb_inverse.cli", "train", *args, "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# Each batch serves two consecutive steps, the second starting from the first's fixed point: every
# rank keeps the warm starts of its own share, and a checkpoint gathers them. Every solve runs its
# 40 iterations: a warm start is near tol, where one process stopping on the whole batch's maximum
# and each rank on its own share's would run different counts (1.6e-6 apart in the weights after
# four steps), which is the stop rule's doing, not DDP's arithmetic, which this file checks.
REUSE = "batch_reuse = 2\nreuse_gap = 1\n"
FRESH = "batch_reuse = 1\n"  # a fresh batch every step (the deblur default reuses batches)
FIXED_COUNT = ("tol = 1e-6\nmax_iter = 200", "tol = 1e-12\nmax_iter = 40")


def config_text(extra: str) -> str:
    """The test definition, with ``extra`` appended to its training section (and, for reuse, a
    fixed iteration count)."""
    return (CONFIG.replace(*FIXED_COUNT) if extra == REUSE else CONFIG) + extra


@pytest.mark.parametrize("extra", [FRESH, REUSE], ids=["fresh", "reuse"])
def test_two_gloo_processes_match_one_process(tmp_path, extra):
    config = tmp_path / "run.toml"
    config.write_text(config_text(extra))
    single = run_train(["--config", str(config), "--out", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr[-2000:]
    double = run_train(["--config", str(config), "--out", str(tmp_path / "ddp"), "--nproc", "2"])
    assert double.returncode == 0, double.stderr[-2000:]
    a = torch.load(tmp_path / "single" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    # Only rank 0 wrote: one history line per logged step, not two.
    assert (tmp_path / "ddp" / "history.jsonl").read_text().count("\n") == 2
    # ... and its records cover both shards: the loss and PSNR of the whole batch, as in one process.
    records = [
        [json.loads(line) for line in (tmp_path / run / "history.jsonl").read_text().splitlines()]
        for run in ("single", "ddp")
    ]
    for one, two in zip(*records, strict=True):
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4)
        assert two["psnr"] == pytest.approx(one["psnr"], abs=1e-3)
    # ... and printed: one header for the run, not one per rank.
    assert (double.stdout + double.stderr).count("training deblur on cpu") == 1, double.stdout[-2000:]


def run_custom_operator_on_two_ranks(tmp_path: pathlib.Path, operator: str, *extra: str) -> subprocess.CompletedProcess:
    """A 200-step run on 2 ranks with a test operator (``tests/FILE:CLASS``), written to ``tmp_path/run``."""
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace('problem = "deblur"\n', "").replace("steps = 4", "steps = 200"))
    args = ["--config", str(config), "--operator", str(ROOT / "tests" / operator), *extra]
    return run_train([*args, "--out", str(tmp_path / "run"), "--nproc", "2"], timeout=200)


def test_a_failing_rank_stops_the_whole_run(tmp_path):
    result = run_custom_operator_on_two_ranks(tmp_path, "ops_rank_failure.py:FailsOnRankOne")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "simulated failure on rank 1" in result.stderr
    # The failing rank's traceback is the only one: rank 0, whose collective failed with it, says so
    # in a line, and torchrun's traceback and table of exits are one line naming the rank (they were
    # about 200 lines in all).
    assert result.stderr.count("Traceback") == 1, result.stderr[-3000:]
    assert "error: rank 1 failed with exit status 1 (its error is above)" in result.stderr, result.stderr[-3000:]
    assert "ChildFailedError" not in result.stderr and "Root Cause" not in result.stderr


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    # Rank 0 alone receives SIGINT mid-step: the ranks agree (an all_reduce of the flag) and both
    # stop after the same step, where rank 1 used to go on alone into a collective that rank 0 had
    # left (the run then hung until the timeout). Rank 0 alone prints the message, once for the run.
    result = run_custom_operator_on_two_ranks(tmp_path, "ops_rank_signal.py:SignalsRankZero", "--trust-operator")
    output = result.stdout + result.stderr
    steps = re.findall(r"interrupted by signal 2 after step (\d+)", output)
    assert len(steps) == 1 and result.returncode == 130, (result.returncode, output[-3000:])  # as one process
    assert "Traceback" not in result.stderr and "FAILED" not in result.stderr, result.stderr[-3000:]
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["step"] == int(steps[0]) < 200


def test_a_run_stopped_by_a_signal_mid_log_window_resumes_to_the_same_log(tmp_path, monkeypatch):
    # The stop saves a partial log window; every rank reloads it. It used to be rank 0's alone, so the
    # resumed run's record counted rank 0's shard twice for the steps before the stop.
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.replace('problem = "deblur"\n', "").replace("log_every = 2", "log_every = 8")
                      .replace("steps = 4", "steps = 8"))  # fmt: skip
    common = ["--config", str(config), "--operator", str(ROOT / "tests" / "ops_rank_signal.py:SignalsRankZero")]
    common += ["--trust-operator", "--nproc", "2"]
    monkeypatch.setenv("JFB_TEST_SIGNAL", "0")
    assert run_train([*common, "--out", str(tmp_path / "full")]).returncode == 0
    monkeypatch.setenv("JFB_TEST_SIGNAL", "1")
    stopped = run_train([*common, "--out", str(tmp_path / "part")])
    assert "interrupted by signal 2 after step" in stopped.stdout + stopped.stderr, stopped.stderr[-2000:]
    assert torch.load(tmp_path / "part" / "model.pt", weights_only=True)["step"] < 8  # mid-window
    monkeypatch.setenv("JFB_TEST_SIGNAL", "0")
    resumed = run_train(["--resume", "--out", str(tmp_path / "part"), "--nproc", "2", "--trust-operator"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def record(run: str) -> dict:
        (line,) = (tmp_path / run / "history.jsonl").read_text().splitlines()
        return {k: v for k, v in json.loads(line).items() if k != "seconds"}

    assert record("part") == pytest.approx(record("full"), rel=1e-9)


def processes_writing_to(run: pathlib.Path) -> list[str]:
    """Command lines of the running processes that name ``run``."""
    found = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process has ended
            continue
        if str(run) in text:
            found.append(text)
    return found


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="reads /proc to find the workers")
def test_a_signal_to_the_launcher_alone_stops_every_worker_before_it_exits(tmp_path):
    # kill PID, docker stop or a pipeline's terminate() signal the launching process only. It used to
    # die at once, leaving torchrun and the workers training on with nobody waiting for them.
    config = tmp_path / "run.toml"
    config.write_text(config_text(FRESH).replace("steps = 4", "steps = 100000"))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jfb_inverse.cli", "train", "--config", str(config), "--out", str(run),
           "--nproc", "2", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        history = run / "history.jsonl"
        while not (history.is_file() and history.read_text().strip()):  # a first record: training has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.terminate()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert processes_writing_to(run) == []  # the workers ended before the launcher
    stop = re.findall(r"interrupted by signal 15 after step (\d+)", " ".join((out + err).split()))
    assert len(stop) == 1, (out + err)[-3000:]
    assert torch.load(run / "model.pt", weights_only=True)["step"] == int(stop[0]) > 0
    # torchrun's own lines are left out: its thread-count banner, its per-worker warnings, and the
    # traceback of the signal it received.
    assert not any(text in err for text in ("OMP_NUM_THREADS", "closing signal", "Traceback")), err[-3000:]


@pytest.mark.parametrize("flag", ["--nproc=2", "--nproc"])
def test_nproc_is_stripped_from_worker_arguments(monkeypatch, flag):
    from jfb_inverse.cli import train as train_module

    argv = ["jfb-inverse", "train", "--steps", "3", *([flag, "2"] if flag == "--nproc" else [flag]), "--out", "x"]
    monkeypatch.setattr(sys, "argv", argv)
    assert train_module._argv_without_nproc() == ["--steps", "3", "--out", "x"]


@pytest.mark.parametrize("extra", [FRESH, REUSE], ids=["fresh", "reuse"])
def test_distributed_run_resumes(tmp_path, extra):
    config = tmp_path / "run.toml"
    config.write_text(config_text(extra))
    full = run_train(["--config", str(config), "--out", str(tmp_path / "full"), "--nproc", "2"])
    assert full.returncode == 0, full.stderr[-2000:]
    # Stops after its first step (time budget), then continues from the checkpoint on 2 ranks.
    part = run_train(
        ["--config", str(config), "--out", str(tmp_path / "part"), "--nproc", "2", "--max-minutes", "1e-9"]
    )
    assert part.returncode == 0, part.stderr[-2000:]
    stopped = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    assert stopped["step"] == 1
    if extra == REUSE:  # the warm start of step 2 is the whole batch's, gathered from both ranks
        (slot,) = stopped["batch_pool"]["slots"].values()
        assert slot["start"].shape == slot["x"].shape == (4, 1, 32, 32)
    resumed = run_train(["--resume", "--out", str(tmp_path / "part"), "--nproc", "2"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "part" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_budget_ends_every_rank_at_the_same_step(tmp_path):
    # Each rank fits the step count to its own clock; the ranks take the smallest plan each step,
    # so they stop together (one going on alone would hang the run until the timeout).
    config = tmp_path / "run.toml"
    config.write_text(config_text(FRESH))
    result = run_train(["--config", str(config), "--out", str(tmp_path / "run"), "--nproc", "2", "--minutes", "0.05"])
    assert result.returncode == 0, result.stderr[-2000:]
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert payload["step"] == records[-1]["step"] == records[-1]["planned_steps"] >= 1
    assert payload["step_plan"]["planned"] == payload["step"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "3"], "batch size 3 does not split over 2 processes; use a multiple of 2"),
        (["--data", "SMALL"], "is at least 32 px on each side"),
    ],
)
def test_what_every_worker_would_refuse_is_said_once_before_launching(tmp_path, monkeypatch, args, message):
    """Not twice inside torchrun's failure report, with exit code 1: one line, exit 2, no worker started."""
    import numpy as np
    from jfb_inverse.cli.app import app
    from typer.testing import CliRunner

    import jfb_inverse.training.distributed as distributed

    monkeypatch.setattr(distributed, "launch", lambda *_: pytest.fail("workers were launched"))
    (tmp_path / "small").mkdir()
    np.save(tmp_path / "small" / "tiny.npy", np.random.default_rng(0).random((20, 20)).astype(np.float32))
    (tmp_path / "t.toml").write_text("[data]\npatch_size = 32\neval_size = 32\n[training]\nbatch_size = 2\n")
    args = [str(tmp_path / "small") if a == "SMALL" else a for a in args]
    result = CliRunner().invoke(app, ["train", "--problem", "deblur", "--config", str(tmp_path / "t.toml"), "--nproc",
                                      "2", "--device", "cpu", "--out", str(tmp_path / "run"), *args])  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "run").exists()


def failure(exitcode: int, timestamp: int) -> ProcessFailure:
    """torchrun's record of a worker's exit (no error file)."""
    record = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="<N/A>")
    record.timestamp = timestamp
    return record


@pytest.mark.parametrize(
    ("exits", "status", "line"),
    [
        # rank 1 failed; rank 0 lost its connection to it a second earlier, then torchrun stopped rank 2
        ({0: (PEER_LOST, 10), 1: (1, 11), 2: (-signal.SIGTERM, 11)}, 1, "rank 1 failed with exit status 1"),
        ({0: (-signal.SIGTERM, 11), 1: (-signal.SIGKILL, 11)}, 137, "rank 1 was killed by SIGKILL (out of memory?)"),
        ({0: (PEER_LOST, 12), 1: (PEER_LOST, 11)}, PEER_LOST, "the ranks lost their connection to each other"),
        ({0: (1, 12), 1: (1, 11)}, 1, "rank 1 failed"),  # the first to fail
        ({0: (130, 11), 1: (130, 11)}, 130, None),  # stopped by SIGINT: rank 0 said where the checkpoint is
        ({0: (2, 11), 1: (-signal.SIGTERM, 11)}, 2, None),  # a user error: the rank printed it
    ],
)
def test_a_failed_run_is_reported_in_one_line_naming_the_rank_that_failed(capsys, exits, status, line):
    failures = {rank: failure(*exit) for rank, exit in exits.items()}
    assert report_failure(failures) == status
    printed = capsys.readouterr().err
    if line is None:
        assert printed == ""
    else:
        assert printed.startswith(f"error: {line}") and printed.count("\n") == 1, printed
        assert printed.rstrip().endswith("the other ranks were stopped")


def test_only_a_collective_that_lost_its_peer_is_told_in_one_line(tmp_path):
    import torch.distributed as dist

    from jfb_inverse.training.distributed import lost_a_peer

    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:54145. "
        "This is typically caused by a remote worker crashing."
    )
    assert lost_a_peer(gloo) is None  # not in a process group: no peer to lose
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert lost_a_peer(gloo) == "Connection closed by peer [127.0.0.1]:54145"
        assert lost_a_peer(dist.DistBackendError("NCCL error: remote process exited or there was a network error"))
        # This rank's own failures keep their traceback, a DistError too (NCCL's out of memory).
        own = dist.DistBackendError("NCCL error: unhandled cuda error, Cuda failure 'out of memory'")
        assert lost_a_peer(own) is None
        assert lost_a_peer(RuntimeError("simulated failure on rank 1")) is None
        assert lost_a_peer(ValueError("Connection closed by peer")) is None  # not a collective's error
    finally:
        dist.destroy_process_group()
