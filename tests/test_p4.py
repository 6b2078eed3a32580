"""Quarter-turn-equivariant (p4) convolutions and the p4 regulariser: exact equivariance, the
faster CPU forms, the cost of evaluation-time averaging, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from jfb_inverse.errors import ConfigError
from jfb_inverse.models import build_model
from jfb_inverse.models.equivariance import symmetrize
from jfb_inverse.models.p4 import P4Conv2d
from jfb_inverse.models.regularizers import SmoothingResidualP4CNN, binomial_smooth
from jfb_inverse.problems import resolve_config


def _turn(v: torch.Tensor, t: int) -> torch.Tensor:
    return torch.rot90(v, t, dims=(-2, -1))


def _cycle(h: torch.Tensor, t: int) -> torch.Tensor:
    """Hidden channels (4 f + r) with orientation r moved to r + t: how a turn acts on fields."""
    b, c, height, width = h.shape
    return h.view(b, c // 4, 4, height, width).roll(t, dims=2).view(b, c, height, width)


def _randomised(layer: P4Conv2d) -> P4Conv2d:
    torch.manual_seed(1)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer.double()


@pytest.mark.parametrize("dilation", [1, 2])
def test_each_kind_of_layer_commutes_with_quarter_turns_on_a_non_square_image(dilation: int) -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 2, 9, 14, dtype=torch.float64)
    hidden = torch.randn(2, 8, 9, 14, dtype=torch.float64)
    lift = _randomised(P4Conv2d("lift", 2, 8, dilation=dilation))
    group = _randomised(P4Conv2d("group", 8, 12, dilation=dilation))
    project = _randomised(P4Conv2d("project", 8, 3, dilation=dilation))
    for t in range(1, 4):
        # image -> fields: the output turns and its orientations cycle by t
        torch.testing.assert_close(lift(_turn(image, t)), _cycle(_turn(lift(image), t), t))
        torch.testing.assert_close(group(_cycle(_turn(hidden, t), t)), _cycle(_turn(group(hidden), t), t))
        torch.testing.assert_close(project(_cycle(_turn(hidden, t), t)), _turn(project(hidden), t))
    # A plain convolution of the same shape does not commute, so the checks above could fail.
    plain = nn.Conv2d(2, 8, 3, padding=1).double()
    assert not torch.allclose(plain(_turn(image, 1)), _cycle(_turn(plain(image), 1), 1), atol=1e-3)


def test_full_weight_is_the_base_kernel_turned_and_cycled() -> None:
    layer = _randomised(P4Conv2d("group", 4, 4))  # one field in, one out: the weight is 4 x 4 kernels
    base, full = layer.weight[0, 0], layer.full_weight()
    for r in range(4):
        for s in range(4):
            torch.testing.assert_close(full[r, s], torch.rot90(base[(s - r) % 4], r))
    lift = _randomised(P4Conv2d("lift", 1, 4))
    for r in range(4):
        torch.testing.assert_close(lift.full_weight()[r, 0], torch.rot90(lift.weight[0, 0], r))
    torch.testing.assert_close(lift.full_bias(), lift.bias.repeat(4))
    project = _randomised(P4Conv2d("project", 4, 1))
    expected = sum(torch.rot90(project.weight[0, 0].roll(r, dims=0), r, dims=(-2, -1)) for r in range(4))
    torch.testing.assert_close(project.full_weight()[0], expected)


@pytest.mark.parametrize("kind,c_in,c_out", [("lift", 1, 8), ("group", 8, 8), ("project", 8, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_faster_no_grad_forms_match_the_plain_convolution(
    kind: str, c_in: int, c_out: int, channels_last: bool
) -> None:
    torch.manual_seed(0)
    layer = P4Conv2d(kind, c_in, c_out, dilation=2)  # type: ignore[arg-type]
    nn.init.normal_(layer.weight, std=0.3)
    layer.channels_last = channels_last
    x = torch.randn(1, c_in, 13, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(x, layer.full_weight(), layer.full_bias(), padding=2, dilation=2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    x.requires_grad_(True)
    torch.testing.assert_close(layer(x), expected)


def test_p4_regulariser_starts_as_the_smoother_and_is_equivariant_after_a_change() -> None:
    torch.manual_seed(0)
    reg = SmoothingResidualP4CNN(width=16, depth=4).double()
    v = torch.rand(2, 1, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        w = reg.smoothing
        torch.testing.assert_close(reg(v), (1 - w) * v + w * binomial_smooth(v))
        nn.init.normal_(reg.net[-1].weight, std=0.1)  # the zero-initialised last layer, now not zero
        assert (reg(v) - ((1 - w) * v + w * binomial_smooth(v))).abs().max() > 1e-3
        for t in range(1, 4):
            torch.testing.assert_close(reg(_turn(v, t)), _turn(reg(v), t))


def test_p4_regulariser_rejects_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="width divisible by 4"):
        SmoothingResidualP4CNN(width=30)
    with pytest.raises(ValueError, match="spectral_norm"):
        SmoothingResidualP4CNN(spectral_norm=True)
    with pytest.raises(ValueError, match="odd kernel_size"):
        P4Conv2d("group", 8, 8, kernel_size=4)
    with pytest.raises(ValueError, match="in_channels divisible by 4"):
        P4Conv2d("project", 6, 1)
    with pytest.raises(ConfigError, match="width divisible by 4"):
        resolve_config("deblur", overrides={"model": {"arch": "p4", "width": 30}})
    with pytest.raises(ConfigError, match="spectral_norm = false"):
        resolve_config("deblur", overrides={"model": {"arch": "p4", "spectral_norm": True}})


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return v.flip(-2) * 2  # not flip-equivariant along the width: averaging must act


@pytest.mark.parametrize("group,calls", [("none", 1), ("rotations", 1), ("dihedral", 2)])
def test_averaging_a_turn_equivariant_map_applies_it_once_per_flip(group: str, calls: int) -> None:
    fn = _Counting()
    out = symmetrize(fn, group, turn_equivariant=True)(torch.arange(6.0).view(1, 1, 2, 3))  # type: ignore[arg-type]
    assert fn.calls == calls
    v = torch.arange(6.0).view(1, 1, 2, 3)
    expected = 2 * v.flip(-2) if group != "dihedral" else (2 * v.flip(-2) + (2 * v.flip(-1).flip(-2)).flip(-1)) / 2
    torch.testing.assert_close(out, expected)


def test_p4_model_evaluates_with_rotations_at_the_cost_of_one_application() -> None:
    cfg = resolve_config("deblur", overrides={"model": {"arch": "p4", "width": 8, "depth": 3}})
    model, cache = build_model(cfg)
    with torch.no_grad():
        nn.init.normal_(model.regularizer.net[-1].weight, std=0.05)
    model.eval()
    physics = cache.for_image((1, 20, 28))
    y = physics(torch.rand(2, 1, 20, 28, generator=torch.Generator().manual_seed(0)))
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    handle = model.regularizer.register_forward_hook(count)
    with torch.no_grad():
        model.equivariance = "rotations"
        averaged = model(y)
        iterations = int(model.last_stats.iterations.max())
        rotation_calls, calls = calls, 0
        model.equivariance = "none"
        plain = model(y)
    handle.remove()
    torch.testing.assert_close(averaged, plain)
    assert rotation_calls == calls  # one application of D per evaluation of T, as without averaging
    assert rotation_calls <= iterations + 1
