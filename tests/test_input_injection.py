"""Input injection: the regulariser also sees the iteration's start, a function of the measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.errors import UserError
from jfb_inverse.implicit import Anderson
from jfb_inverse.models import ImplicitReconstructor, SmoothingResidualCNN, SmoothingResidualUNet, build_model
from jfb_inverse.models.equivariance import GROUPS, symmetrize
from jfb_inverse.problems import resolve_config
from jfb_inverse.training.checkpoint import load_initial_weights, load_model, save_checkpoint


def _injected_cfg(**model):
    return resolve_config("deblur", overrides={"model": {"input_injection": True, **model}})


def _nonzero_last_layer(reg: nn.Module) -> None:
    """A residual net that is not zero, so the context can change the output."""
    torch.manual_seed(1)
    last = [m for m in reg.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.normal_(0.0, 0.05)


@pytest.mark.parametrize("cls", [SmoothingResidualCNN, SmoothingResidualUNet])
def test_context_enters_the_residual_net_and_is_required(cls) -> None:
    reg = cls(channels=1, width=8, context_channels=1)
    _nonzero_last_layer(reg)
    v, c = torch.rand(2, 1, 12, 20), torch.rand(2, 1, 12, 20)
    with torch.no_grad():
        out = reg(v, c)
        assert out.shape == v.shape
        assert not torch.allclose(out, reg(v, torch.zeros_like(c)), atol=1e-5)  # the context matters
    with pytest.raises(ValueError, match="takes a context of 1 channel"):
        reg(v)
    with pytest.raises(ValueError, match="does not fit"):
        reg(v, torch.rand(1, 1, 12, 20))
    with pytest.raises(ValueError, match="takes no context"):
        cls(channels=1, width=8)(v, c)


def test_symmetrize_turns_the_context_with_the_input() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 1, (3, 5), padding=(1, 2), bias=False)  # no symmetry at all

    def fn(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return conv(torch.cat([v, c], dim=1))

    v, c = torch.rand(2, 1, 6, 9), torch.rand(2, 1, 6, 9)
    with torch.no_grad():
        averaged = symmetrize(fn, "dihedral", c)(v)
        expected = torch.zeros_like(v)
        for turns, flip in GROUPS["dihedral"]:
            turned_v = torch.rot90(v, turns, (-2, -1))
            turned_c = torch.rot90(c, turns, (-2, -1))
            if flip:
                turned_v, turned_c = turned_v.flip(-1), turned_c.flip(-1)
            out = fn(turned_v, turned_c)
            out = out.flip(-1) if flip else out
            expected += torch.rot90(out, -turns, (-2, -1)) / 8
        torch.testing.assert_close(averaged, expected)
        torch.testing.assert_close(symmetrize(fn, "none", c)(v), fn(v, c))


def test_the_context_is_the_models_own_start_not_a_given_starting_point() -> None:
    model, cache = build_model(_injected_cfg(equivariance="rotations"))
    _nonzero_last_layer(model.regularizer)
    model.eval()
    model.eval_solver = Anderson(tol=1e-6, max_iter=200)
    physics = cache.for_image((1, 24, 24))
    torch.manual_seed(0)
    y = physics.A(torch.rand(1, 1, 24, 24))
    seen: list[torch.Tensor] = []
    model.regularizer.register_forward_pre_hook(lambda _m, args: seen.append(args[1]))
    with torch.no_grad():
        _, start = model.fixed_point_map(y, physics)
        from_start = model(y, physics)
        contexts = {tuple(c.flatten()[:4].tolist()) for c in seen}
        from_elsewhere = model(y, physics, u0=torch.full_like(start, 0.5))
    # Four quarter-turns of the start, one context each, the same in every iteration.
    assert len(contexts) == 4
    turned = {tuple(torch.rot90(start, k, (-2, -1)).flatten()[:4].tolist()) for k in range(4)}
    assert contexts == turned
    assert model.last_stats.all_converged
    torch.testing.assert_close(from_elsewhere, from_start, atol=2e-5, rtol=0)  # the same fixed point


def test_jfb_trains_the_context_weights() -> None:
    model, cache = build_model(_injected_cfg(equivariance="none"))
    _nonzero_last_layer(model.regularizer)
    physics = cache.for_image((1, 16, 16))
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16)
    model.train()
    loss = (model(physics.A(x), physics) - x).pow(2).mean()
    loss.backward()
    first = model.regularizer.net[0]
    assert first.in_channels == 2
    # The gradient reaches the weights that read the context (input channel 1).
    assert float(first.weight.grad[:, 1].abs().sum()) > 0


def test_checkpoint_round_trip_and_old_definitions_keep_their_network(tmp_path) -> None:
    cfg = _injected_cfg()
    model, _ = build_model(cfg)
    _nonzero_last_layer(model.regularizer)
    save_checkpoint(tmp_path / "model.pt", cfg, model.state_dict(), step=0)
    loaded, loaded_cfg, cache = load_model(str(tmp_path / "model.pt"), "cpu")
    assert loaded_cfg.model.input_injection and loaded.input_injection
    physics = cache.for_image((1, 16, 16))
    y = physics.A(torch.rand(1, 1, 16, 16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, physics), model(y, physics))
    # A definition without the field (every checkpoint written before it existed) builds no context.
    plain, _ = build_model(resolve_config("deblur", overrides={"model": {"input_injection": False}}))
    assert plain.regularizer.context_channels == 0 and plain.regularizer.net[0].in_channels == 1


def test_init_from_inherits_input_injection_and_refuses_a_mismatch(tmp_path) -> None:
    cfg = _injected_cfg()
    model, _ = build_model(cfg)
    save_checkpoint(tmp_path / "model.pt", cfg, model.state_dict(), step=0)
    source = str(tmp_path / "model.pt")
    inherited = resolve_config("deblur", overrides={"training": {"init_from": source}})
    assert inherited.model.input_injection
    refused = resolve_config(
        "deblur", overrides={"model": {"input_injection": False}, "training": {"init_from": source}}
    )
    fresh, _ = build_model(refused)
    with pytest.raises(UserError, match=r"size mismatch for net\.0\.weight"):
        load_initial_weights(fresh, source, refused.model.step)


def test_the_class_default_is_off_for_a_regulariser_of_ones_own() -> None:
    model = ImplicitReconstructor(SmoothingResidualCNN(channels=1))
    assert not model.input_injection
