"""Denoiser pretraining of ``D`` (``training.pretrain_steps``): it denoises, the fixed-point phase
after it is the same as a run started from the pretrained weights, resume skips it, a signal during
it leaves nothing half-written, and the definition refuses it with ``init_from``."""

from __future__ import annotations

import signal

import pytest
import torch
from torch.nn import functional as F

from jfb_inverse.errors import ConfigError
from jfb_inverse.models.build import build_model
from jfb_inverse.problems import resolve_config
from jfb_inverse.training.checkpoint import load_checkpoint, save_checkpoint
from jfb_inverse.training.data import TrainingSource
from jfb_inverse.training.loop import TrainingInterruptedError, train
from jfb_inverse.training.pretrain import pretrain_denoiser

TINY = {
    "data": {"patch_size": 32},
    "model": {"width": 8, "depth": 3},
    "training": {"steps": 8, "batch_size": 2, "log_every": 2, "checkpoint_every": 4, "precision": "fp32"},
}


def tiny(**training: object):
    return resolve_config("deblur", overrides={**TINY, "training": {**TINY["training"], **training}})


def _weights(path):
    return load_checkpoint(path)[0]["state_dict"]


def test_pretraining_makes_the_regularizer_a_denoiser_of_unseen_patches() -> None:
    cfg = tiny(pretrain_steps=300, batch_size=8, lr=3e-3)
    torch.manual_seed(0)
    model, _ = build_model(cfg, "cpu")
    # Patches and noise of streams the pretraining does not use (its patch seed is seed + 777).
    x = TrainingSource(cfg.data, 16, seed=4242, device=torch.device("cpu")).sample()
    v = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = F.mse_loss(model.regularizer(v), x).item()
    result = pretrain_denoiser(model.regularizer, cfg, torch.device("cpu"), slice(None))
    with torch.no_grad():
        after = F.mse_loss(model.regularizer(v), x).item()
    noisy = F.mse_loss(v, x).item()
    assert result.steps == 300 and result.final_loss > 0
    # The untrained D, a fixed smoother, blurs edges more than it removes noise (seen: 5.6e-4 against
    # 3.9e-4 for the noisy patches); pretrained, it removes noise (seen: 3.5e-4).
    assert before > noisy
    assert after < 0.95 * noisy, (after, noisy)
    assert after < 0.7 * before, (after, before)


def test_the_fixed_point_phase_is_a_run_started_from_the_pretrained_weights(tmp_path) -> None:
    # Pretraining draws patches and noise from streams of its own: the steps after it see the same
    # batches as a run without it, so `pretrain_steps` = `init_from` a pretrained checkpoint, bitwise.
    cfg = tiny(pretrain_steps=20)
    train(cfg, tmp_path / "with")
    torch.manual_seed(cfg.training.seed)
    model, _ = build_model(cfg, "cpu")
    pretrain_denoiser(model.regularizer, cfg, torch.device("cpu"), slice(None))
    save_checkpoint(tmp_path / "pretrained.pt", cfg, model.state_dict())
    train(tiny(init_from=str(tmp_path / "pretrained.pt")), tmp_path / "from")
    a, b = _weights(tmp_path / "with" / "model.pt"), _weights(tmp_path / "from" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... and pretraining changed the result (it is not a no-op).
    train(tiny(), tmp_path / "none")
    c = _weights(tmp_path / "none" / "model.pt")
    assert not torch.equal(a["regularizer.net.0.weight"], c["regularizer.net.0.weight"])


class CrashError(Exception):
    pass


def test_resume_skips_pretraining_and_gives_bitwise_the_same_weights(tmp_path) -> None:
    cfg = tiny(pretrain_steps=10)
    full = train(cfg, tmp_path / "full")
    assert full.pretrain is not None and full.pretrain.steps == 10

    def crash_at_step_6(step: int) -> None:
        if step == 5:
            raise CrashError

    with pytest.raises(CrashError):
        train(cfg, tmp_path / "part", on_step=crash_at_step_6)
    pretrain_calls: list[int] = []
    resumed = train(cfg, tmp_path / "part", resume=True, on_pretrain_step=pretrain_calls.append)
    assert pretrain_calls == []  # the checkpoint holds pretrained weights already
    assert resumed.pretrain is not None and resumed.pretrain.steps == 10  # carried from the checkpoint
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "part" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_during_pretraining_stops_before_any_checkpoint(tmp_path) -> None:
    def interrupt_at_step_3(step: int) -> None:
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterruptedError, match=r"during the denoiser pretraining.*nothing to resume") as exc:
        train(tiny(pretrain_steps=10), tmp_path / "run", on_pretrain_step=interrupt_at_step_3)
    assert exc.value.exit_code == 130
    assert not (tmp_path / "run" / "model.pt").exists()


def test_pretraining_with_input_injection_gives_d_its_context() -> None:
    cfg = resolve_config(
        "deblur",
        overrides={**TINY, "model": {**TINY["model"], "input_injection": True}, "training": {**TINY["training"]}},
    )
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"pretrain_steps": 3})})
    model, _ = build_model(cfg, "cpu")
    first = model.regularizer.net[0].weight.detach().clone()
    pretrain_denoiser(model.regularizer, cfg, torch.device("cpu"), slice(None))
    # The context channel's weights were trained too: D saw a context.
    assert not torch.equal(first[:, 1], model.regularizer.net[0].weight[:, 1])


def test_pretraining_and_init_from_are_refused_together() -> None:
    with pytest.raises(ConfigError, match=r"pretrain_steps \(5\) would retrain the weights of training.init_from"):
        tiny(pretrain_steps=5, init_from="builtin:deblur")
    with pytest.raises(ConfigError, match="pretrain_sigma"):
        tiny(pretrain_steps=5, pretrain_sigma=0)
