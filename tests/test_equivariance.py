"""Averaging the regulariser over quarter-turns and flips: exact equivariance, where it applies, gains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.errors import UserError
from jfb_inverse.models import build_model
from jfb_inverse.models.equivariance import GROUPS, symmetrize
from jfb_inverse.problems import resolve_config


def _skewed() -> nn.Module:
    """A convolution with no symmetry at all (a random 3x5 kernel), so averaging must change it."""
    torch.manual_seed(0)
    return nn.Conv2d(1, 1, (3, 5), padding=(1, 2), bias=False)


def _transform(v: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    v = torch.rot90(v, turns, dims=(-2, -1))
    return v.flip(-1) if flip else v


@pytest.mark.parametrize("group", ["rotations", "dihedral"])
def test_symmetrized_map_is_equivariant_on_a_non_square_image(group: str) -> None:
    f = symmetrize(_skewed(), group)  # type: ignore[arg-type]
    v = torch.rand(2, 1, 7, 10)
    with torch.no_grad():
        for turns, flip in GROUPS[group]:
            torch.testing.assert_close(f(_transform(v, turns, flip)), _transform(f(v), turns, flip))
        # The plain map is not equivariant, so the test above could fail.
        g = _skewed()
        assert not torch.allclose(g(torch.rot90(v, 1, (-2, -1))), torch.rot90(g(v), 1, (-2, -1)), atol=1e-3)


def test_rotations_are_not_flip_equivariant_but_dihedral_is() -> None:
    v = torch.rand(1, 1, 6, 9)
    with torch.no_grad():
        rot = symmetrize(_skewed(), "rotations")
        dih = symmetrize(_skewed(), "dihedral")
        assert not torch.allclose(rot(v.flip(-1)), rot(v).flip(-1), atol=1e-3)
        torch.testing.assert_close(dih(v.flip(-1)), dih(v).flip(-1))


def test_an_equivariant_map_is_unchanged_and_none_is_the_map_itself() -> None:
    smooth = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        smooth.weight.copy_(torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16)
        v = torch.rand(2, 1, 5, 8)
        torch.testing.assert_close(symmetrize(smooth, "dihedral")(v), smooth(v))
    fn = _skewed()
    assert symmetrize(fn, "none") is fn
    with pytest.raises(ValueError, match="unknown equivariance 'mirror'"):
        symmetrize(fn, "mirror")  # type: ignore[arg-type]


def _counting_model(equivariance: str) -> tuple[nn.Module, list[int], torch.Tensor, object]:
    cfg = resolve_config("deblur", overrides={"model": {"equivariance": equivariance}})
    model, cache = build_model(cfg)
    calls = [0]
    model.regularizer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    physics = cache.for_image((1, 16, 24))
    y = physics.A(torch.rand(2, 1, 16, 24))
    return model, calls, y, physics


def test_model_averages_in_eval_mode_only() -> None:
    model, calls, y, physics = _counting_model("rotations")
    model.eval()
    with torch.no_grad():
        out = model(y, physics)
    evals = int(model.last_stats.evaluations)
    assert out.shape == (2, 1, 16, 24)
    assert calls[0] == 4 * evals  # four quarter-turns per application of T
    calls[0] = 0
    model.train()
    model(y, physics).sum().backward()
    assert calls[0] == int(model.last_stats.evaluations)  # one D per T (the count includes JFB's tracked T)


def test_default_is_rotations_and_bad_value_is_a_one_line_error() -> None:
    assert resolve_config("deblur").model.equivariance == "rotations"
    assert resolve_config("ct").model.equivariance == "rotations"
    with pytest.raises(UserError, match=r"model\.equivariance: .*\(got 'mirror'\)"):
        resolve_config("deblur", overrides={"model": {"equivariance": "mirror"}})


def test_rotation_averaging_gains_on_the_held_out_split_with_the_shipped_model() -> None:
    from jfb_inverse.evaluation import evaluate
    from jfb_inverse.training.checkpoint import load_model
    from jfb_inverse.training.data import evaluation_images

    model, cfg, physics = load_model("builtin:deblur", "cpu")
    images = evaluation_images(cfg.data)
    means = {}
    for group in ("none", "rotations"):
        model.equivariance = group
        report = evaluate(model, physics, cfg, images, seed=0, with_baselines=False).report
        assert report["settings"]["equivariance"] == group  # the report says which map made it
        means[group] = report["mean"]["psnr"]["model"]
    # Measured +0.09 dB (28.42 -> 28.51) on the four held-out images, fixed weights and noise seed.
    assert means["rotations"] > means["none"] + 0.03


def test_a_one_image_report_has_its_image_scores_as_means() -> None:
    from jfb_inverse.datasets import load_builtin

    from jfb_inverse.evaluation import evaluate

    cfg = resolve_config("deblur", overrides={"model": {"width": 4, "depth": 2}})
    model, physics = build_model(cfg, "cpu")
    image = [("camera", load_builtin("camera", size=32))]
    report = evaluate(model, physics, cfg, image, seed=0).report
    for metric in ("psnr", "ssim"):  # SSIM's mean used to be rounded to 4 places, its image to 5
        assert report["mean"][metric] == report["images"][0][metric]
