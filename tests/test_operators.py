"""The built-in operators (CT, inpainting, super-resolution, MRI): adjoints, shapes, masks, problems."""

from __future__ import annotations

import math

import pytest
import torch
from deepinv.physics import MRI, Tomography

from jfb_inverse.errors import ConfigError
from jfb_inverse.problems import build_physics, image_shape_for, resolve_config
from jfb_inverse.problems.config import InpaintingOperator, MRIOperator, SuperResOperator, TomographyOperator
from jfb_inverse.problems.custom import check_adjoint
from jfb_inverse.problems.operators import (
    DetectorResampledTomography,
    cartesian_mask,
    native_detector_count,
    resampling_matrix,
    width_for_detectors,
)
from jfb_inverse.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [
    pytest.param(TomographyOperator(), (1, 32, 32), id="ct"),
    pytest.param(TomographyOperator(angles=12, angular_range=90.0), (2, 33, 33), id="ct-limited-angle-2ch"),
    pytest.param(TomographyOperator(detectors=30, img_width=32), (1, 32, 32), id="ct-fewer-detectors"),
    pytest.param(TomographyOperator(detectors=70, img_width=32), (1, 32, 32), id="ct-more-detectors"),
    pytest.param(InpaintingOperator(), (3, 20, 24), id="inpainting-rgb"),
    pytest.param(SuperResOperator(), (3, 32, 48), id="superres-rgb"),
    pytest.param(SuperResOperator(factor=4, sigma=2.0), (1, 32, 32), id="superres-x4"),
    pytest.param(MRIOperator(), (1, 32, 32), id="mri"),
    pytest.param(MRIOperator(acceleration=8), (3, 31, 34), id="mri-odd-rgb"),
]


@pytest.mark.parametrize(("op", "img_size"), CASES)
def test_adjointness(op, img_size):
    physics = build_physics(op, img_size)
    assert check_adjoint(physics, img_size, tol=1e-4, name=op.kind) < 1e-4


@pytest.mark.parametrize(("op", "img_size"), CASES)
def test_image_shape_for_inverts_the_measurement_shape(op, img_size):
    physics = build_physics(op, img_size)
    y = physics.A(torch.rand(2, *img_size))
    assert image_shape_for(op, tuple(y.shape[1:])) == img_size


def test_expected_measurement_shapes():
    x = torch.rand(2, 1, 32, 32)
    assert build_physics(TomographyOperator(angles=30), (1, 32, 32)).A(x).shape == (2, 1, 46, 30)
    assert build_physics(TomographyOperator(detectors=40), (1, 32, 32)).A(x).shape == (2, 1, 40, 30)
    assert build_physics(SuperResOperator(factor=4), (1, 32, 32)).A(x).shape == (2, 1, 8, 8)
    assert build_physics(MRIOperator(), (3, 32, 32)).A(torch.rand(2, 3, 32, 32)).shape == (2, 6, 32, 32)


@pytest.mark.parametrize("width", [16, 31, 64, 127, 128])
def test_native_detector_count_matches_deepinv_and_inverts(width):
    tomo = Tomography(angles=3, img_width=width, circle=False, normalize=False)
    assert tomo.A(torch.zeros(1, 1, width, width)).shape[-2] == native_detector_count(width)
    assert width_for_detectors(native_detector_count(width)) == width


def test_width_for_detectors_is_exact_over_a_range():
    for width in range(1, 1025):
        assert width_for_detectors(native_detector_count(width)) == width
    used = {native_detector_count(w) for w in range(1, 200)}
    assert width_for_detectors(next(d for d in range(3, 200) if d not in used)) is None


def test_ct_angles_are_even_over_the_range():
    physics = build_physics(TomographyOperator(angles=30, angular_range=180.0), (1, 32, 32))
    assert torch.allclose(physics.angles.cpu(), torch.arange(30) * 6.0)
    physics = build_physics(TomographyOperator(angles=12, angular_range=90.0, detectors=40), (1, 32, 32))
    assert isinstance(physics, DetectorResampledTomography)
    assert torch.allclose(physics.tomography.angles.cpu(), torch.arange(12) * 7.5)


def test_ct_fbp_of_resampled_sinogram_is_close_to_native():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:20] = 1.0
    native = build_physics(TomographyOperator(angles=60), (1, 32, 32))
    resampled = build_physics(TomographyOperator(angles=60, detectors=92), (1, 32, 32))
    a, b = native.fbp(native.A(x)), resampled.fbp(resampled.A(x))
    assert (a - b).pow(2).mean() < 0.1 * (a - x).pow(2).mean() + 1e-3


@pytest.mark.parametrize(("n_in", "n_out"), [(46, 30), (46, 46), (46, 70), (7, 3)])
def test_resampling_rows_are_partitions_of_unity(n_in, n_out):
    m = resampling_matrix(n_in, n_out)
    assert m.shape == (n_out, n_in) and (m >= 0).all()
    assert torch.allclose(m.sum(1), torch.ones(n_out), atol=1e-6)


@pytest.mark.parametrize(
    ("op", "img_size", "message"),
    [
        (TomographyOperator(), (1, 32, 40), "CT needs square images, got 32x40"),
        (SuperResOperator(factor=4), (1, 30, 32), "divisible by 4, got 30x32"),
        (SuperResOperator(sigma=3.0), (1, 16, 16), r"16x16 px \(for a measurement of 8x8 px at x2\) is smaller than"),
    ],
)
def test_bad_image_sizes_are_one_line_errors(op, img_size, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_physics(op, img_size)
    assert "\n" not in str(info.value)


def test_a_too_small_super_resolution_image_is_told_the_least_size_and_that_size_works():
    op = SuperResOperator(sigma=3.0)  # a 23x23 kernel
    with pytest.raises(ConfigError, match=r"the least is a 12x12 px measurement, a 24x24 px image"):
        build_physics(op, (1, 22, 22))
    assert build_physics(op, (1, 24, 24)).A(torch.rand(1, 1, 24, 24)).shape == (1, 1, 12, 12)


@pytest.mark.parametrize(
    ("op", "shape", "message"),
    [
        (TomographyOperator(detectors=40), (1, 40, 30), "set operator.img_width"),
        (TomographyOperator(), (1, 48, 30), "no square image gives"),  # 33 -> 47, 34 -> 49
        (TomographyOperator(), (40, 30), r"\(C, detectors, angles\)"),
        (MRIOperator(), (3, 32, 32), r"\(2C, H, W\)"),
    ],
)
def test_shapes_that_cannot_be_inverted(op, shape, message):
    with pytest.raises(ConfigError, match=message):
        image_shape_for(op, shape)


def test_inpainting_mask_fraction_seed_and_channels():
    op = InpaintingOperator(missing=0.5, mask_seed=3)
    physics = build_physics(op, (3, 20, 30))
    mask = physics.mask
    assert mask.shape[-2:] == (20, 30) and mask.sum() == 300
    y = physics.A(torch.ones(1, 3, 20, 30))
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])  # same pixels in every channel
    assert torch.equal(build_physics(op, (1, 20, 30)).mask, mask)  # fixed by seed and size
    assert not torch.equal(build_physics(InpaintingOperator(mask_seed=4), (1, 20, 30)).mask, mask)


@pytest.mark.parametrize(("op", "img_size"), [(InpaintingOperator(), (3, 20, 24)), (MRIOperator(), (2, 32, 32))],
                         ids=["inpainting-rgb", "mri-2ch"])  # fmt: skip
def test_no_noise_where_a_masking_operator_measures_nothing(op, img_size):
    """As deepinv's own Inpainting and MRI noise them: missing pixels and unsampled k-space stay 0."""
    from jfb_inverse.problems import simulate
    from jfb_inverse.problems.config import NoiseConfig

    physics = build_physics(op, img_size)
    x = torch.rand(2, *img_size, generator=torch.Generator().manual_seed(0))
    y = simulate(x, physics, NoiseConfig(sigma=0.05), torch.Generator().manual_seed(1))
    measured = physics.A(torch.ones_like(x)) != 0 if isinstance(op, InpaintingOperator) else None
    if measured is None:  # k-space: a sampled column is sampled in every row, channel and part
        measured = cartesian_mask(op, img_size[1], img_size[2]).bool().expand_as(y)
    noise = y - physics.A(x)
    assert torch.all(noise[~measured] == 0) and torch.all(y[~measured] == 0)
    assert (noise[measured] != 0).float().mean() > 0.99
    # The stream is the one drawn everywhere, masked: the measured entries' noise is unchanged.
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noise[measured], 0.05 * eps[measured])


@pytest.mark.parametrize(
    ("problem", "noise"),
    [
        ("ct", None),  # relative Gaussian: 1.5% of each sinogram's maximum
        ("deblur", {"kind": "poisson", "gain": 100.0, "sigma": 0.01}),
        ("mri", None),  # absolute Gaussian (deepinv's GaussianNoise), zero on the k-space not sampled
        ("inpainting", None),
    ],
)
def test_physics_of_a_problem_adds_the_noise_that_simulate_draws(problem, noise):
    # deepinv pipelines (dinv.test, a Trainer with online measurements) call physics(x). CT's relative
    # noise and Poisson noise used to be left out there: clean measurements, and inflated PSNRs.
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import simulate

    cfg = resolve_config(problem, overrides={"noise": noise} if noise else None)
    physics = PhysicsCache(cfg, torch.device("cpu")).for_image((1, 32, 32))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    y = physics(x)
    torch.manual_seed(5)
    expected = simulate(x, physics, cfg.noise)
    assert not torch.equal(y, physics.A(x))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_an_operator_that_measures_nothing_is_refused_in_one_line():
    from jfb_inverse.consistency.norm import operator_norm_squared
    from jfb_inverse.errors import OperatorError

    with pytest.raises(ConfigError, match=r"operator\.missing = 0\.5 keeps no pixel of a 1x1 image"):
        build_physics(InpaintingOperator(), (1, 1, 1))
    from deepinv.physics import Inpainting

    nothing = Inpainting(img_size=(1, 8, 8), mask=torch.zeros(1, 8, 8))
    with pytest.raises(OperatorError, match=r"maps images of shape \(1, 8, 8\) to zero"):
        operator_norm_squared(nothing, (1, 8, 8))


def test_mri_mask_lines_and_centre():
    mask = cartesian_mask(MRIOperator(acceleration=4, center_fraction=0.08), 64, 100)
    columns = mask[0]
    assert (mask == columns).all()  # whole k-space lines (columns)
    assert columns.sum() == 25
    assert columns[50 - 4 : 50 + 4].all()  # 8% of 100 around the centre (index W // 2)


def test_mri_single_channel_matches_deepinv_layout():
    op = MRIOperator()
    physics = build_physics(op, (1, 32, 32))
    x = torch.rand(2, 1, 32, 32)
    reference = MRI(mask=cartesian_mask(op, 32, 32), img_size=(32, 32)).A(torch.cat([x, torch.zeros_like(x)], 1))
    assert torch.allclose(physics.A(x), reference, atol=1e-6)


@pytest.mark.parametrize("op", [MRIOperator(), SuperResOperator()], ids=["mri", "superres"])
def test_closed_form_prox_solves_the_normal_equations(op):
    physics = build_physics(op, (2, 32, 32))
    z, gamma = torch.rand(2, 2, 32, 32), torch.tensor(0.7)
    y = physics.A(torch.rand(2, 2, 32, 32))
    p = physics.prox_l2(z, y, gamma)
    residual = p - z + gamma * physics.A_adjoint(physics.A(p) - y)
    assert residual.norm() < 1e-5 * z.norm()


def test_ct30_reference_definition():
    cfg = resolve_config("ct")
    assert (cfg.operator.kind, cfg.operator.angles, cfg.operator.angular_range) == ("ct", 30, 180.0)
    assert cfg.noise.kind == "gaussian" and cfg.noise.relative and math.isclose(cfg.noise.sigma, 0.015)
    assert cfg.data.source == "phantoms" and cfg.data.patch_size == cfg.data.eval_size == 128


TINY = {
    "data": {"source": "phantoms", "patch_size": 32, "eval_size": 32},  # phantoms: no image loading
    "model": {"width": 8, "depth": 3},
    "training": {"steps": 3, "batch_size": 2, "log_every": 1, "device": "cpu"},
}


@pytest.mark.parametrize(
    ("name", "channels"),
    [("ct", 1), ("inpainting", 1), ("inpainting", 3), ("superres", 3), ("mri", 1)],
)
def test_short_training_run(name, channels, tmp_path):
    assert resolve_config(name, preset="quick").training.steps == 20
    overrides = {**TINY, "data": {**TINY["data"], "channels": channels}}
    result = train(resolve_config(name, overrides=overrides), tmp_path, "cpu")
    assert result.steps == 3 and len(result.history) == 3
    assert all(math.isfinite(r["loss"]) and r["iterations"] >= 1 for r in result.history)
    assert (tmp_path / "model.pt").is_file()


def test_ct_with_a_resampled_detector_runs_the_filtered_step_and_the_baselines():
    # The ct problem's consistency step is the filtered projection; with operator.detectors the
    # physics is a DetectorResampledTomography, whose FBP goes through the native detector.
    from jfb_inverse.baselines import baselines_for, filtered_backprojection
    from jfb_inverse.models import build_model

    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:20] = 1.0
    resampled = build_physics(TomographyOperator(angles=60, detectors=92), (1, 32, 32))
    native = resampled.tomography
    y = resampled.A(x)
    same = filtered_backprojection(torch.einsum("do,bcoa->bcda", resampled.to_native, y), native, "hann")
    assert torch.equal(filtered_backprojection(y, resampled, "hann"), same)

    cfg = resolve_config("ct", overrides={"operator": {"detectors": 40}, "data": {"eval_size": 32}})
    model, cache = build_model(cfg, torch.device("cpu"))
    physics = cache.for_image((1, 32, 32))
    y = physics.A(x)
    with torch.no_grad():
        out = model(y, physics)
        assert out.shape == x.shape and torch.isfinite(out).all()
        for name, baseline in baselines_for("ct", cfg.noise.sigma).items():
            assert torch.isfinite(baseline(y, physics)).all(), name


@pytest.mark.parametrize("angular_range", [180.0, 90.0, 45.0])
def test_fbp_of_a_limited_angle_sinogram_is_a_projection_not_an_amplifier(angular_range):
    # FBP(A .) should keep what the views see (eigenvalue ~1), whatever range they cover: deepinv's
    # pi / (2 n) weight alone made it 180 / range (3.7 at 45 degrees), so eta = 1 in the filtered
    # consistency step overshot by that much.
    from jfb_inverse.baselines import filtered_backprojection

    physics = build_physics(TomographyOperator(angles=30, angular_range=angular_range), (1, 48, 48))
    v = torch.randn(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        w = filtered_backprojection(physics.A(v), physics, "hann")
        top = float((v * w).sum() / (v * v).sum())
        v = w / w.norm()
    assert 0.85 < top < 1.05, top


@pytest.mark.parametrize("name", ["deblur", "ct", "inpainting", "superres", "mri"])
def test_reconstruction_under_inference_mode(name):
    # The CLI reconstructs under torch.inference_mode, where physics built then (deepinv's
    # Downsampling makes its filter buffers at its first use) hold inference tensors, which have
    # no version counter for the operator-norm cache to read.
    from jfb_inverse.models import build_model

    cfg = resolve_config(name, overrides={"model": {"width": 8, "depth": 3}})
    model, cache = build_model(cfg, torch.device("cpu"))
    model.eval()
    x = torch.rand(1, cfg.data.channels, 32, 32)
    with torch.inference_mode():
        physics, _ = cache.for_measurement(tuple(cache.for_image(tuple(x.shape[1:])).A(x).shape[1:]))
        y = physics.A(x)
        out = model(y)  # the physics for y's shape, from the model's own cache
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_the_problem_noise_takes_deepinvs_seed_and_new_parameters():
    # deepinv's Trainer calls physics.update(**params) and physics(x, seed=...): both were ignored.
    from jfb_inverse.models.build import PhysicsCache

    physics = PhysicsCache(resolve_config("ct"), torch.device("cpu")).for_image((1, 32, 32))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    clean = physics.A(x)
    first = physics(x, seed=3)
    assert torch.equal(physics(x, seed=3), first) and not torch.equal(physics(x, seed=4), first)
    physics.update(sigma=torch.tensor(0.15))  # ten times the problem's 1.5% of each sinogram's maximum
    torch.testing.assert_close(physics(x, seed=3) - clean, 10 * (first - clean), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"one sigma for the batch, got a tensor of shape \(2,\)"):
        physics(x, sigma=torch.tensor([0.1, 0.2]))
