"""Batch reuse with warm starts (``training.batch_reuse``, ``reuse_gap``): the schedule, fewer
forward iterations on a reused batch, exact resumption, the NaN guard, and unrolled training."""

from __future__ import annotations

import pytest
import torch

from jfb_inverse.problems import resolve_config
from jfb_inverse.training.checkpoint import load_checkpoint
from jfb_inverse.training.loop import train
from jfb_inverse.training.reuse import BatchPool

TINY = {
    "data": {"patch_size": 32},
    "model": {"width": 8, "depth": 3},
    "training": {"steps": 12, "batch_size": 2, "log_every": 3, "checkpoint_every": 4, "precision": "fp32"},
}


def tiny(**training: object):
    return resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], **training}})


def _keep_models(monkeypatch) -> list:
    """Every ``(model, physics_cache)`` that ``train`` builds, appended as it is built."""
    from jfb_inverse.training import loop

    built = []
    real_build = loop.build_model

    def build_and_keep(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "build_model", build_and_keep)
    return built


def test_pool_schedule_draws_every_reuse_th_use_of_each_slot_and_hands_back_the_last_fixed_point() -> None:
    pool = BatchPool(reuse=3, gap=2, local=slice(0, 2))
    draws: list[int] = []

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        draws.append(step)
        return torch.full((2, 1, 4, 4), float(step)), torch.full((2, 1, 4, 4), -float(step))

    starts = []
    for step in range(12):
        x, y, start = pool.batch(step, draw)
        assert torch.equal(y, -x)
        starts.append(None if start is None else float(start[0, 0, 0, 0]))
        pool.remember(x + 100 * step)  # a stand-in fixed point that names its step
    # Slot 0 serves steps 0, 2, 4 then draws at 6; slot 1 serves 1, 3, 5 then draws at 7.
    assert draws == [0, 1, 6, 7]
    assert starts == [None, None, 0.0, 101.0, 200.0, 301.0, None, None, 606.0, 707.0, 806.0, 907.0]


def test_no_reuse_keeps_nothing() -> None:
    pool = BatchPool(reuse=1, gap=8, local=slice(0, 1))
    for step in range(3):
        _, _, start = pool.batch(step, lambda: (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)))
        assert start is None
        pool.remember(torch.ones(1, 1, 2, 2))
    assert pool.slots == {} and pool.state_dict()["slots"] == {}


def test_a_reused_batch_starts_at_its_fixed_point_and_needs_fewer_iterations(tmp_path, monkeypatch) -> None:
    built = _keep_models(monkeypatch)
    iterations: list[int] = []

    def record(step: int) -> None:
        iterations.append(int(built[0][0].last_stats.iterations.max()))

    # lr tiny: the weights barely move between a batch's two uses, so its warm start is converged.
    train(tiny(steps=6, batch_reuse=2, reuse_gap=1, lr=1e-7), tmp_path / "run", on_step=record)
    first_uses, second_uses = iterations[0::2], iterations[1::2]
    assert min(first_uses) >= 3, iterations
    assert max(second_uses) <= 2, iterations


def test_resume_with_reuse_gives_bitwise_the_same_weights(tmp_path) -> None:
    cfg = tiny(batch_reuse=3, reuse_gap=2)
    train(cfg, tmp_path / "full")

    class CrashError(Exception):
        pass

    def crash_at_step_10(step: int) -> None:
        if step == 9:
            raise CrashError

    with pytest.raises(CrashError):
        train(cfg, tmp_path / "part", on_step=crash_at_step_10)
    payload = load_checkpoint(tmp_path / "part" / "model.pt")[0]
    assert payload["step"] == 8
    pool = payload["batch_pool"]
    assert sorted(pool["slots"]) == [0, 1]
    assert all(s["start"] is not None and s["start"].shape == s["x"].shape for s in pool["slots"].values())
    train(cfg, tmp_path / "part", resume=True)
    full = load_checkpoint(tmp_path / "full" / "model.pt")[0]
    part = load_checkpoint(tmp_path / "part" / "model.pt")[0]
    assert all(torch.equal(full["state_dict"][k], part["state_dict"][k]) for k in full["state_dict"])
    # A completed run keeps no pool: model.pt stays the size of the weights and the training state.
    assert full["batch_pool"] is None and part["batch_pool"] is None


def test_reuse_changes_training_and_the_default_deblur_definition_uses_it(tmp_path) -> None:
    fresh = train(tiny(steps=4), tmp_path / "fresh")
    reused = train(tiny(steps=4, batch_reuse=2, reuse_gap=1), tmp_path / "reused")
    a = load_checkpoint(fresh.out_dir / "model.pt")[0]["state_dict"]
    b = load_checkpoint(reused.out_dir / "model.pt")[0]["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)
    default = resolve_config("deblur").training
    assert (default.batch_reuse, default.reuse_gap) == (4, 8)


def test_a_step_the_nan_guard_skips_retires_its_batch_instead_of_keeping_a_nan_start(tmp_path, monkeypatch) -> None:
    from jfb_inverse.training import loop

    real_mse = loop.F.mse_loss
    calls = {"n": 0}

    def one_nan(a, b):
        calls["n"] += 1
        return real_mse(a, b) * float("nan") if calls["n"] == 2 else real_mse(a, b)

    monkeypatch.setattr(loop.F, "mse_loss", one_nan)
    built = _keep_models(monkeypatch)
    starts: list[bool] = []
    original_forward = None

    def record_start(y, physics=None, u0=None, **kwargs):
        starts.append(u0 is not None)
        return original_forward(y, physics, u0=u0, **kwargs)

    def wrap(step: int) -> None:  # after the first step: the model exists; wrap it once
        nonlocal original_forward
        model = built[0][0]
        if original_forward is None:
            original_forward = model.forward
            model.forward = record_start

    result = train(tiny(steps=6, batch_reuse=6, reuse_gap=1), tmp_path / "run", on_step=wrap)
    # Step 2 (the second call) was skipped; before the fix its NaN fixed point became the start of
    # every later use of the batch, and each of those was skipped too.
    assert result.skipped_steps == 1
    # Steps 2-6 (recorded from step 2 on): step 2 was warm, step 3 starts a fresh batch, then warm.
    assert starts == [True, False, True, True, True]


def test_unrolled_training_gets_no_warm_start(tmp_path, monkeypatch) -> None:
    built = _keep_models(monkeypatch)
    seen: list[object] = []

    def wrap(step: int) -> None:
        model = built[0][0]
        if not seen:
            forward = model.forward

            def record(y, physics=None, u0=None, **kwargs):
                seen.append(u0)
                return forward(y, physics, u0=u0, **kwargs)

            model.forward = record
            seen.append("wrapped")

    train(tiny(steps=4, batch_reuse=4, reuse_gap=1, gradient="unrolled", unrolled_k=3), tmp_path / "run", on_step=wrap)
    assert seen == ["wrapped", None, None, None]
