"""Bias-free regularisers (``model.bias = false``): no biases, a regulariser and a reconstruction
that scale with their input, and definitions from before the field that keep their biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.models import SmoothingResidualCNN, SmoothingResidualUNet, build_model
from jfb_inverse.problems import get_problem, register_problem, resolve_config
from jfb_inverse.problems.config import ModelConfig
from jfb_inverse.training.checkpoint import load_checkpoint
from jfb_inverse.training.loop import train

TINY = {"data": {"patch_size": 32, "eval_size": 32}, "model": {"width": 8, "depth": 3}}


def _randomised(reg: nn.Module) -> nn.Module:
    """Every parameter random (the last layer starts at zero, which would make N trivially homogeneous)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in reg.parameters():
            p.normal_(0, 0.2)
    return reg.double()


@pytest.mark.parametrize(
    "make", [lambda b: SmoothingResidualCNN(width=8, depth=4, bias=b), lambda b: SmoothingResidualUNet(width=4, bias=b)]
)
def test_a_bias_free_regulariser_has_no_biases_and_scales_with_its_input(make) -> None:
    free, biased = _randomised(make(False)), _randomised(make(True))
    assert not [n for n, _ in free.named_parameters() if n.endswith("bias")]
    assert [n for n, _ in biased.named_parameters() if n.endswith("bias")]
    v = torch.rand(2, 1, 12, 20, dtype=torch.float64)
    with torch.no_grad():
        for a in (0.3, 2.5):
            torch.testing.assert_close(free(a * v), a * free(v))
        # With biases the same check fails, so it can fail.
        assert (biased(2.5 * v) - 2.5 * biased(v)).abs().max() > 1e-3


def test_a_bias_free_model_reconstructs_a_brighter_measurement_as_a_brighter_image() -> None:
    cfg = resolve_config("deblur", overrides={"model": {"bias": False, "width": 8, "depth": 3}})
    model, cache = build_model(cfg)
    model = model.double().eval()
    with torch.no_grad():
        model.regularizer.net[-1].weight.normal_(0, 0.05)  # a trained-like, non-zero last layer
    physics = cache.for_image((1, 24, 32))
    x = torch.rand(1, 1, 24, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = physics.A(x.float()).double()
    with torch.no_grad():
        base = model(y)
        iterations = model.last_stats.iterations.clone()
        brighter = model(1.7 * y)
    torch.testing.assert_close(brighter, 1.7 * base, atol=1e-9, rtol=1e-7)
    assert torch.equal(model.last_stats.iterations, iterations)  # relative residuals: the same solve


def test_bias_is_on_by_default_and_off_trains_a_bias_free_network(tmp_path) -> None:
    assert ModelConfig().bias is True and resolve_config("deblur").model.bias is True
    shipped, cfg = load_checkpoint("builtin:deblur")
    assert cfg.model.bias is True and "regularizer.net.0.bias" in shipped["state_dict"]
    free = resolve_config(
        "deblur",
        overrides={**TINY, "model": {**TINY["model"], "bias": False}, "training": {"steps": 2, "batch_size": 2}},
    )
    train(free, tmp_path / "free")
    weights, saved = load_checkpoint(tmp_path / "free" / "model.pt")
    assert saved.model.bias is False and not [k for k in weights["state_dict"] if k.endswith(".bias")]
    # Fine-tuning inherits the source's choice like the network's other fields, also when a
    # definition gives all the others.
    assert resolve_config("deblur", overrides={"training": {"init_from": str(tmp_path / "free")}}).model.bias is False
    others = {"arch": "dilated", "width": 8, "depth": 3, "spectral_norm": False, "input_injection": False}
    given = resolve_config("deblur", {"model": others, "training": {"init_from": str(tmp_path / "free")}})
    assert given.model.bias is False


def test_a_definition_from_before_the_field_keeps_its_biases_where_the_problem_now_drops_them(monkeypatch) -> None:
    from jfb_inverse.problems import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the test problem goes with the test
    # A problem whose default is bias-free, and a fine-tuned run's problem.toml written before the
    # field existed: it spells out the older network fields, so it counts as given in full (its
    # source need not exist) and keeps the biases it trained with.
    register_problem(
        "test-bias-free",
        "deblur, bias-free",
        {
            **get_problem("deblur").defaults,
            "problem": "test-bias-free",
            "model": {**get_problem("deblur").defaults["model"], "bias": False},
        },
        overwrite=True,
    )
    assert resolve_config("test-bias-free").model.bias is False
    older = {"arch": "dilated", "width": 32, "depth": 5, "spectral_norm": False, "input_injection": False}
    cfg = resolve_config("test-bias-free", {"model": older, "training": {"init_from": "gone/model.pt"}})
    assert cfg.model.bias is True
    # A fresh run of that problem from the same file without init_from takes the problem's default.
    assert resolve_config("test-bias-free", {"model": older}).model.bias is False
