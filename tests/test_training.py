"""Training loop: exact resume, NaN guard, determinism, checkpoints."""

from __future__ import annotations

import json
import types

import pytest
import torch

import jfb_inverse.training.loop as loop
from jfb_inverse.problems import resolve_config, simulate
from jfb_inverse.training.checkpoint import load_checkpoint
from jfb_inverse.training.loop import TrainingDivergedError, train
from jfb_inverse.training.optim import MuonWithAdam

TINY = {
    "data": {"patch_size": 32},
    "model": {"width": 8, "depth": 3},
    # A fresh batch every step (the deblur default reuses them; tests/test_batch_reuse.py covers that).
    "training": {"steps": 12, "batch_size": 2, "log_every": 3, "checkpoint_every": 4, "batch_reuse": 1},
}


class CrashError(Exception):
    pass


def weights(path):
    return load_checkpoint(path)[0]["state_dict"]


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_resume_after_a_crash_gives_bitwise_the_same_weights(tmp_path, optimizer):
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "optimizer": optimizer}})
    train(cfg, tmp_path / "full")

    def crash_at_step_10(step: int) -> None:
        if step == 9:
            raise CrashError

    with pytest.raises(CrashError):
        train(cfg, tmp_path / "part", on_step=crash_at_step_10)
    assert load_checkpoint(tmp_path / "part" / "model.pt")[0]["step"] == 8  # at most one interval lost
    train(cfg, tmp_path / "part", resume=True)
    full, part = weights(tmp_path / "full" / "model.pt"), weights(tmp_path / "part" / "model.pt")
    assert all(torch.equal(full[k], part[k]) for k in full)
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / d / "history.jsonl").read_text().splitlines()]
        for d in ("full", "part")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_same_seed_same_result(tmp_path):
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "steps": 4}})
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    a, b = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


# Muon's two parameter groups (Muon, Adam): the guard halves both learning rates.
MUON = {**TINY, "training": {**TINY["training"], "optimizer": "muon"}}


def test_nan_loss_skips_steps_halves_lr_then_stops_cleanly(tmp_path, monkeypatch):
    cfg = resolve_config("deblur", overrides=MUON)
    real_mse = loop.F.mse_loss
    calls = {"n": 0}

    def poisoned(a, b):
        calls["n"] += 1
        loss = real_mse(a, b)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(loop.F, "mse_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"NaN/Inf for 5 steps in a row.*checkpoint of step 8 is intact"):
        train(cfg, tmp_path)
    payload = load_checkpoint(tmp_path / "model.pt")[0]
    # Steps 6-10 were bad (no update); the periodic checkpoint at step 8 holds finite weights and is
    # the last one: nothing was written after the failure.
    assert payload["step"] == 8
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values())
    # Halved at each of the bad steps 6, 7 and 8 before that checkpoint: Muon's group and Adam's.
    t = cfg.training
    assert payload["scheduler"]["base_lrs"] == pytest.approx([t.muon_lr / 8, t.lr / 8])


def test_a_single_nan_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    cfg = resolve_config("deblur", overrides=MUON)
    real_mse = loop.F.mse_loss
    calls = {"n": 0}

    def one_bad(a, b):
        calls["n"] += 1
        loss = real_mse(a, b)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(loop.F, "mse_loss", one_bad)
    result = train(cfg, tmp_path)
    assert result.steps == 12 and result.skipped_steps == 1
    base_lrs = load_checkpoint(tmp_path / "model.pt")[0]["scheduler"]["base_lrs"]
    assert base_lrs == pytest.approx([cfg.training.muon_lr / 2, cfg.training.lr / 2])


def test_contractivity_monitor_logs_lipschitz_and_leaves_training_unchanged(tmp_path):
    base = {**TINY, "training": {**TINY["training"], "steps": 6}}
    plain = resolve_config("deblur", overrides=base)
    monitored = resolve_config("deblur", overrides={**base, "training": {**base["training"], "lipschitz_every": 3}})
    train(plain, tmp_path / "plain")
    train(monitored, tmp_path / "monitored")
    a, b = weights(tmp_path / "plain" / "model.pt"), weights(tmp_path / "monitored" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # monitoring draws no random numbers, takes no step
    records = [json.loads(line) for line in (tmp_path / "monitored" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    # a 6-step network is still about the untrained map, a contraction (tested in test_models)
    assert all(0.0 < r["lipschitz"] < 1.0 for r in records)
    assert all("lipschitz" not in json.loads(line) for line in (tmp_path / "plain" / "history.jsonl").open())


def test_lipschitz_at_fixed_point_sees_an_expansive_map():
    # A gradient step with eta = 5 / ||A||^2 multiplies the blur's top singular direction by 1 - 5 = -4.
    cfg = resolve_config("deblur", overrides={**TINY, "model": {**TINY["model"], "step": "gradient", "eta_init": 5.0}})
    from jfb_inverse.models import build_model

    model, cache = build_model(cfg)
    physics = cache.for_image((1, 32, 32))
    y = physics.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    # DC: blur 1, step 1 - 5 = -4, smoother 1, CNN residual 0 (zero-initialised last layer): exactly 4.
    assert loop.lipschitz_at_fixed_point(model, y, physics, n_iter=30) == pytest.approx(4.0, abs=0.02)


def test_lipschitz_estimate_through_the_ct_radon_transform_matches_the_dense_jacobian():
    # CT's Radon transform is a grid sampler: the estimate's double backward must pass through it
    # (on CUDA only with cuDNN off; tests/test_gpu.py checks that path). Reference: the spectral
    # norm of T's full Jacobian at the fixed point, built column by column by central differences.
    from jfb_inverse.implicit import lipschitz_estimate
    from jfb_inverse.models import build_model

    n = 16
    cfg = resolve_config("ct", overrides={"data": {"patch_size": n, "eval_size": n}})
    torch.manual_seed(0)
    model, cache = build_model(cfg)
    physics = cache.for_image((1, n, n))
    y = physics.A(torch.rand(1, 1, n, n, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        fn, u0 = model.fixed_point_map(y, physics)
        u, _ = model.solver.solve(fn, u0)
        estimate = float(lipschitz_estimate(fn, u, n_iter=100))
        eps = 1e-2
        columns = []
        for i in range(n * n):
            e = torch.zeros(n * n)
            e[i] = eps
            e = e.view(1, 1, n, n)
            columns.append(((fn(u + e) - fn(u - e)) / (2 * eps)).flatten())
        jacobian = torch.stack(columns, 1).double()
    assert estimate == pytest.approx(float(torch.linalg.matrix_norm(jacobian, 2)), rel=0.01)


def test_init_from_starts_at_the_source_weights_with_its_network(tmp_path):
    # builtin:ct's regulariser is a U-Net, CT's default a dilated CNN: the source's network wins
    # unless the definition says otherwise, and the run starts from its weights (lr ~0: stays there).
    fine_tune = {"training": {"steps": 1, "batch_size": 2, "lr": 1e-12, "init_from": "builtin:ct"}}
    cfg = resolve_config("ct", overrides={"data": {"patch_size": 32, "eval_size": 32}, **fine_tune})
    assert cfg.model.arch == "unet" and cfg.model.width == 32
    train(cfg, tmp_path)
    source, _ = load_checkpoint("builtin:ct")
    tuned, saved_cfg = load_checkpoint(tmp_path / "model.pt")
    assert saved_cfg.training.init_from == "builtin:ct"  # the provenance is in the definition
    gaps = [float((tuned["state_dict"][k] - v).abs().max()) for k, v in source["state_dict"].items()]
    assert max(gaps) < 1e-6
    assert float(tuned["state_dict"]["regularizer.net.last.weight"].abs().max()) > 1e-3  # not a fresh zero layer


def test_init_from_with_another_network_fails_before_writing(tmp_path):
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "init_from": "builtin:deblur"}})
    assert cfg.model.width == 8  # the definition's own model settings beat the source's
    with pytest.raises(
        loop.UserError,
        match=r"do not fit this run's network \(Unexpected key\(s\) in state_dict: 4, .*train without init_from",
    ):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_init_from_another_problem_keeps_this_runs_consistency_step(tmp_path):
    # builtin:ct's U-Net inside a deblurring map: only the network's shape and weights come over;
    # the step (HQS prox) and its start are deblurring's, and CT's learned step size is not copied.
    fine_tune = {"training": {"steps": 1, "batch_size": 2, "lr": 1e-12, "init_from": "builtin:ct"}}
    cfg = resolve_config("deblur", overrides={"data": {"patch_size": 32, "eval_size": 32}, **fine_tune})
    assert (cfg.model.arch, cfg.model.step, cfg.model.init) == ("unet", "prox", "tikhonov")
    train(cfg, tmp_path)
    source, _ = load_checkpoint("builtin:ct")
    tuned, _ = load_checkpoint(tmp_path / "model.pt")
    weights = [k for k in source["state_dict"] if k.startswith("regularizer.")]
    assert max(float((tuned["state_dict"][k] - source["state_dict"][k]).abs().max()) for k in weights) < 1e-6
    assert float(tuned["state_dict"]["log_eta"].exp()) == pytest.approx(cfg.model.eta_init, rel=1e-4)


def test_init_from_is_not_loaded_when_the_network_is_given_or_reset():
    # A fine-tuned run's problem.toml spells out its network: re-reading it needs no source file.
    network = {"arch": "dilated", "width": 32, "depth": 5, "spectral_norm": False}
    cfg = resolve_config("deblur", {"model": network, "training": {"init_from": "gone/model.pt"}})
    assert cfg.training.init_from == "gone/model.pt"
    # A later layer's explicit None cancels an earlier layer's source.
    cfg = resolve_config("ct", {"training": {"init_from": "gone/model.pt"}}, {"training": {"init_from": None}})
    assert cfg.training.init_from is None and cfg.model.arch == "dilated"
    with pytest.raises(loop.UserError, match=r"training.init_from: checkpoint 'gone/model.pt' not found"):
        resolve_config("ct", {"training": {"init_from": "gone/model.pt"}})


def test_lipschitz_monitor_measures_the_fp32_map_under_auto_precision(monkeypatch):
    import jfb_inverse.models.precision as precision
    from jfb_inverse.models import build_model

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: True)
    model, cache = build_model(resolve_config("deblur", overrides=TINY))
    physics = cache.for_image((1, 32, 32))
    y = physics.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    model.train()
    auto = loop.lipschitz_at_fixed_point(model, y, physics)
    assert model.training  # restored
    model.precision = "fp32"
    assert auto == loop.lipschitz_at_fixed_point(model, y, physics)


def test_lipschitz_monitor_measures_the_trained_map_not_the_averaged_one():
    from jfb_inverse.implicit import lipschitz_estimate
    from jfb_inverse.models import build_model

    # An anisotropic D (a horizontal difference in the last layer): averaging it over quarter-turns
    # lowers T's Jacobian norm, so the monitor must switch the averaging off to see the trained map.
    cfg = resolve_config("deblur", overrides={"data": {"patch_size": 32}, "model": {"width": 8, "depth": 3}})
    torch.manual_seed(0)
    model, cache = build_model(cfg)
    model.train()
    physics = cache.for_image((1, 32, 32))
    y = physics.A(torch.rand(1, 1, 32, 32))
    last = model.regularizer.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.weight[:, :, 1, 0] = -0.4
        last.weight[:, :, 1, 2] = 0.4
    assert model.equivariance == "rotations"
    default = loop.lipschitz_at_fixed_point(model, y, physics, n_iter=20)
    assert model.equivariance == "rotations" and model.training  # restored
    model.equivariance = "none"
    plain = loop.lipschitz_at_fixed_point(model, y, physics, n_iter=20)
    assert default == pytest.approx(plain, rel=1e-6)
    # ...and the averaged map really is different (smaller), so the check above can fail.
    model.eval()
    model.equivariance = "rotations"
    with torch.no_grad():
        fn, u0 = model.fixed_point_map(y, physics)
        u, _ = model.solver.solve(fn, u0)
    averaged = float(lipschitz_estimate(fn, u, n_iter=20).max())
    assert averaged < plain - 0.05


def test_lipschitz_monitor_measures_the_fp32_map_whatever_the_training_precision():
    # The central difference in the estimate is swamped by bf16 rounding (7.8 instead of 1.04 was
    # seen): the monitor measures the map in fp32 and leaves the model's precision as it was.
    from jfb_inverse.datasets import load_builtin

    from jfb_inverse.training.checkpoint import load_model
    from jfb_inverse.training.loop import lipschitz_at_fixed_point

    model, cfg, cache = load_model("builtin:deblur")
    x = load_builtin("camera", size=64)[None]
    physics = cache.for_image(tuple(x.shape[1:]))
    y = simulate(x, physics, cfg.noise, torch.Generator().manual_seed(0))
    estimates = {}
    for precision in ("fp32", "bf16"):
        model.precision = precision
        estimates[precision] = lipschitz_at_fixed_point(model, y, physics)
        assert model.precision == precision
    assert estimates["bf16"] == pytest.approx(estimates["fp32"], rel=1e-6)
    assert 0.5 < estimates["fp32"] < 2.0


def test_a_run_the_time_budget_stops_logs_its_last_steps(tmp_path, monkeypatch):
    # A budget that runs out after the 5th step, before the first record (log_every 50).
    clock = iter(range(1000))  # each reading of the loop's clock: one more second
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "log_every": 50,
                                                                    "max_minutes": 0.07}})  # fmt: skip
    result = train(cfg, tmp_path / "run")
    assert 1 <= result.steps < 12
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [result.steps]  # the stretch before the stop is not lost
    assert load_checkpoint(tmp_path / "run" / "model.pt")[0]["step"] == result.steps


def test_every_lipschitz_estimate_between_two_records_counts(tmp_path, monkeypatch):
    estimates = iter([1.5, 0.5, 0.7, 0.9])
    monkeypatch.setattr(loop, "lipschitz_at_fixed_point", lambda *args, **kwargs: next(estimates))
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "steps": 4, "log_every": 2,
                                                                    "lipschitz_every": 1}})  # fmt: skip
    train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    # The largest since the previous record: the 1.5 above 1 must reach the log (and the CLI's warning).
    assert [(r["step"], r["lipschitz"]) for r in records] == [(2, 1.5), (4, 0.9)]


def test_resume_of_a_run_saved_on_another_kind_of_device_restarts_the_noise_stream(tmp_path):
    # A CUDA generator's state is 16 bytes, a CPU generator's 5,056: a CUDA run's checkpoint resumed
    # on the CPU (or the reverse) used to fail inside Generator.set_state. Simulated by giving a
    # CPU checkpoint the state of a CUDA-sized generator.
    cfg = resolve_config("deblur", overrides=TINY)

    def crash_at_step_10(step: int) -> None:
        if step == 9:
            raise CrashError

    with pytest.raises(CrashError):
        train(cfg, tmp_path / "part", on_step=crash_at_step_10)
    path = tmp_path / "part" / "model.pt"
    payload = torch.load(path, weights_only=True)
    payload["noise_rng"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(payload, path)
    with pytest.warns(RuntimeWarning, match="noise stream restarts from a seed of the step"):
        result = train(cfg, tmp_path / "part", resume=True)
    assert result.steps == cfg.training.steps
    assert all(torch.isfinite(v).all() for v in weights(path).values())


def test_a_resumed_run_gets_its_own_time_budget(tmp_path, monkeypatch):
    clock = iter(range(100_000))  # each reading of the loop's clock: one more second
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    overrides = {**TINY, "training": {**TINY["training"], "steps": 200, "checkpoint_every": 1000, "max_minutes": 0.1}}
    cfg = resolve_config("deblur", overrides=overrides)
    first = train(cfg, tmp_path / "run").steps
    second = train(cfg, tmp_path / "run", resume=True).steps
    assert 2 <= first < 200
    assert second - first >= first - 1  # not one step per invocation


def test_a_nan_loss_is_caught_in_fp16_too(tmp_path, monkeypatch):
    # fp16's loss scaler skips overflowing gradients itself; a NaN loss is no overflow and must
    # reach the guard (it trained on, every loss NaN, before).
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "precision": "fp16"}})
    real_mse = loop.F.mse_loss
    monkeypatch.setattr(loop.F, "mse_loss", lambda a, b: real_mse(a, b) * float("nan"))
    with pytest.raises(TrainingDivergedError, match="NaN/Inf for 5 steps in a row"):
        train(cfg, tmp_path)
    # With checkpoints every 100 steps it diverges (step 5) before the first: no checkpoint is promised.
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "checkpoint_every": 100}})
    with pytest.raises(TrainingDivergedError, match=r"\(no checkpoint had been written yet\)"):
        train(cfg, tmp_path / "fresh")


def test_the_pending_lipschitz_maximum_survives_a_resume(tmp_path, monkeypatch):
    estimates = [1.5, 0.5, 0.7, 0.9, 0.8, 0.6]
    monkeypatch.setattr(loop, "lipschitz_at_fixed_point", lambda *args, **kwargs: estimates[len(seen)])
    seen: list[int] = []

    def crash_at_step_5(step: int) -> None:
        seen.append(step)
        if step == 4:
            raise CrashError

    overrides = {**TINY, "training": {**TINY["training"], "steps": 6, "log_every": 6, "checkpoint_every": 3,
                                      "lipschitz_every": 1}}  # fmt: skip
    cfg = resolve_config("deblur", overrides=overrides)
    with pytest.raises(CrashError):
        train(cfg, tmp_path / "run", on_step=crash_at_step_5)
    seen[:] = seen[:3]  # the resumed run starts after the checkpoint of step 3
    train(cfg, tmp_path / "run", resume=True, on_step=seen.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lipschitz"]) for r in records] == [(6, 1.5)]  # step 1's estimate is not lost


def test_a_resume_with_more_steps_takes_its_first_step_on_the_new_schedule(tmp_path, monkeypatch):
    short = resolve_config("deblur", overrides={**MUON, "training": {**MUON["training"], "steps": 30}})
    train(short, tmp_path / "run")
    used: list[tuple[float, float]] = []
    real_step = MuonWithAdam.step  # both groups move to the new schedule: Muon's and Adam's

    def recording_step(self, *args, **kwargs):
        used.append((self.param_groups[0]["lr"], self.param_groups[1]["lr"]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MuonWithAdam, "step", recording_step)
    longer = resolve_config("deblur", overrides={**MUON, "training": {**MUON["training"], "steps": 60}})
    train(longer, tmp_path / "run", resume=True)
    t = longer.training
    assert used[0] == pytest.approx((t.muon_lr * loop._lr_lambda(60)(30), t.lr * loop._lr_lambda(60)(30)))
    assert used[0][1] > 5 * t.lr * loop._lr_lambda(30)(29)  # not the old schedule's floor


def test_resume_from_python_refuses_another_definition(tmp_path):
    from jfb_inverse.errors import UserError

    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "steps": 3}})
    train(cfg, tmp_path / "run")
    noisier = resolve_config("deblur", overrides={**TINY, "noise": {"sigma": 0.2}})
    with pytest.raises(UserError, match=r"resume: noise.sigma is 0.2 here but 0.01 in the stored run"):
        train(noisier, tmp_path / "run", resume=True)
    longer = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "steps": 5}})
    assert train(longer, tmp_path / "run", resume=True).steps == 5  # steps may change


def test_fp16_resume_carries_the_loss_scale_and_the_guard(tmp_path, monkeypatch):
    cfg = resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], "precision": "fp16"}})
    real_mse = loop.F.mse_loss
    calls = {"n": 0}

    def one_nan(a, b):  # step 2's loss is NaN: skipped, counted, learning rate halved
        calls["n"] += 1
        return real_mse(a, b) * float("nan") if calls["n"] == 2 else real_mse(a, b)

    monkeypatch.setattr(loop.F, "mse_loss", one_nan)
    full = train(cfg, tmp_path / "full")
    calls["n"] = 0

    def crash_at_step_10(step: int) -> None:
        if step == 9:
            raise CrashError

    with pytest.raises(CrashError):
        train(cfg, tmp_path / "part", on_step=crash_at_step_10)
    part = train(cfg, tmp_path / "part", resume=True)
    assert full.skipped_steps == part.skipped_steps == 1
    a, b = (load_checkpoint(tmp_path / d / "model.pt")[0] for d in ("full", "part"))
    assert a["grad_scaler"] == b["grad_scaler"] and a["grad_scaler"]["scale"] > 0
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_load_model_on_a_device_this_machine_lacks_says_so_not_that_the_file_is_damaged(device):
    from jfb_inverse.errors import UserError
    from jfb_inverse.training.checkpoint import load_model

    message = "no CUDA GPU is available" if device == "cuda" else "unknown device 'gpu'"
    with pytest.raises(UserError, match=message):
        load_model("builtin:deblur", device=device)


def test_problem_toml_leaves_out_the_one_invocation_stop(tmp_path):
    from jfb_inverse.problems import load_config_file
    from jfb_inverse.problems.registry import config_from_file_or_problem
    from jfb_inverse.training.checkpoint import save_checkpoint

    cfg = resolve_config("deblur", overrides={"training": {"max_minutes": 0.5, "minutes": 3.0}})
    save_checkpoint(tmp_path / "model.pt", cfg, {})
    assert load_checkpoint(tmp_path / "model.pt")[1].training.max_minutes == 0.5  # the run keeps its record
    assert "max_minutes" not in load_config_file(tmp_path / "problem.toml")["training"]
    # Reused as a --config, the file no longer stops every new run after half a minute; the budget stays.
    again = config_from_file_or_problem(None, tmp_path / "problem.toml")
    assert again.training.max_minutes is None and again.training.minutes == 3.0
    assert again == cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_minutes": None})})


def test_a_skipped_step_leaves_history_jsonl_strict_json(tmp_path, monkeypatch):
    """A skipped step's loss is NaN, which json.dumps wrote as a bare NaN (not JSON): a record averages
    the steps that were not skipped, and is null where every one was."""
    real_mse, calls = loop.F.mse_loss, {"n": 0}

    def nan_at_step_2(a, b):
        calls["n"] += 1
        return real_mse(a, b) * float("nan") if calls["n"] == 2 else real_mse(a, b)

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    monkeypatch.setattr(loop.F, "mse_loss", nan_at_step_2)
    losses = {}
    for log_every in (1, 2):
        calls["n"] = 0
        training = {**TINY["training"], "steps": 4, "log_every": log_every}
        result = train(
            resolve_config("deblur", overrides={**TINY, "training": training}), tmp_path / f"every{log_every}"
        )
        assert result.skipped_steps == 1
        lines = (tmp_path / f"every{log_every}" / "history.jsonl").read_text().splitlines()
        losses[log_every] = {r["step"]: r["loss"] for r in (json.loads(line, parse_constant=refuse) for line in lines)}
    each, pairs = losses[1], losses[2]
    assert each[2] is None and all(each[s] > 0 for s in (1, 3, 4))
    assert pairs[2] == pytest.approx(each[1])  # step 2's record is step 1's loss alone: the step that trained
    assert pairs[4] == pytest.approx((each[3] + each[4]) / 2)
