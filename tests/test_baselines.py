"""Classical baselines: Tikhonov / Wiener, TV, FBP, grid-search tuning."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from deepinv.physics import BlurFFT, Inpainting, LinearPhysics, Tomography
from deepinv.physics.functional import gaussian_blur
from skimage import data
from skimage.color import rgb2gray
from skimage.transform import resize

from jfb_inverse import baselines as B

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These are hundreds of small-tensor iterations: on a busy 2-core machine intra-op threads
    # oversubscribe the cores and run some 20x slower than one thread. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for data range 1."""
    return 10 * torch.log10(1 / (x - ref).square().flatten(1).mean(1))


def _gray(image: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """A skimage image as a (1, 1, size, size) float32 tensor in [0, 1]."""
    arr = rgb2gray(image) if image.ndim == 3 else image.astype(np.float64) / (255.0 if image.max() > 1 else 1.0)
    arr = resize(arr, (size, size), anti_aliasing=True)
    return torch.from_numpy(np.clip(arr, 0, 1)).float()[None, None]


@pytest.fixture(scope="module")
def camera() -> torch.Tensor:
    return _gray(data.camera())


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    return _gray(data.shepp_logan_phantom())


def _blur(channels: int = 1, size: int = SIZE) -> BlurFFT:
    return BlurFFT(img_size=(channels, size, size), filter=gaussian_blur(sigma=(2.0, 2.0)))


def _noisy(physics, x: torch.Tensor, sigma: float = 0.01) -> torch.Tensor:
    y = physics.A(x)
    return y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))


def _ct(normalize: bool = False, size: int = SIZE) -> Tomography:
    return Tomography(angles=30, img_width=size, circle=False, normalize=normalize)


def test_wiener_with_flat_nsr_is_tikhonov(camera: torch.Tensor) -> None:
    physics = _blur()
    y = _noisy(physics, camera)
    for lam in (1e-3, 1e-2, 1e-1):
        # An algebraic identity: exact up to rounding in float64, and to float32 noise amplified by 1/lam.
        yd = y.double()
        torch.testing.assert_close(B.wiener(yd, physics, lam), B.tikhonov(yd, physics, lam), atol=1e-5, rtol=0)
        torch.testing.assert_close(B.wiener(y, physics, lam), B.tikhonov(y, physics, lam), atol=1e-3, rtol=0)


def test_tikhonov_solves_its_normal_equations(camera: torch.Tensor) -> None:
    physics, lam = _blur(), 0.05
    y = _noisy(physics, camera)
    x = B.tikhonov(y, physics, lam)
    residual = physics.A_adjoint(physics.A(x)) + lam * x - physics.A_adjoint(y)
    assert residual.abs().max() < 1e-4


def test_tikhonov_via_cg_for_non_decomposable_physics(camera: torch.Tensor) -> None:
    # A generic LinearPhysics wrapping the blur: prox_l2 falls back to conjugate gradient.
    blur = _blur()
    generic = LinearPhysics(A=blur.A, A_adjoint=blur.A_adjoint, max_iter=200, tol=1e-6)
    y = _noisy(blur, camera)
    torch.testing.assert_close(B.tikhonov(y, generic, 0.05), B.tikhonov(y, blur, 0.05), atol=2e-3, rtol=0)


def test_wiener_rejects_other_physics(camera: torch.Tensor) -> None:
    with pytest.raises(TypeError):
        B.wiener(camera, Inpainting(img_size=(1, SIZE, SIZE), mask=0.5), 0.01)


def test_each_deblurring_baseline_beats_the_measurement(camera: torch.Tensor) -> None:
    physics = _blur()
    y = _noisy(physics, camera)
    base = float(_psnr(y.clamp(0, 1), camera))
    d = B.DEBLUR_DEFAULTS
    outputs = {
        "wiener": B.wiener(y, physics, **d["wiener"]),
        "tikhonov": B.tikhonov(y, physics, **d["tikhonov"]),
        "tv": B.tv_reconstruction(y, physics, **d["tv"]),
    }
    for name, x in outputs.items():
        assert float(_psnr(x.clamp(0, 1), camera)) > base + 1.0, name


def test_tv_beats_tikhonov_on_a_piecewise_constant_image() -> None:
    phantom = _gray(data.shepp_logan_phantom(), 128)
    physics = _blur(size=128)
    y = _noisy(physics, phantom)
    # Tikhonov gets its best weight on this very image; TV only a reasonable one.
    tik = max(float(_psnr(B.tikhonov(y, physics, lam).clamp(0, 1), phantom)) for lam in (3e-4, 1e-3, 3e-3, 1e-2))
    tv = float(_psnr(B.tv_reconstruction(y, physics, lam=1e-4, n_iter=500), phantom))
    assert tv > tik + 2.0


def test_tv_objective_decreases_and_converges(camera: torch.Tensor) -> None:
    physics, lam = _blur(), 1e-3
    y = _noisy(physics, camera)
    iterates = [B.tv_reconstruction(y, physics, lam, n_iter=n) for n in (25, 50, 100, 200, 400, 800)]
    values = [float(B.tv_objective(x, y, physics, lam)) for x in iterates]
    assert all(b <= a * (1 + 1e-4) for a, b in itertools.pairwise(values)), values
    # Successive gaps shrink: the tail changes far less than the start.
    assert values[-2] - values[-1] < 0.05 * (values[0] - values[-1])
    # ... and the limit is below what the start point (the blurred image) scores.
    assert values[-1] < float(B.tv_objective(y.clamp(0, 1), y, physics, lam))


def test_tv_without_lambda_fits_the_data(camera: torch.Tensor) -> None:
    physics = _blur()
    y = physics.A(camera)
    x = B.tv_reconstruction(y, physics, lam=0.0, n_iter=300)
    assert float((physics.A(x) - y).square().mean()) < 1e-5


def test_operator_sqnorm() -> None:
    assert B.operator_sqnorm(_blur(), torch.zeros(1, 1, SIZE, SIZE)) == pytest.approx(1.0, abs=1e-5)
    ct, ct_n = _ct(), _ct(normalize=True)
    x = torch.zeros(1, 1, SIZE, SIZE)
    assert B.operator_sqnorm(ct_n, x) == pytest.approx(1.0, rel=1e-2)
    assert B.operator_sqnorm(ct, x) == pytest.approx(float(ct_n.operator_norm) ** 2, rel=1e-2)


def test_fbp_ramp_matches_deepinv_and_windows_share_its_scale(phantom: torch.Tensor) -> None:
    for normalize in (False, True):
        physics = _ct(normalize)
        y = physics.A(phantom)
        ref = physics.A_dagger(y, fbp=True)
        torch.testing.assert_close(B._filtered_backprojection(y, physics, "ramp"), ref, atol=1e-4, rtol=0)
        for name in B.FBP_FILTERS:
            x = B.fbp(y, physics, name)
            # Same scale as deepinv's FBP: the windows only trade resolution for noise.
            assert abs(float(x.mean() / ref.mean()) - 1) < 0.05, name


def test_fbp_noise_free_far_better_than_backprojection(phantom: torch.Tensor) -> None:
    physics = _ct()
    y = physics.A(phantom)
    bp = physics.A_adjoint(y)
    # Best-scaled back-projection, so that only its blur (not its scale) is compared.
    bp = bp * (bp * phantom).sum() / bp.square().sum()
    for name in ("ramp", "hann"):
        assert float(_psnr(B.fbp(y, physics, name).clamp(0, 1), phantom)) > float(_psnr(bp.clamp(0, 1), phantom)) + 5


def test_fbp_rejects_unknown_filter_and_physics(phantom: torch.Tensor) -> None:
    physics = _ct()
    y = physics.A(phantom)
    with pytest.raises(ValueError, match="unknown FBP filter"):
        B.fbp(y, physics, "butterworth")
    with pytest.raises(TypeError):
        B.fbp(y, _blur(), "ramp")


def test_ct_tv_beats_fbp_and_ignores_normalisation(phantom: torch.Tensor) -> None:
    x = phantom
    results = []
    for normalize in (False, True):
        physics = _ct(normalize)
        clean = physics.A(x)
        y = clean + 0.015 * clean.abs().max() * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
        results.append(B.ct_tv(y, physics, **B.CT_DEFAULTS["tv"]))
        fbp = float(_psnr(B.fbp(y, physics, **B.CT_DEFAULTS["fbp"]).clamp(0, 1), x))
        assert float(_psnr(results[-1], x)) > fbp + 1.0
    assert float(_psnr(results[0], results[1])) > 40


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_shape_and_device_are_kept(channels: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.rand(3, channels, 32, 32, device=device)
    physics = BlurFFT(img_size=(channels, 32, 32), filter=gaussian_blur(sigma=(1.0, 1.0)), device=device)
    y = physics.A(x)
    for out in (
        B.wiener(y, physics, 0.01),
        B.tikhonov(y, physics, 0.01),
        B.tv_reconstruction(y, physics, 1e-3, n_iter=20),
    ):
        assert out.shape == x.shape and out.device == x.device and out.dtype == torch.float32
    tv = B.tv_reconstruction(y, physics, 1e-3, n_iter=20)
    assert float(tv.min()) >= 0 and float(tv.max()) <= 1
    # A batch gives what each image gives alone.
    torch.testing.assert_close(tv[1:2], B.tv_reconstruction(y[1:2], physics, 1e-3, n_iter=20), atol=1e-5, rtol=0)


def test_fbp_batch_shape() -> None:
    physics = _ct(size=32)
    x = torch.rand(2, 1, 32, 32)
    y = physics.A(x)
    assert y.shape[-2:] == (46, 30)  # (n_detectors, n_angles)
    assert B.fbp(y, physics, "hann").shape == x.shape


def test_tune_finds_the_best_grid_point(camera: torch.Tensor) -> None:
    def make(images: torch.Tensor) -> tuple[torch.Tensor, BlurFFT]:
        physics = _blur()
        return _noisy(physics, images), physics

    grid = {"nsr": [1e-5, 1e-2, 10.0]}
    result = B.tune(B.wiener, camera, make, grid)
    assert result.best == {"nsr": 1e-2}
    assert [p for p, _ in result.table] == [{"nsr": v} for v in grid["nsr"]]
    assert result.best_psnr == max(s for _, s in result.table)


def test_baselines_for_each_kind(camera: torch.Tensor, phantom: torch.Tensor) -> None:
    blur = _blur()
    y = _noisy(blur, camera)
    methods = B.baselines_for("blur", 0.01)
    assert set(methods) == {"wiener", "tv"}
    for fn in methods.values():
        assert fn(y, blur).shape == camera.shape
    assert set(B.baselines_for("inpainting", 0.01)) == {"tikhonov", "tv"}
    ct = _ct()
    methods = B.baselines_for("ct", 0.015)
    assert set(methods) == {"fbp", "tv"}
    assert methods["fbp"](ct.A(phantom), ct).shape == phantom.shape


@pytest.mark.parametrize("kind", ["inpainting", "superres", "mri"])
def test_the_other_problems_baselines_use_their_own_tuned_weights(kind: str) -> None:
    """They used deblurring's weights: TV 1.8 dB below its best on inpainting's training images."""
    from jfb_inverse.models.build import PhysicsCache
    from jfb_inverse.problems import resolve_config, simulate

    cfg = resolve_config(kind)
    physics = PhysicsCache(cfg, torch.device("cpu")).for_image((1, 32, 32))
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    y = simulate(x, physics, cfg.noise, torch.Generator().manual_seed(0))
    methods, tuned = B.baselines_for(kind, 0.01), B.OTHER_DEFAULTS[kind]
    torch.testing.assert_close(methods["tikhonov"](y, physics), B.tikhonov(y, physics, tuned["tikhonov"]["lam"]))
    torch.testing.assert_close(methods["tv"](y, physics), B.tv_reconstruction(y, physics, **tuned["tv"]))
    assert tuned["tv"]["lam"] != B.DEBLUR_DEFAULTS["tv"]["lam"]
