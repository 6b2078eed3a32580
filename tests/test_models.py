"""ImplicitReconstructor: sizes, untrained behaviour, gradients, and the deepinv plugin contract."""

from __future__ import annotations

import deepinv as dinv
import pytest
import torch
from deepinv.physics.functional.blur import gaussian_blur
from jfb_inverse.datasets import load_builtin
from torch.nn import functional as F

from jfb_inverse.implicit import lipschitz_estimate
from jfb_inverse.metrics import psnr
from jfb_inverse.models import ImplicitReconstructor, SmoothingResidualCNN, SmoothingResidualUNet, build_model
from jfb_inverse.problems import resolve_config


def blur_physics(h: int, w: int) -> dinv.physics.BlurFFT:
    return dinv.physics.BlurFFT(img_size=(1, h, w), filter=gaussian_blur(sigma=(2.0, 2.0)))


def test_untrained_model_is_a_converging_classical_iteration_that_beats_the_measurement():
    x = load_builtin("camera", size=96)[None]
    physics = blur_physics(96, 96)
    y = physics.A(x) + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    model = ImplicitReconstructor(SmoothingResidualCNN(), eta_init=3.0).eval()
    with torch.no_grad():
        x_hat = model(y, physics)
    assert model.last_stats is not None and model.last_stats.all_converged
    assert float(psnr(x_hat.clamp(0, 1), x)) > float(psnr(y, x)) + 1.0


def test_any_image_size_with_physics_built_from_the_measurement():
    cfg = resolve_config("deblur")
    model, _ = build_model(cfg)
    model.eval()
    for h, w in ((40, 56), (33, 71)):
        y = torch.rand(2, 1, h, w)
        with torch.no_grad():
            assert model(y).shape == (2, 1, h, w)


def test_physics_are_built_on_the_measurements_device_not_the_build_device():
    """A model moved after build_model (``.to("cuda")``) must get physics where its measurements
    are. Without a second real device, a cache whose build device is ``meta`` stands in for the
    device the model left: physics built there would hold no data and the solve would fail."""
    from jfb_inverse.models import PhysicsCache

    cfg = resolve_config("deblur")
    model, cpu_cache = build_model(cfg)
    model.eval()
    y = cpu_cache.for_image((1, 24, 32))(torch.rand(1, 1, 24, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        expected = model(y)
    left_behind = PhysicsCache(cfg, torch.device("meta"))
    model.physics_factory = left_behind.for_measurement
    with torch.no_grad():
        torch.testing.assert_close(model(y), expected)
    # evaluate() simulates its measurements where the model is, with physics from the same cache.
    from jfb_inverse.evaluation import evaluate

    x = torch.rand(1, 24, 32, generator=torch.Generator().manual_seed(1))
    scores = [
        evaluate(model, cache, cfg, [("x", x)], with_baselines=False).report["mean"]["psnr"]["model"]
        for cache in (cpu_cache, left_behind)
    ]
    assert scores[0] == pytest.approx(scores[1], abs=1e-9)


def test_a_measurement_in_another_dtype_is_one_clear_error():
    model, _ = build_model(resolve_config("deblur"))
    model.eval()
    with pytest.raises(ValueError, match=r"measurements are torch.float64 on cpu, the model's weights torch.float32"):
        model(torch.rand(1, 1, 24, 24, dtype=torch.float64))
    with torch.no_grad():  # the same model in float64 takes float64 measurements
        assert model.double()(torch.rand(1, 1, 24, 24, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("make_y", "physics", "message"),
    [
        # An (H, W) array would broadcast into H reconstructions of one row each.
        (lambda y: y[0, 0], True, r"shape \(32, 32\) do not fit the physics, which makes \(1, 32, 32\).*y\[None\]"),
        (lambda y: y[0, 0], False, r"shape \(32, 32\) do not fit the physics \(IndexError"),
        (lambda y: y[0], True, r"must be a batch|do not fit the physics"),
        (
            lambda y: torch.rand(1, 1, 40, 40),
            True,
            r"\(1, 1, 40, 40\) do not fit the physics, which makes \(1, 32, 32\).*, or the physics of these",
        ),
        # A half-precision model failed in the physics' FFT, and that read as a shape error.
        (lambda y: y.half(), "half", r"weights are torch.float16; it runs in float32 or float64"),
        (lambda y: y.repeat(1, 3, 1, 1), False, r"have 3 channel\(s\), but the regulariser takes 1"),
        (lambda y: y[:0], True, r"the batch of measurements is empty"),
        (lambda y: y.numpy(), True, r"must be a torch.Tensor of shape \(B, ...\), got ndarray"),
    ],
)
def test_a_measurement_of_the_wrong_shape_or_type_is_one_clear_error(make_y, physics, message):
    model, cache = build_model(resolve_config("deblur"))
    model.eval()
    p = cache.for_image((1, 32, 32))
    y = p.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    if physics == "half":
        model.half()
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model(make_y(y), p if physics else None)


def test_a_start_or_physics_of_the_wrong_kind_is_one_clear_error():
    model, cache = build_model(resolve_config("deblur"))
    model.eval()
    p = cache.for_image((1, 32, 32))
    y = p.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        for u0 in (torch.zeros(2, 1, 32, 32), torch.zeros(1, 1, 32, 32, dtype=torch.float64)):
            with pytest.raises(ValueError, match=r"u0 is .* but the images of these measurements are \(1, 1, 32, 32\)"):
                model(y, p, u0=u0)
        assert model(y, p, u0=torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)  # a start like its own: taken
        assert model.last_stats is not None and model.last_stats.all_converged

        class Op:
            def A(self, x):
                return x

            A_adjoint = A

        with pytest.raises(ValueError, match="must be a deepinv LinearPhysics, got Op; wrap"):
            model(y, Op())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp64"}, "unknown precision 'fp64'"),
        ({"init": "zeros"}, "unknown init 'zeros'; choose one of tikhonov, adjoint"),
        ({"step": "newton"}, "unknown step 'newton'"),
        ({"eta_init": 0.0}, "eta_init must be a positive number"),
        ({"init_lam": -1.0}, "init_lam must be a positive number"),
    ],
)
def test_reconstructor_settings_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImplicitReconstructor(SmoothingResidualCNN(), **kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SmoothingResidualCNN(depth=1), "depth must be an integer >= 2"),
        (lambda: SmoothingResidualCNN(width=0), "width must be an integer >= 1"),
        (lambda: SmoothingResidualUNet(channels=0), "channels must be an integer >= 1"),
    ],
)
def test_regularizer_sizes_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_model_in_double_trains_in_a_lower_precision_and_stays_double():
    """The regulariser's output under autocast is cast back to the iterate's dtype, not to fp32."""
    physics = blur_physics(32, 32)
    model = ImplicitReconstructor(SmoothingResidualCNN(), eta_init=3.0, precision="bf16").double().train()
    y = physics.A(torch.rand(2, 1, 32, 32, dtype=torch.float64))
    out = model(y, physics)
    assert out.dtype == torch.float64
    out.square().mean().backward()
    assert model.log_eta.grad is not None and torch.isfinite(model.log_eta.grad)


def test_training_mode_gives_gradients_to_regularizer_and_step_size():
    physics = blur_physics(32, 32)
    model = ImplicitReconstructor(SmoothingResidualCNN(width=8, depth=3)).train()
    x = torch.rand(2, 1, 32, 32)
    loss = (model(physics.A(x), physics) - x).square().mean()
    loss.backward()
    assert model.log_eta.grad is not None and model.log_eta.grad != 0
    last = model.regularizer.net[-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0


def test_untrained_map_is_contractive():
    physics = blur_physics(32, 32)
    model = ImplicitReconstructor(SmoothingResidualCNN(), eta_init=3.0)
    y = physics.A(torch.rand(1, 1, 32, 32))
    fn, u0 = model.fixed_point_map(y, physics)
    assert float(lipschitz_estimate(fn, u0, n_iter=30).max()) < 1.0


def test_unet_regularizer_starts_as_the_smoother_and_keeps_any_size():
    unet = SmoothingResidualUNet(width=8)
    dilated = SmoothingResidualCNN(width=8, depth=3)
    for h, w in ((37, 50), (64, 64), (5, 9)):
        v = torch.rand(2, 1, h, w)
        with torch.no_grad():
            out = unet(v)
            assert out.shape == v.shape
            # the last layer starts at zero: the untrained D is the same linear smoother as the CNN's
            torch.testing.assert_close(out, dilated(v))


def test_unet_model_trains_and_its_untrained_map_is_contractive():
    cfg = resolve_config("deblur", overrides={"model": {"arch": "unet", "width": 8}})
    model, cache = build_model(cfg)
    assert isinstance(model.regularizer, SmoothingResidualUNet)
    physics = cache.for_image((1, 32, 32))
    y = physics.A(torch.rand(1, 1, 32, 32))
    fn, u0 = model.fixed_point_map(y, physics)
    assert float(lipschitz_estimate(fn, u0, n_iter=30).max()) < 1.0
    model.train()
    x = torch.rand(2, 1, 36, 44)
    physics = cache.for_image((1, 36, 44))
    (model(physics.A(x), physics) - x).square().mean().backward()
    grads = [p.grad for p in model.regularizer.net.parameters()]
    assert all(g is not None for g in grads) and float(model.regularizer.net.last.weight.grad.abs().sum()) > 0


def test_plugin_inside_deepinv_test_and_trainer(tmp_path):
    physics = blur_physics(32, 32)
    physics.noise_model = dinv.physics.GaussianNoise(sigma=0.01)
    images = torch.stack([load_builtin(n, size=32) for n in ("coffee", "chelsea", "moon", "page")])

    class Clean(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i]

    dataset = Clean()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    model = ImplicitReconstructor(SmoothingResidualCNN(width=8, depth=3), eta_init=3.0)
    trainer = dinv.Trainer(
        model=model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        train_dataloader=loader,
        epochs=2,
        losses=dinv.loss.SupLoss(metric=dinv.metric.MSE()),
        metrics=dinv.metric.PSNR(),
        save_path=str(tmp_path),
        online_measurements=True,
        show_progress_bar=False,
        verbose=False,
        plot_images=False,
        device="cpu",
        non_blocking_transfers=False,
    )
    trained = trainer.train()
    results = dinv.test(
        trained,
        loader,
        physics,
        metrics=dinv.metric.PSNR(),
        online_measurements=True,
        device="cpu",
        show_progress_bar=False,
        verbose=False,
    )
    psnr_key = next(k for k in results if "PSNR" in k and "std" not in k and "no learning" not in k.lower())
    assert results[psnr_key] > 20


def test_deepinv_trainer_keywords_are_taken_and_unknown_ones_refused():
    physics = blur_physics(16, 16)
    model = ImplicitReconstructor(SmoothingResidualCNN(width=4, depth=2)).eval()
    y = physics.A(torch.rand(2, 1, 16, 16))
    with torch.no_grad():
        plain = model(y, physics)
        # deepinv's Trainer passes the ground truth with its convergence plots; it must not change the result.
        assert torch.equal(model(y, physics, x_gt=torch.zeros(2, 1, 16, 16)), plain)
        # A tensor returned here would be unpacked by the Trainer along its batch of 2 without an error.
        with pytest.raises(ValueError, match="plot_convergence_metrics=False"):
            model(y, physics, x_gt=None, compute_metrics=True)
        with pytest.raises(TypeError, match="u_0"):
            model(y, physics, u_0=y)  # a misspelt start is an error, not silently ignored


def _reconstruct_camera(physics, size: int, *models):
    """``camera`` at ``size`` px, its measurement, and each model's reconstruction (eval mode)."""
    x = load_builtin("camera", channels=1, size=size)[None]
    y = physics.for_image((1, size, size))(x)
    with torch.no_grad():
        return x, y, [m.eval()(y) for m in models]


def test_auto_memory_format_is_channels_last_on_cpu_only_among_non_cuda_devices():
    from jfb_inverse.models.build import channels_last_is_faster

    assert channels_last_is_faster("cpu")
    assert not channels_last_is_faster("meta")  # neither CPU nor CUDA: PyTorch's default layout


def test_an_unknown_memory_format_is_refused():
    from jfb_inverse.models.build import apply_memory_format

    with pytest.raises(ValueError, match="unknown memory_format 'channels_lsat'"):
        apply_memory_format(SmoothingResidualCNN(), "channels_lsat", torch.device("cpu"))


def test_memory_format_changes_the_layout_not_the_reconstruction():
    # auto = channels-last on the CPU; the same weights in PyTorch's default layout give the same
    # reconstruction to float rounding.
    fast, physics = build_model(resolve_config("deblur"), "cpu")
    plain, _ = build_model(resolve_config("deblur", overrides={"model": {"memory_format": "contiguous"}}), "cpu")
    middle = fast.regularizer.net[2].weight  # 32 -> 32 channels: the layouts differ
    assert middle.is_contiguous(memory_format=torch.channels_last) and not middle.is_contiguous()
    assert plain.regularizer.net[2].weight.is_contiguous()
    torch.manual_seed(0)
    for p in fast.regularizer.net[-1].parameters():  # a non-zero residual net
        torch.nn.init.normal_(p, 0.0, 0.01)
    plain.load_state_dict(fast.state_dict())
    assert plain.regularizer.net[2].weight.is_contiguous()  # loading keeps the module's layout
    _, _, (a, b) = _reconstruct_camera(physics, 64, fast, plain)
    assert (a - b).abs().max() < 1e-4
    assert fast.last_stats.iterations.tolist() == plain.last_stats.iterations.tolist()


def test_spectral_norm_model_starts_as_the_smoother_and_learns_its_residual():
    # A zero last layer cannot be spectrally normalised (norm 0 -> NaN); the residual starts at
    # zero through its gain instead, and the gain is what the first gradient reaches.
    cfg = resolve_config("deblur", overrides={"model": {"spectral_norm": True}})
    model, physics = build_model(cfg, "cpu")
    plain, _ = build_model(resolve_config("deblur"), "cpu")
    x, y, (a, b) = _reconstruct_camera(physics, 32, model, plain)
    assert torch.isfinite(a).all() and model.last_stats.all_converged
    assert (a - b).abs().max() < 1e-5  # both are the untrained smoother iteration
    model.train()
    F.mse_loss(model(y), x).backward()
    assert model.regularizer.residual_gain.grad.abs() > 0


def test_fixed_smoother_stays_fp32_under_bf16_autocast():
    # bf16 rounds the smoothed image by ~0.4%: a fixed-point residual could then never reach 1e-3.
    # With N's zero-initialised last layer, D is the smoother blend alone, so under autocast it
    # must match fp32 to float rounding.
    d = SmoothingResidualCNN(channels=1, width=8, depth=3)
    v = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = d(v)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = d(v)
    assert float((low.float() - reference).abs().max()) < 1e-6


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_for_training_on_a_native_bf16_cpu(monkeypatch, native):
    import jfb_inverse.models.precision as precision

    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: native)
    model, cache = build_model(resolve_config("deblur", overrides={"model": {"width": 8, "depth": 3}}))
    assert model.precision == "auto"  # the default
    seen: list[torch.dtype] = []
    model.regularizer.net[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    y = torch.rand(1, 1, 32, 32)
    physics = cache.for_image((1, 32, 32))
    for training in (True, False):
        model.train(training)
        seen.clear()
        with torch.no_grad():
            out = model(y, physics)
        assert out.dtype == torch.float32
        assert set(seen) == {torch.bfloat16 if (training and native) else torch.float32}
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.effective_precision("auto", cuda, training=True) == "fp32"
    assert precision.effective_precision("bf16", cpu, training=False) == "bf16"  # asked for: always


@pytest.mark.parametrize("depth", [3, 5, 7])
def test_the_residual_net_in_tiles_is_the_whole_image_net(monkeypatch, depth):
    # Large images are reconstructed with N run tile by tile (less memory): exact when each tile
    # reads N's receptive radius (halo) around it, at the image's edges as inside.
    import jfb_inverse.models.regularizers as regularizers

    torch.manual_seed(0)
    reg = SmoothingResidualCNN(width=6, depth=depth).double().eval()
    for conv in reg.net.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.normal_(conv.weight, std=0.3)  # the last layer starts at zero: no signal
    assert reg.halo == {3: 3, 5: 6, 7: 12}[depth]
    x = torch.rand(2, 1, 45, 61, dtype=torch.float64)
    with torch.no_grad():
        whole = reg(x)
        monkeypatch.setattr(regularizers, "TILE", 16)  # 3 x 4 tiles, the last ones partial
        tiled = reg(x)
        short = regularizers.in_tiles(reg.net, x, reg.halo - 1, 16)  # one row of halo too few
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    assert (short - reg.net(x)).abs().max() > 1e-6  # ... is not exact: the test can tell
    # With autograd, or in training mode, the whole image as before.
    monkeypatch.setattr(regularizers, "in_tiles", lambda *_: pytest.fail("tiled"))
    reg(x.requires_grad_()).sum().backward()
    with torch.no_grad():
        reg.train()(x)


@pytest.mark.parametrize("checkpoint", ["builtin:deblur", "builtin:ct"])
def test_a_loaded_model_can_be_saved_whole_and_loaded_back(checkpoint):
    # torch.save(model) failed: the physics cache held an lru_cache wrapper that pickle cannot store.
    import io

    from jfb_inverse.training.checkpoint import load_model

    model, _, operators = load_model(checkpoint)
    x = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    y = operators.for_image((1, 48, 48)).A(x)
    with torch.no_grad():
        before = model(y)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        after = loaded(y)  # its physics rebuilt for this measurement
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert torch.equal(loaded.last_stats.iterations, model.last_stats.iterations)
