"""The faster layers equal the torch operations they replace: ``SingleOutputConv2d`` (``nn.Conv2d``
wherever its shifted-sum form is used), ``binomial_smooth`` (a depthwise 3x3 convolution) and
``HalfReLU`` (``nn.ReLU``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jfb_inverse.implicit import spectral_normalize
from jfb_inverse.models import build_model
from jfb_inverse.models.layers import HalfReLU, SingleOutputConv2d
from jfb_inverse.problems import resolve_config


def _pair(
    c_in: int, c_out: int, layer: type[nn.Conv2d] = SingleOutputConv2d, seed: int = 0, **kwargs: object
) -> tuple[nn.Conv2d, nn.Conv2d]:
    """A plain ``nn.Conv2d`` and the package's ``layer`` with the same parameters."""
    torch.manual_seed(seed)
    plain = nn.Conv2d(c_in, c_out, **kwargs)  # type: ignore[arg-type]
    fast = layer(c_in, c_out, **kwargs)  # type: ignore[arg-type]
    fast.load_state_dict(plain.state_dict())  # the same parameters as a plain Conv2d
    return plain, fast


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "padding": 2, "dilation": 2},
        {"kernel_size": 3, "padding": 0, "bias": False},
        {"kernel_size": 5, "padding": 1},
        {"kernel_size": (3, 5), "padding": (1, 2)},
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_no_grad_forward_matches_conv2d(kwargs: dict[str, object], channels_last: bool) -> None:
    plain, fast = _pair(8, 1, **kwargs)
    x = torch.randn(3, 8, 13, 17)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = plain(x), fast(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_with_autograd_it_is_the_plain_convolution_and_gradients_match() -> None:
    plain, fast = _pair(6, 1, kernel_size=3, padding=1)
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    out = fast(x)
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    v = torch.randn_like(out)
    grads_fast = torch.autograd.grad(out, (x, fast.weight, fast.bias), v)
    grads_plain = torch.autograd.grad(plain(x), (x, plain.weight, plain.bias), v)
    for a, b in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(a, b)


def test_several_output_channels_keep_the_plain_path() -> None:
    plain, fast = _pair(4, 3, kernel_size=3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x))


def test_bf16_autocast_output_is_bf16_and_close_to_fp32() -> None:
    plain, fast = _pair(16, 1, kernel_size=3, padding=1)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast(x)
    with torch.no_grad():
        expected = plain(x)
    assert got.dtype == torch.bfloat16
    # bf16 inputs and weights (8-bit mantissa) over 144 products: a few parts in a thousand.
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=2e-2 * float(expected.abs().max()))


def test_spectral_normalised_layer_uses_the_normalised_weight() -> None:
    plain, fast = _pair(8, 1, kernel_size=3, padding=1)
    spectral_normalize(fast)
    fast.eval()  # no power-iteration update: the weight is fixed between the two calls
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        expected = nn.functional.conv2d(x, fast.weight, fast.bias, padding=1)
        got = fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain(x))  # the normalisation changed the layer


def test_regularisers_end_in_a_single_output_conv_and_reconstructions_are_unchanged() -> None:
    cfg = resolve_config("deblur")
    model, cache = build_model(cfg, torch.device("cpu"))
    last = model.regularizer.net[-1]
    assert isinstance(last, SingleOutputConv2d)
    with torch.no_grad():
        for p in last.parameters():  # a non-zero last layer, so that it matters
            p.normal_(0.0, 0.05)
    plain = nn.Conv2d(last.in_channels, 1, 3, padding=1)
    plain.load_state_dict(last.state_dict())
    physics = cache.for_image((1, 32, 32))
    y = physics.A(torch.rand(2, 1, 32, 32))
    model.eval()
    with torch.no_grad():
        fast_out = model(y, physics)
        model.regularizer.net[-1] = plain
        plain_out = model(y, physics)
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (1, 4, 3, 3), (0, 4, 5, 5)])
def test_tiny_outputs_never_write_into_the_bias(shape: tuple[int, ...]) -> None:
    padding = 0 if shape[-1] == 3 else 1
    plain, fast = _pair(4, 1, kernel_size=3, padding=padding)
    bias = fast.bias.detach().clone()
    x = torch.randn(*shape)
    with torch.no_grad():
        for _ in range(3):
            got = fast(x)
        expected = plain(x)
    assert torch.equal(fast.bias.detach(), bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_float64_keeps_float64_accuracy() -> None:
    plain, fast = _pair(8, 1, kernel_size=3, padding=1)
    plain.double()
    fast.double()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        got, expected = fast(x), plain(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_shifted_sum_function_is_differentiable_like_conv2d() -> None:
    from jfb_inverse.models.layers import shifted_sum_conv2d

    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 7, requires_grad=True)
    w = torch.randn(1, 4, 3, 3, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    out = shifted_sum_conv2d(x, w, b, (2, 2), (2, 2))
    ref = nn.functional.conv2d(x, w, b, padding=2, dilation=2)
    v = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad(out, (x, w, b), v), torch.autograd.grad(ref, (x, w, b), v), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_binomial_smooth_is_the_depthwise_binomial_convolution(channels: int) -> None:
    from jfb_inverse.models.regularizers import binomial_smooth

    torch.manual_seed(2)
    v = torch.randn(2, channels, 7, 10, dtype=torch.float64, requires_grad=True)
    row = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    kernel = (torch.outer(row, row) / 16).expand(channels, 1, 3, 3)
    padded = nn.functional.pad(v, (1, 1, 1, 1), mode="replicate")
    expected = nn.functional.conv2d(padded, kernel, groups=channels)
    got = binomial_smooth(v)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # Constants pass unchanged (the weights sum to 1, replicate boundary), and gradients match.
    constant = torch.full((1, channels, 4, 5), 0.3)
    torch.testing.assert_close(binomial_smooth(constant), constant)
    w = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(got, v, w)[0], torch.autograd.grad(expected, v, w)[0])


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((1, 1, 50, 70), {"padding": 1}),  # batch of one, under 20,480 values: PyTorch's slow path
        ((3, 1, 20, 20), {"padding": 2, "dilation": 2}),
        ((1, 3, 16, 16), {"padding": 1, "stride": 2, "bias": False}),
    ],
)
def test_onednn_conv_equals_conv2d_and_keeps_autograd(shape: tuple[int, ...], kwargs: dict[str, object]) -> None:
    from jfb_inverse.models.layers import OneDNNConv2d

    plain, fast = _pair(shape[1], 8, OneDNNConv2d, seed=3, kernel_size=3, **kwargs)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert fast._onednn_applies(x) == (kwargs.get("stride", 1) == 1)  # strided: the plain path
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    # With autograd the plain convolution runs, so gradients are PyTorch's.
    out = fast(x)
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16  # under autocast too


def test_onednn_conv_steps_aside_for_forward_mode_and_when_onednn_is_off() -> None:
    from jfb_inverse.models.layers import OneDNNConv2d

    plain, fast = _pair(1, 4, OneDNNConv2d, seed=4, kernel_size=3, padding=1)
    x, tangent = torch.randn(1, 1, 9, 9), torch.randn(1, 1, 9, 9)
    with torch.no_grad():
        # Forward mode (no formula for oneDNN's entry point): the plain convolution's JVP, i.e. conv(tangent).
        _, jvp = torch.func.jvp(fast, (x,), (tangent,))
        torch.testing.assert_close(jvp, plain(tangent) - plain.bias.view(1, -1, 1, 1))
        with torch.backends.mkldnn.flags(enabled=False):
            assert not fast._onednn_applies(x)
        assert fast._onednn_applies(x)


@pytest.mark.slow
def test_onednn_conv_compiles() -> None:
    from jfb_inverse.models.layers import OneDNNConv2d

    layer = OneDNNConv2d(1, 4, 3, padding=1)
    x = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(layer)(x), layer(x), rtol=1e-5, atol=1e-5)


def test_onednn_conv_strided_dilated_on_a_tiny_input_matches_conv2d_in_a_subprocess() -> None:
    # oneDNN's kernel crashed the process (SIGSEGV, one thread) on this input, where nn.Conv2d at
    # batch 1 runs its reference path: the layer runs oneDNN itself at stride 1 only.
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from jfb_inverse.models.layers import OneDNNConv2d\n"
        "m = OneDNNConv2d(3, 1, (3, 1), padding=1, dilation=(1, 2), stride=2)\n"
        "x = torch.randn(1, 3, 1, 1).to(memory_format=torch.channels_last)\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(m(x), torch.nn.Conv2d.forward(m, x))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_relu_equals_relu_on_16_bit_floats_without_autograd(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :4] = torch.tensor([-0.0, float("inf"), -float("inf"), float("nan")], dtype=dtype)
    expected = torch.relu(x)
    with torch.no_grad():
        out = HalfReLU()(x)
    assert out.data_ptr() == x.data_ptr()  # in place, as nn.ReLU(inplace=True)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    assert (out >= 0).sum() == out.numel() - 1  # every value but the NaN is >= 0: -0.0 and -inf gave 0


def test_half_relu_with_autograd_or_fp32_is_relu_and_gradients_match() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(HalfReLU()(x.clone()), torch.relu(x), rtol=0, atol=0)
    a = x.bfloat16().requires_grad_()
    b = a.detach().clone().requires_grad_()
    (HalfReLU()(a * 1) * torch.arange(a.numel()).view_as(a)).sum().backward()
    (torch.relu(b * 1) * torch.arange(b.numel()).view_as(b)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_regulariser_in_bf16_is_unchanged_by_the_half_relu() -> None:
    cfg = resolve_config("deblur")
    torch.manual_seed(0)
    model, _ = build_model(cfg, torch.device("cpu"))
    reg = model.regularizer
    with torch.no_grad():
        for p in reg.net[-1].parameters():  # a non-zero last layer, so that N contributes
            p.normal_(0.0, 0.05)
    relus = [(p, name) for p in reg.modules() for name, c in p.named_children() if isinstance(c, HalfReLU)]
    assert len(relus) == cfg.model.depth - 1
    v = torch.rand(2, 1, 24, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = reg(v)
        for parent, name in relus:
            setattr(parent, name, nn.ReLU(inplace=True))
        plain = reg(v)
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)
