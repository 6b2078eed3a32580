"""Tests for jfb_inverse.metrics: PSNR and SSIM cross-checked against scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
import torch
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jfb_inverse.errors import UserError
from jfb_inverse.metrics import psnr, ssim


def _reference(name: str) -> np.ndarray:
    """A 256 x 256 crop of a bundled image, float64 in [0, 1], (H, W) or (H, W, 3)."""
    return getattr(skimage.data, name)()[128:384, 128:384] / 255.0


def _degrade(image: np.ndarray, kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    channel_axis = -1 if image.ndim == 3 else None
    if kind == "noise":
        out = image + 0.1 * rng.standard_normal(image.shape)
    elif kind == "blur":
        out = gaussian(image, sigma=2.0, channel_axis=channel_axis)
    else:  # "slight": a near-perfect reconstruction, where PSNR is most sensitive
        out = image + 0.003 * rng.standard_normal(image.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32).astype(np.float64)  # what a float32 tensor holds


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).float()
    return x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]


@pytest.mark.parametrize("kind", ["noise", "blur", "slight"])
@pytest.mark.parametrize("name", ["camera", "astronaut"])
def test_psnr_ssim_match_skimage(name: str, kind: str) -> None:
    ref = _reference(name).astype(np.float32).astype(np.float64)
    est = _degrade(ref, kind)
    channel_axis = -1 if ref.ndim == 3 else None
    expected_psnr = peak_signal_noise_ratio(ref, est, data_range=1.0)
    expected_ssim = structural_similarity(
        est,
        ref,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=channel_axis,
    )
    got_psnr, got_ssim = psnr(_to_tensor(est), _to_tensor(ref)), ssim(_to_tensor(est), _to_tensor(ref))
    assert got_psnr.shape == got_ssim.shape == (1,)
    assert abs(got_psnr.item() - expected_psnr) < 1e-3
    assert abs(got_ssim.item() - expected_ssim) < 1e-3


def test_batch_is_per_image() -> None:
    ref = _to_tensor(_reference("camera"))[..., :64, :64].repeat(3, 1, 1, 1)
    est = ref.clone()
    est[0] += 0.05
    est[1] = est[1].flip(-1)
    est[2] = est[2] * 0.9
    batch_psnr, batch_ssim = psnr(est, ref), ssim(est, ref)
    assert batch_psnr.shape == batch_ssim.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(batch_psnr[i : i + 1], psnr(est[i], ref[i]))
        torch.testing.assert_close(batch_ssim[i : i + 1], ssim(est[i], ref[i]))


def test_identical_images_give_inf_psnr_and_unit_ssim() -> None:
    ref = torch.rand(2, 3, 32, 32)
    assert torch.isinf(psnr(ref, ref)).all()
    torch.testing.assert_close(ssim(ref, ref), torch.ones(2))


def test_data_range_scales() -> None:
    ref, est = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(psnr(255 * est, 255 * ref, data_range=255.0), psnr(est, ref))
    torch.testing.assert_close(ssim(255 * est, 255 * ref, data_range=255.0), ssim(est, ref), atol=1e-5, rtol=0)
    torch.testing.assert_close(psnr(ref + 0.1, ref), torch.tensor([20.0]), atol=1e-4, rtol=0)
    assert math.isclose(psnr(ref + 0.1, ref, data_range=2.0).item(), 20 + 20 * math.log10(2), abs_tol=1e-4)


def test_metrics_are_differentiable() -> None:
    ref = torch.rand(2, 1, 24, 24)
    est = (ref + 0.1 * torch.randn_like(ref)).requires_grad_(True)
    (psnr(est, ref).sum() + ssim(est, ref).sum()).backward()
    assert est.grad is not None and torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(UserError, match="same shape"):
        psnr(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(torch.rand(16, 16), torch.rand(16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 8, 32), torch.rand(1, 1, 8, 32))
