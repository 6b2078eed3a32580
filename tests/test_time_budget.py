"""Training for a time budget (``training.minutes``): the step count is fitted to the measured speed,
so the learning-rate schedule ends with the budget; resumable; refused once used up."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch
from jfb_inverse.cli.app import app
from typer.testing import CliRunner

import jfb_inverse.problems.registry as registry
import jfb_inverse.training.loop as loop
from jfb_inverse.problems import resolve_config
from jfb_inverse.training.budget import FIT_AT, StepPlan
from jfb_inverse.training.checkpoint import load_checkpoint
from jfb_inverse.training.loop import train

TINY = {
    "data": {"patch_size": 32},
    "model": {"width": 8, "depth": 3},
    "training": {"steps": 1000, "batch_size": 2, "log_every": 5, "checkpoint_every": 1000, "batch_reuse": 1},
}


def test_a_constant_speed_fits_the_budget_exactly():
    plan = StepPlan(cap=1000, seconds=100.0)
    for step in range(1, 200):
        plan.update(step, elapsed=2.0 * step)  # 2 s a step: 50 fit
        if step >= plan.planned:
            break
    assert plan.planned == 50 and step == 50
    assert plan.fits_done == len(FIT_AT)


def test_the_plan_follows_a_change_of_speed_and_keeps_to_the_cap():
    plan = StepPlan(cap=1000, seconds=100.0)
    plan.update(5, 5.0)  # 1 s a step at the 5% point: 100 steps
    assert plan.planned == 100
    # From step 5 on each step takes 3 s: at the 25% point (25 s, step 11) 75 s remain, 25 more steps.
    plan.update(11, 23.0)
    assert plan.planned == 100  # 23 s: not yet at 25 s, no refit
    plan.update(12, 26.0)
    assert plan.planned == 12 + int(74.0 / 3.0)
    capped = StepPlan(cap=30, seconds=100.0)
    capped.update(5, 5.0)
    assert capped.planned == 30
    assert StepPlan(cap=30).planned == 30 and StepPlan(cap=30, seconds=None).fits_done == 0


def test_a_slow_first_step_does_not_end_a_short_budget_early():
    # A first step of 3 s (kernel set-up, a cold solve; CUDA's start-up on a GPU), then 0.1 s a step, in a
    # 20 s budget. Fitted from the first step's speed the plan was 6 steps, and the run ended at
    # 3.5 s: every later fit point lay beyond it.
    plan = StepPlan(cap=10**6, seconds=20.0)
    elapsed, step = 3.0, 1
    plan.update(step, elapsed)
    while step < plan.planned:
        step, elapsed = step + 1, elapsed + 0.1
        plan.update(step, elapsed)
    assert step == plan.planned and elapsed == pytest.approx(20.0, abs=0.15)  # one step's rounding


def test_a_state_dict_round_trip_and_a_new_budget_refit():
    plan = StepPlan(cap=1000, seconds=100.0)
    plan.update(10, 10.0)
    copy = StepPlan(cap=1000, seconds=100.0)
    copy.load_state_dict(plan.state_dict())
    assert copy == plan
    copy.rebudget(100.0, 1000, 10, 10.0)  # the same budget: nothing changes
    assert copy == plan
    copy.rebudget(200.0, 1000, 10, 10.0)  # --minutes doubled on resume: planned again at once
    assert copy.planned == 10 + int(190.0 / 1.0)
    copy.rebudget(None, 500, 10, 10.0)  # no budget: the cap
    assert copy.planned == 500 and not copy.fitted
    early = StepPlan(cap=10**6)
    early.rebudget(1000.0, 10**6, 10, 10.0)  # 1% into the new budget: planned from the average speed
    assert early.planned == 1000 and early.fitted


class _StepClock:
    """The loop's clock, advanced one second per training step by ``on_step``."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def tick(self, step: int) -> None:
        self.now += 1.0


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_a_run_with_a_budget_ends_with_its_schedule(tmp_path, monkeypatch):
    clock = _StepClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    # Muon: both parameter groups' schedules follow the plan.
    budget = {**TINY["training"], "minutes": 0.5, "optimizer": "muon"}
    cfg = resolve_config("deblur", overrides={**TINY, "training": budget})
    result = train(cfg, tmp_path / "run", on_step=clock.tick)
    assert result.steps == result.planned_steps == 30  # 30 s at 1 s a step, of a cap of 1000
    last = _records(tmp_path / "run")[-1]
    assert last["step"] == 30 and last["planned_steps"] == 30
    # The cosine schedule ran to its end: 5% of the peak learning rate.
    assert last["lr"] == pytest.approx(0.05 * cfg.training.lr)
    assert last["muon_lr"] == pytest.approx(0.05 * cfg.training.muon_lr)
    payload = load_checkpoint(tmp_path / "run" / "model.pt")[0]
    assert payload["step"] == 30 and payload["step_plan"]["planned"] == 30
    # Used up: a resume is refused in one line before anything is written.
    used_up = (
        r"has done the 30 steps its 0\.5-minute budget planned \(in 0\.50 minutes\); to train it further, "
        r"give --minutes 0\.52 or more"  # one more step at 1 s a step: 31 s, rounded up
    )
    with pytest.raises(loop.UserError, match=used_up):
        train(cfg, tmp_path / "run", resume=True, on_step=clock.tick)
    # A larger budget without room for one more step names the least that has (it named 0.51 here).
    short = resolve_config("deblur", overrides={**TINY, "training": {**budget, "minutes": 0.51}})
    with pytest.raises(loop.UserError, match=r"which leaves no step in a 0\.51-minute budget.*--minutes 0\.52 or more"):
        train(short, tmp_path / "run", resume=True, on_step=clock.tick)
    # A larger budget continues it: 30 more seconds, 30 more steps, the schedule ending again.
    longer = resolve_config("deblur", overrides={**TINY, "training": {**budget, "minutes": 1.0}})
    more = train(longer, tmp_path / "run", resume=True, on_step=clock.tick)
    assert more.steps == more.planned_steps == 60
    last = _records(tmp_path / "run")[-1]
    assert (last["lr"], last["muon_lr"]) == pytest.approx((0.05 * cfg.training.lr, 0.05 * cfg.training.muon_lr))


def test_a_budgeted_run_resumed_after_a_hard_stop_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    clock = _StepClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    overrides = {**TINY, "training": {**TINY["training"], "minutes": 0.4}}
    full = train(resolve_config("deblur", overrides=overrides), tmp_path / "full", on_step=clock.tick)
    clock.now = 0.0
    stopped = {**overrides, "training": {**overrides["training"], "max_minutes": 0.2}}
    part = train(resolve_config("deblur", overrides=stopped), tmp_path / "part", on_step=clock.tick)
    assert part.steps < part.planned_steps == full.planned_steps == 24
    resumed = train(resolve_config("deblur", overrides=overrides), tmp_path / "part", resume=True, on_step=clock.tick)
    assert resumed.steps == full.steps == 24
    a = load_checkpoint(tmp_path / "full" / "model.pt")[0]["state_dict"]
    b = load_checkpoint(tmp_path / "part" / "model.pt")[0]["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_minutes_from_the_cli(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      "[training]\nbatch_size = 2\nlog_every = 2\n")  # fmt: skip
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--problem", "deblur", "--config", str(config), "--minutes", "0.03",
                                      "--out", str(run), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "about 0.03 minutes (steps fitted to this machine's speed, at most 1000000)" in text
    assert "stopped by --max-minutes" not in text
    records = _records(run)
    assert records[-1]["planned_steps"] == records[-1]["step"] >= 1
    payload, cfg = load_checkpoint(run / "model.pt")
    assert cfg.training.minutes == 0.03 and cfg.training.steps == 1_000_000
    assert payload["step"] == records[-1]["step"] and payload["batch_pool"] is None  # finished, not resumable
    again = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert again.exit_code == 2 and "steps its 0.03-minute budget planned" in " ".join(again.output.split())
    # A run planned by its budget alone keeps it when --resume gives --steps: they are only a cap
    # (the budget's last seconds, if any are left, may train a step or two more).
    cap = payload["step"] + 50
    capped = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--steps", str(cap)])
    if capped.exit_code == 0:
        assert load_checkpoint(run / "model.pt")[1].training.minutes == 0.03
    else:
        assert capped.exit_code == 2 and "steps its 0.03-minute budget planned" in " ".join(capped.output.split())
    assert _records(run)[-1]["step"] < cap  # lifted, the budget would have let it train to the cap


def test_a_checkpoint_from_before_budgets_is_planned_on_resume(tmp_path, monkeypatch):
    clock = _StepClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    stopped = {**TINY, "training": {**TINY["training"], "max_minutes": 0.1}}
    first = train(resolve_config("deblur", overrides=stopped), tmp_path / "run", on_step=clock.tick)
    assert first.steps == 7  # 7 s > 6 s
    path = tmp_path / "run" / "model.pt"
    payload = torch.load(path, weights_only=True)
    del payload["step_plan"]  # as written before training.minutes existed
    torch.save(payload, path)
    short = {**TINY, "training": {**TINY["training"], "minutes": 0.05}}  # 3 s: already used
    with pytest.raises(loop.UserError, match="budget"):
        train(resolve_config("deblur", overrides=short), tmp_path / "run", resume=True, on_step=clock.tick)
    budget = {**TINY, "training": {**TINY["training"], "minutes": 0.5}}  # 30 s: 23 more steps
    more = train(resolve_config("deblur", overrides=budget), tmp_path / "run", resume=True, on_step=clock.tick)
    assert more.steps == more.planned_steps == 30


@pytest.mark.parametrize(
    ("file_training", "option", "cap"),
    [("minutes = 0.02\n", [], 1_000_000), ("steps = 200\n", ["--minutes", "0.02"], 200)],
    ids=["budget-in-file", "steps-in-file"],
)
def test_the_cap_of_a_budget_from_the_cli(tmp_path, file_training, option, cap):
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      f"[training]\nbatch_size = 2\nlog_every = 2\n{file_training}")  # fmt: skip
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--problem", "deblur", "--config", str(config), *option,
                                      "--out", str(run), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    wanted = (
        "about 0.02 minutes (steps fitted to this machine's speed, at most 1000000)"
        if cap == 1_000_000
        else f"{cap} steps, or as many as fit 0.02 minutes on this machine if fewer"
    )
    assert wanted in " ".join(result.output.split())
    assert load_checkpoint(run / "model.pt")[1].training.steps == cap


def test_a_budgeted_run_stopped_before_its_first_fit_reports_no_plan(tmp_path, monkeypatch):
    clock = _StepClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    overrides = {**TINY, "training": {**TINY["training"], "minutes": 1.0, "max_minutes": 0.02}}
    result = train(resolve_config("deblur", overrides=overrides), tmp_path / "run", on_step=clock.tick)
    assert result.steps == 2 and result.planned_steps is None  # 2 s > 1.2 s; the first fit is at 3 s
    assert "planned_steps" not in _records(tmp_path / "run")[-1]  # the cap is no plan


def test_a_problems_own_budget_guards_only_its_own_step_count():
    # deblur's defaults: 4,300 steps, or as many as fit 9 minutes where they would take longer.
    default = resolve_config("deblur").training
    assert (default.steps, default.minutes) == (4300, 9.0)
    assert resolve_config("deblur", overrides={"training": {"seed": 1}}).training.minutes == 9.0
    # Asking for a step count asks for exactly those steps: from an option, a preset or a file.
    assert resolve_config("deblur", overrides={"training": {"steps": 4300}}).training.minutes is None
    assert resolve_config("deblur", preset="full").training.minutes is None
    assert resolve_config("deblur", config={"training": {"steps": 50}}).training.minutes is None
    # A budget given with the steps stays: then the steps are its cap.
    both = resolve_config("deblur", config={"training": {"steps": 50}}, overrides={"training": {"minutes": 2.0}})
    assert (both.training.steps, both.training.minutes) == (50, 2.0)
    # An explicit null in a (JSON) file switches the guard off and keeps the step count.
    off = resolve_config("deblur", config={"training": {"minutes": None}}).training
    assert (off.steps, off.minutes) == (4300, None)
    # A budget given without steps decides the length: the problem's 4,300 would cut it short.
    assert resolve_config("deblur", overrides={"training": {"minutes": 4.0}}).training.steps == 1_000_000
    # Problems without a budget of their own are unchanged.
    assert resolve_config("ct").training.minutes is None


def test_budgets_from_a_problems_defaults_or_presets_follow_the_same_rules(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test problem goes with the test
    registry.register_problem(
        "budget-test",
        "a problem whose defaults are a budget, with a guarded preset",
        {**TINY, "operator": {"kind": "blur"}, "training": {"minutes": 20.0}},
        presets={"guarded": {"training": {"steps": 50, "minutes": 3.0}}, "timed": {"training": {"minutes": 2.0}}},
    )

    def budget(**kw):
        t = resolve_config("budget-test", **kw).training
        return t.steps, t.minutes

    assert budget() == (1_000_000, 20.0)  # a budget alone decides the length
    assert budget(overrides={"training": {"steps": 30}}) == (30, None)  # asked-for steps lift it
    assert budget(preset="guarded") == (50, 3.0)
    assert budget(preset="guarded", overrides={"training": {"steps": 7}}) == (7, None)
    assert budget(preset="timed") == (1_000_000, 2.0)
    assert budget(preset="timed", overrides={"training": {"steps": 9}}) == (9, None)


def test_a_budget_that_does_not_bind_leaves_the_run_bitwise_unchanged(tmp_path, monkeypatch):
    clock = _StepClock()
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    steps = {**TINY["training"], "steps": 12}
    plain_cfg = resolve_config("deblur", overrides={**TINY, "training": steps})
    plain = train(plain_cfg, tmp_path / "plain", on_step=clock.tick)
    clock.now = 0.0
    # 15 s at 1 s a step: the plan is refitted at 1, 4, 8 and 12 s and stays at the 12 steps.
    guarded_cfg = resolve_config("deblur", overrides={**TINY, "training": {**steps, "minutes": 0.25}})
    guarded = train(guarded_cfg, tmp_path / "guarded", on_step=clock.tick)
    assert plain.steps == guarded.steps == guarded.planned_steps == 12
    assert load_checkpoint(tmp_path / "guarded" / "model.pt")[0]["step_plan"]["fits_done"] >= 4
    a = load_checkpoint(tmp_path / "plain" / "model.pt")[0]["state_dict"]
    b = load_checkpoint(tmp_path / "guarded" / "model.pt")[0]["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lrs = [[r["lr"] for r in _records(tmp_path / run)] for run in ("plain", "guarded")]
    assert lrs[0] == lrs[1]


def test_deblurs_budget_fits_its_steps_to_a_slow_machine_from_the_cli(tmp_path, monkeypatch):
    # A machine on which every reading of the training clock is 5 s later: 4,300 steps would take far
    # more than 9 minutes, so the run fits its steps (and its schedule) to the budget and says so.
    class _SlowClock:
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 5.0
            return self.now

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=_SlowClock().perf_counter))
    config = tmp_path / "run.toml"
    config.write_text("[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n"
                      "[training]\nbatch_size = 2\nlog_every = 2\n")  # fmt: skip
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--problem", "deblur", "--config", str(config),
                                      "--out", str(run), "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "4300 steps, or as many as fit 9 minutes on this machine if fewer" in text
    records = _records(run)
    done = records[-1]["step"]
    assert 1 <= done == records[-1]["planned_steps"] < 4300
    assert records[-1]["lr"] == pytest.approx(0.05 * 2e-3)  # the schedule ended with the budget
    assert (
        f"fitted {done} of the 4300 steps to this machine's speed; a new run with --steps 4300 "
        "(another --out, or --overwrite) trains them all"
    ) in text
    cfg = load_checkpoint(run / "model.pt")[1]
    assert (cfg.training.steps, cfg.training.minutes) == (4300, 9.0)
    again = CliRunner().invoke(app, ["train", "--resume", "--out", str(run)])
    assert again.exit_code == 2
    message = " ".join(again.output.split())
    assert f"has done the {done} steps its 9-minute budget planned" in message
    used = float(message.split("planned (in ")[1].split()[0])
    least = float(message.split("give --minutes ")[1].split(" ")[0])
    assert least > used  # room for one more step at the run's speed (the time used alone left none)
    assert f"or more (or --steps above {done}: exactly that many steps)" in message
    # ... and that value is enough: the budget it names plans at least one more step.
    longer = run.parent / "longer"
    shutil.copytree(run, longer)
    further = CliRunner().invoke(app, ["train", "--resume", "--out", str(longer), "--minutes", str(least)])
    assert further.exit_code == 0, further.output
    assert _records(longer)[-1]["step"] > done

    # --steps on --resume asks for exactly those steps too: the guard gives way.
    resumed = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--steps", str(done + 3)])
    assert resumed.exit_code == 0, resumed.output
    assert _records(run)[-1]["step"] == done + 3
    cfg = load_checkpoint(run / "model.pt")[1]
    assert (cfg.training.steps, cfg.training.minutes) == (done + 3, None)


def test_the_not_converged_share_after_a_resume_counts_the_steps_its_records_cover(tmp_path, monkeypatch):
    """A run stopped by a signal between two records resumes with its log window: the first record
    after the resume covers steps of both invocations, and the share must count them all (it read 125%)."""
    import os
    import signal

    real_mse, calls = loop.F.mse_loss, {"n": 0}

    def terminated_at_step_7(a, b):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop stops after this step, with a checkpoint
        return real_mse(a, b)

    monkeypatch.setattr(loop.F, "mse_loss", terminated_at_step_7)
    # No solve converges (tol 1e-12 in 2 iterations): every step is a not-converged one.
    (tmp_path / "c.toml").write_text(
        "[data]\npatch_size = 32\neval_size = 32\n[model]\nwidth = 8\ndepth = 3\n[solver]\ntol = 1e-12\nmax_iter = 2\n"
        "[training]\nbatch_size = 2\nlog_every = 5\ncheckpoint_every = 100\nbatch_reuse = 1\n"
    )
    run = str(tmp_path / "run")
    first = CliRunner().invoke(app, ["train", "--problem", "deblur", "--config", str(tmp_path / "c.toml"),
                                     "--device", "cpu", "--out", run, "--steps", "12"])  # fmt: skip
    assert first.exit_code == 128 + signal.SIGTERM, first.output
    assert load_checkpoint(tmp_path / "run" / "model.pt")[0]["step"] == 7  # between the records of steps 5 and 10
    second = CliRunner().invoke(app, ["train", "--resume", "--out", run])
    assert second.exit_code == 0, second.output
    text = " ".join(second.output.split())
    # The records after the resume cover steps 6-12 (7 steps), 5 of them trained by this invocation.
    assert "7 of the 7 training steps of this run (100%) hit max_iter" in text, text
