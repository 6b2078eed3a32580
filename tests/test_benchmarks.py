"""Smoke tests of the benchmark scripts: they run at tiny sizes and return their documented keys.

No timing assertions: benchmarks measure, tests check behaviour.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.skipif(not (BENCH / "run_all.py").is_file(), reason="benchmarks/ not in this checkout")


@pytest.fixture(scope="module", autouse=True)
def _bench_path():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_step_counts_and_keys(tmp_path, _one_thread):
    import training_step

    payload = training_step.run("cpu", quick=True, out=tmp_path, repeats=1, depth=3, plot=False)
    assert set(training_step.KEYS) <= payload.keys()
    c = payload["contenders"]
    assert set(c) == {"forward", "jfb", "jfbk5", "implicit_picard", "implicit_anderson", "unrolled"}
    # The same forward solve of exactly K iterations; JFB adds one tracked application, JFB-5 five.
    assert c["forward"]["counts"]["T_applications"] == 3
    assert c["jfb"]["counts"]["T_applications"] == 4
    assert c["jfbk5"]["counts"]["T_applications"] == 8
    assert c["unrolled"]["counts"]["T_applications"] == 3
    assert c["implicit_anderson"]["counts"]["vjps"] >= 1 and c["jfb"]["counts"]["vjps"] == 0
    # Memory witness: unrolling saves K layers, JFB one.
    assert c["unrolled"]["counts"]["saved_tensor_bytes"] > 2 * c["jfb"]["counts"]["saved_tensor_bytes"]
    assert c["jfb"]["ratio_to_jfb"] == 1.0
    assert (tmp_path / "training_step_deblur.json").is_file()


def test_training_step_runs_the_precision_asked_for(tmp_path, _one_thread):
    import training_step

    payload = training_step.run("cpu", quick=True, out=tmp_path, repeats=1, depth=2, plot=False, precision="bf16")
    assert payload["setup"]["precision"] == "bf16 (regulariser in training mode: bf16)"
    # The regulariser really ran in bf16: autograd saved half-size activations for JFB's one tracked T.
    fp32 = training_step.run("cpu", quick=True, out=tmp_path, repeats=1, depth=2, plot=False, precision="fp32")
    saved = [p["contenders"]["jfb"]["counts"]["saved_tensor_bytes"] for p in (payload, fp32)]
    assert saved[0] < saved[1]


def test_memory_point_in_process(_one_thread):
    import memory

    point = memory.measure_point("unrolled", 3, "deblur", torch.device("cpu"), 32, 2, None)
    assert {"strategy", "K", "peak_mib", "saved_tensor_mib", "method"} <= point.keys()
    assert point["saved_tensor_mib"] > 0


def test_solver_convergence_keys(tmp_path, _one_thread):
    import solver_convergence

    payload = solver_convergence.run("cpu", quick=True, out=tmp_path, repeats=1, plot=False)
    assert set(solver_convergence.KEYS) <= payload.keys()
    assert set(payload["solvers"]) == {"picard", "anderson"}
    assert set(payload["solvers"]["picard"]["iterations_to"]) == {"0.001", "0.0001"}


def test_vs_deepinv_outputs_identical(tmp_path, _one_thread):
    import vs_deepinv

    payload = vs_deepinv.run("cpu", quick=True, out=tmp_path, repeats=1, depth=3, plot=False)
    assert set(vs_deepinv.KEYS) <= payload.keys()
    assert payload["check"]["identical_to_float_tolerance"], payload["check"]
    assert payload["ratios"]["training_step_ours_over_deepinv"] > 0


def test_time_to_quality_keys(tmp_path, _one_thread):
    import time_to_quality

    payload = time_to_quality.run("cpu", quick=True, out=tmp_path, budget_s=0.5, eval_every=100, plot=False)
    assert set(time_to_quality.KEYS) <= payload.keys()
    assert set(payload["curves"]) == {"jfb", "implicit"}
    for curve in payload["curves"].values():
        assert curve[0]["step"] == 0 and len(curve) >= 2


def test_time_to_goal_races_to_implicit_diffs_best_and_says_when_there_is_no_race():
    import time_to_quality

    def curve(*points):
        return [{"seconds": t, "psnr": p} for t, p in points]

    curves = {
        "jfb": curve((0.0, 25.0), (10.0, 26.5), (20.0, 27.0)),
        "implicit": curve((0.0, 25.0), (30.0, 25.9), (60.0, 26.2)),
    }
    assert time_to_quality.time_to_goal(curves) == {"goal_psnr": 26.1, "jfb": 10.0, "implicit": 60.0}
    curves["implicit"] = curve((0.0, 25.0), (30.0, 25.05))  # a too-short budget: the start meets the goal
    flat = time_to_quality.time_to_goal(curves)
    assert flat["jfb"] is None and flat["implicit"] is None and "no goal" in flat["note"]


def test_hot_path_layer_parts_compare_equal_layers(_one_thread):
    import profile_hot_path

    device = torch.device("cpu")
    for part in (profile_hot_path.first_layer(device, quick=True), profile_hot_path.last_layer(device, quick=True)):
        for row in part["layer"]:
            assert row["max_abs_diff"] < 1e-5 and row["no_grad_speedup"] > 0, row
    solve = profile_hot_path.first_layer(device, quick=True)["inference_solve"]
    assert set(solve["median_s"]) == {"plain_layers", "package"}


def test_headline_table_from_results(tmp_path, _one_thread):
    import run_all
    import training_step

    step = training_step.run("cpu", quick=True, out=tmp_path, repeats=1, depth=2, plot=False)
    rows = run_all.headline_table({"step:deblur": step})
    assert any("JFB step / forward solve" in r["measurement"] for r in rows)
    summary = {"machine": step["machine"] | {"loadavg_end": None}, "options": {"quick": True}}
    assert run_all.markdown_table(rows, summary).count("\n") >= 3


def test_operator_counter_counts_outermost_calls():
    import benchlib
    import deepinv as dinv

    physics = dinv.physics.BlurFFT(img_size=(1, 16, 16), filter=torch.ones(1, 1, 3, 3) / 9)
    counter = benchlib.OperatorCounter(physics)
    x = torch.rand(1, 1, 16, 16)
    physics.A_adjoint(physics.A(x))
    physics.A_adjoint_A(x)
    counter.restore()
    assert counter.counts == {"A": 1, "A_adjoint": 1, "A_adjoint_A": 1}
    physics.A(x)  # restored: no longer counted
    assert counter.counts["A"] == 1


def test_solvers_run_under_inference_mode():
    # Anderson writes into its buffers in place: it must work with inference tensors too.
    from jfb_inverse.implicit import Anderson, Picard

    f = lambda u: 0.5 * u + 1.0  # noqa: E731
    with torch.inference_mode():
        for solver in (Anderson(tol=1e-6, max_iter=50), Picard(tol=1e-6, max_iter=100)):
            u, stats = solver.solve(f, torch.zeros(2, 3))
            assert stats.all_converged and torch.allclose(u, torch.full((2, 3), 2.0), atol=1e-5)


def test_tune_malloc_is_safe_to_call():
    from jfb_inverse import runtime

    assert isinstance(runtime.tune_malloc(), bool)
    assert isinstance(runtime.release_memory(), bool)


def test_solver_kernels_counts_the_bookkeeping(tmp_path, _one_thread):
    import solver_kernels

    payload = solver_kernels.run("cpu", quick=True, out=tmp_path, repeats=1)
    assert set(solver_kernels.KEYS) <= payload.keys()
    rows = payload["solvers"]
    assert set(rows) == {f"{s}_{t}" for s in ("picard", "picard_sample", "anderson") for t in ("lagged", "sync")}
    # Deterministic counts, not times: a Picard iteration's residual, best iterate, trace and stop
    # test take about 23 operators here (48 before the tenth session's change); per-sample
    # stopping adds its masks, Anderson its Gram row and small solve.
    picard = rows["picard_lagged"]["ops_per_iteration"]
    assert 5 < picard <= 30
    assert rows["picard_sample_lagged"]["ops_per_iteration"] > picard
    assert rows["anderson_lagged"]["ops_per_iteration"] > picard


def test_benchmark_command_refuses_unknown_problems_and_missing_checkpoints(tmp_path):
    # Named by the user, so refused in one line: a typo must not run nothing (or the untrained
    # network instead of the checkpoint) and exit 0.
    from jfb_inverse.cli.app import app
    from typer.testing import CliRunner

    runner = CliRunner()
    out = str(tmp_path / "bench")
    result = runner.invoke(app, ["benchmark", "--quick", "--only", "step", "--problems", "foo", "--out", out])
    assert result.exit_code == 2 and "unknown problem(s) foo for --problems" in result.output
    result = runner.invoke(app, ["benchmark", "--quick", "--only", "solver", "--checkpoint", "nope.pt", "--out", out])
    assert result.exit_code == 2 and "checkpoint 'nope.pt' not found" in result.output
    # A problem that needs more than its name (custom: an operator file), and a checkpoint of
    # another problem, are refused before anything runs or is written.
    result = runner.invoke(app, ["benchmark", "--quick", "--only", "step", "--problems", "custom", "--out", out])
    assert result.exit_code == 2 and "problem 'custom' cannot be benchmarked by name alone" in result.output
    assert "Traceback" not in result.output
    wrong_problem = ["--problems", "deblur", "--checkpoint", "builtin:ct"]
    result = runner.invoke(app, ["benchmark", "--quick", "--only", "step", *wrong_problem, "--out", out])
    assert result.exit_code == 2 and "is for 'ct'; the benchmarks need a deblur model" in result.output
    assert not (tmp_path / "bench").exists()
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["benchmark", "--quick", "--only", "step", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file; give a folder" in result.output


def test_benchmark_command_writes_to_the_current_folder_not_the_checkouts_saved_results(tmp_path, monkeypatch):
    # Its default was benchmarks/results: run in the repository, a quick run replaced the saved results.
    import run_all
    from jfb_inverse.cli.app import app
    from typer.testing import CliRunner

    seen = {}

    def fake_run_all(out, **kwargs):
        seen["out"] = out
        return {"errors": []}

    monkeypatch.setattr(run_all, "run_all", fake_run_all)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["benchmark", "--quick", "--only", "solver"])
    assert result.exit_code == 0, result.output
    assert seen["out"] == Path("benchmark-results") and "results in benchmark-results/" in result.output


def test_benchmark_command_refuses_selections_that_run_nothing_before_writing(tmp_path, monkeypatch):
    from jfb_inverse.cli.app import app
    from typer.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "bench"
    cases = [
        (["--only", ","], "--only names no benchmark"),  # used to run the whole set (30-40 minutes)
        (["--problems", ","], "--problems names no problem"),
        (["--only", "solver", "--problems", "ct"], "nothing to run (the solver benchmark runs on deblur only"),
        (["--only", "memory", "--problems", "ct"], "nothing to run (--quick runs the memory benchmark on deblur"),
        (["--only", "deepinv", "--budget", "10"], "--budget is the quality benchmark's"),
        (["--only", "malloc", "--checkpoint", "builtin:deblur"], "--checkpoint is the deblur model of the step"),
        (["--only", "step", "--problems", "ct", "--checkpoint", "builtin:deblur"], "--checkpoint is the deblur model"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["benchmark", "--quick", *args, "--out", str(out)])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not out.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["benchmark", "--quick", "--device", "cuda", "--out", str(out)])
    assert result.exit_code == 2 and result.output.strip().endswith("use --device cpu")  # not "or auto"


def test_an_unwritable_out_is_refused_before_measuring(tmp_path, monkeypatch):
    import malloc_env
    import run_all
    import solver_kernels

    from jfb_inverse.errors import UserError

    ran = []
    monkeypatch.setattr(malloc_env, "run", lambda *a, **k: ran.append("malloc"))
    blocked = tmp_path / "afile" / "results"  # under a file: cannot be created
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="a file, not a folder; give a folder"):
        run_all.run_all(out=blocked, quick=True, only=["malloc"], malloc_tuning=False)
    assert ran == []
    # The scripts run on their own check it too, before measuring.
    monkeypatch.setattr(solver_kernels, "run", lambda *a, **k: ran.append("kernels"))
    monkeypatch.setattr(sys, "argv", ["solver_kernels.py", "--quick", "--out", str(tmp_path / "afile")])
    with pytest.raises(UserError, match="is a file; give a folder"):
        solver_kernels.main()
    assert ran == []


def test_the_cli_offers_every_benchmark_run_all_has():
    import run_all
    from jfb_inverse.cli import benchmark

    assert benchmark.ITEMS == run_all.ITEMS


def test_summarize_reads_the_files_run_all_writes_and_escapes_table_pipes(tmp_path, _one_thread):
    import json

    import run_all
    import training_step

    step = training_step.run("cpu", quick=True, out=tmp_path, repeats=1, depth=2, plot=False)
    # A kept copy of another run (another machine) must not replace the run's own file.
    other = json.loads((tmp_path / "training_step_deblur.json").read_text())
    other["ratios"]["jfb_over_implicit_picard"] = 123.0
    (tmp_path / "training_step_deblur_s20_zen4.json").write_text(json.dumps(other))
    summary = run_all.summarize(tmp_path)
    row = next(r for r in summary["table"] if "ImplicitDiff step (Picard" in r["measurement"])
    assert row["value"] == step["ratios"]["jfb_over_implicit_picard"] != 123.0
    table = run_all.markdown_table(
        [{"measurement": "max |x|", "value": 1, "target": "", "met": None}],
        summary | {"skipped": {"solver": "deblur only"}},
    )
    assert "| max \\|x\\| | 1 |  |" in table and table.endswith("- skipped solver: deblur only")


def test_per_sample_stop_benchmark_keys(tmp_path, _one_thread, monkeypatch):
    import json

    import per_sample_stop

    monkeypatch.setattr(sys, "argv", ["per_sample_stop.py", "--quick", "--out", str(tmp_path)])
    per_sample_stop.main()
    payload = json.loads((tmp_path / "per_sample_stop_deblur.json").read_text())
    assert set(per_sample_stop.KEYS) <= set(payload)
    for mode in payload["modes"].values():
        # Each sample's iterates are the same under both rules; the whole-batch stop runs every
        # sample until the slowest converges, so it never does less work.
        assert mode["mean_iterations_per_sample"]["sample"] <= mode["mean_iterations_per_sample"]["batch"]


def test_tuning_one_baseline_keeps_the_others_search_in_the_file(tmp_path, monkeypatch):
    import json
    import types

    import tune_baselines

    calls = []

    def fake_tune(method, images, make, grid):
        calls.append(grid)
        return types.SimpleNamespace(best={"lam": 1.0}, best_psnr=1.0, table=[({"lam": 1.0}, 1.0)])

    monkeypatch.setattr(tune_baselines.B, "tune", fake_tune)
    out = tmp_path / "tune.json"
    out.write_text(json.dumps({"methods": {"wiener": {"best": {"nsr": 0.01}}, "tv": {"best": "old"}}}))
    monkeypatch.setattr(sys, "argv", ["tune_baselines.py", "--only", "tv", "--tv-iters", "7,9", "--out", str(out)])
    tune_baselines.main()
    methods = json.loads(out.read_text())["methods"]
    assert methods["wiener"] == {"best": {"nsr": 0.01}} and methods["tv"]["best"] == {"lam": 1.0}
    assert [grid["n_iter"] for grid in calls] == [[7, 9]]


def test_tuning_another_problems_baselines_searches_its_own_methods(tmp_path, monkeypatch):
    import json
    import types

    import tune_baselines

    tuned = []

    def fake_tune(method, images, make, grid):
        tuned.append(method.__name__)
        y, _ = make(images[:1])
        assert y.shape == (1, 2, *images.shape[-2:])  # MRI's k-space: the problem's own measurements
        return types.SimpleNamespace(best={"lam": 1.0}, best_psnr=1.0, table=[({"lam": 1.0}, 1.0)])

    monkeypatch.setattr(tune_baselines.B, "tune", fake_tune)
    out = tmp_path / "tune.json"
    monkeypatch.setattr(sys, "argv", ["tune_baselines.py", "--problem", "mri", "--size", "16", "--out", str(out)])
    tune_baselines.main()
    assert tuned == ["tikhonov", "tv_reconstruction"]
    assert json.loads(out.read_text())["problem"] == "mri"
    monkeypatch.setattr(sys, "argv", ["tune_baselines.py", "--problem", "mri", "--only", "wiener"])
    with pytest.raises(SystemExit):
        tune_baselines.main()  # Wiener is deblurring's; argparse's one-line error, exit 2
