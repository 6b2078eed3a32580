"""The training optimiser: Newton-Schulz orthogonalisation, Muon's update, Adam's groups, the split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.errors import ConfigError
from jfb_inverse.models.build import build_model
from jfb_inverse.problems import resolve_config
from jfb_inverse.training.loop import train
from jfb_inverse.training.optim import MuonWithAdam, build_optimizer, hidden_weights, orthogonalize


@pytest.mark.parametrize("shape", [(32, 288), (288, 32), (16, 16)])
def test_orthogonalize_keeps_the_singular_vectors_and_brings_the_values_near_one(shape):
    torch.manual_seed(0)
    m = torch.randn(*shape, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 0, shape[1], dtype=torch.float64))
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    o = orthogonalize(m).double()
    core = u.T @ o @ vh.T  # diagonal when o = U f(S) V^T
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 1e-4
    # Five quintic steps bring every singular value above about 1e-3 of the largest into [0.6, 1.25].
    assert torch.all((torch.diagonal(core)[s > 1e-2] > 0.6) & (torch.diagonal(core)[s > 1e-2] < 1.25))


def test_orthogonalize_of_zero_is_zero_and_it_refuses_a_non_matrix():
    assert torch.equal(orthogonalize(torch.zeros(4, 6)), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="takes a matrix"):
        orthogonalize(torch.zeros(2, 3, 4))


def test_the_hidden_weights_are_the_middle_convolutions_of_the_default_regulariser():
    cfg = resolve_config("deblur")
    model, _ = build_model(cfg, torch.device("cpu"))
    hidden = hidden_weights(model)
    assert [tuple(p.shape) for p in hidden] == [(32, 32, 3, 3)] * 3
    net = model.regularizer.net
    assert all(p is not net[0].weight and p is not net[-1].weight for p in hidden)


def test_a_muon_step_moves_a_weight_by_lr_times_its_orthogonalised_nesterov_momentum():
    w = nn.Parameter(torch.randn(6, 3, 3, 3))
    start = w.detach().clone()
    opt = MuonWithAdam([{"params": [w], "lr": 0.1, "muon": True}])
    g1, g2 = torch.randn_like(w), torch.randn_like(w)
    w.grad = g1
    opt.step()
    # First step: the buffer is g1, the Nesterov update g1 + 0.95 g1, a multiple of g1; 6 rows < 27 columns.
    after_one = start - 0.1 * orthogonalize(g1.reshape(6, -1)).reshape(w.shape)
    torch.testing.assert_close(w.detach(), after_one)
    w.grad = g2
    opt.step()
    buf = 0.95 * g1 + g2
    torch.testing.assert_close(
        w.detach(), after_one - 0.1 * orthogonalize((g2 + 0.95 * buf).reshape(6, -1)).reshape(w.shape)
    )


def test_a_tall_muon_update_is_scaled_by_the_square_root_of_its_aspect():
    w = nn.Parameter(torch.zeros(32, 2))
    opt = MuonWithAdam([{"params": [w], "lr": 1.0, "muon": True}])
    w.grad = torch.randn(32, 2)
    opt.step()
    # Two singular values near 1, times sqrt(32 / 2) = 4: a Frobenius norm near 4 * sqrt(2).
    assert 0.6 * 4 * 2**0.5 < w.detach().norm() < 1.25 * 4 * 2**0.5


def test_the_adam_groups_match_torch_adam():
    torch.manual_seed(1)
    a = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(3))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    ours = MuonWithAdam([{"params": a, "lr": 3e-3}])
    reference = torch.optim.Adam(b, lr=3e-3)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        reference.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_build_optimizer_splits_the_parameters_once_each():
    cfg = resolve_config("deblur")
    model, _ = build_model(cfg, torch.device("cpu"))
    opt = build_optimizer(model, "muon", lr=2e-3, muon_lr=5e-3)
    groups = [(g["muon"], g["lr"], len(g["params"])) for g in opt.param_groups]
    assert groups == [(True, 5e-3, 3), (False, 2e-3, len(list(model.parameters())) - 3)]
    assert isinstance(build_optimizer(model, "adam", lr=2e-3, muon_lr=5e-3), torch.optim.Adam)


def test_muon_on_a_regulariser_without_hidden_layers_fails_before_writing(tmp_path):
    cfg = resolve_config("deblur", overrides={"model": {"depth": 2}, "training": {"optimizer": "muon", "steps": 2}})
    with pytest.raises(ConfigError, match="needs a regulariser with hidden layers"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_unknown_optimizer_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"training\.optimizer: Input should be 'adam' or 'muon' \(got 'sgd'\)"):
        resolve_config("deblur", overrides={"training": {"optimizer": "sgd"}})


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_history_logs_muons_learning_rate_only_under_muon(tmp_path, optimizer):
    import json

    tiny = {
        "data": {"patch_size": 32},
        "model": {"width": 8, "depth": 3},
        "training": {"steps": 3, "batch_size": 2, "log_every": 3, "optimizer": optimizer, "muon_lr": 0.01},
    }
    cfg = resolve_config("deblur", overrides=tiny)
    train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[-1])
    factor = record["lr"] / cfg.training.lr  # the schedule's factor at the last step
    assert 0 < factor < 1
    if optimizer == "muon":
        assert record["muon_lr"] == pytest.approx(0.01 * factor)
    else:
        assert "muon_lr" not in record
