"""Layers with a faster CPU inference path; same parameters and results as their torch parents."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.nn import functional as F


class SingleOutputConv2d(nn.Conv2d):
    """A ``Conv2d`` to one output channel whose CPU forward without autograd is a 1x1 convolution
    to ``k*k`` planes (a matrix product for channels-last inputs) followed by a sum of ``k*k``
    shifted planes.

    Why: on the CPU, oneDNN runs a many-to-one 3x3 convolution about as slowly as a many-to-16
    one, half the time of a 32-to-32 convolution. The shifted-sum form is several times faster
    (part 5 of ``benchmarks/profile_hot_path.py``). Only the no-grad path changes (the forward
    solves and inference). With autograd on, the plain convolution runs: the shifted-sum form's
    input-only backward (the VJPs of implicit differentiation) was measured 3-3.5x slower. The
    state dict and the outputs (to float rounding) are those of ``nn.Conv2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution (the shifted-sum form when it is the faster one)."""
        if not self._shifted_sum_applies(x):
            return super().forward(x)
        return shifted_sum_conv2d(x, self.weight, self.bias, self.padding, self.dilation)  # type: ignore[arg-type]

    def _shifted_sum_applies(self, x: Tensor) -> bool:
        return (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dim() == 4
            and self.out_channels == 1
            and self.groups == 1
            and self.stride == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )


class OneDNNConv2d(nn.Conv2d):
    """A ``Conv2d`` whose fp32 CPU forward without autograd always runs oneDNN.

    Why: for a batch of one with under 20,480 input values (the regulariser's first layer on one
    grey image of up to 143x143, as in every reconstruction and evaluation at 128 px), PyTorch
    picks its reference convolution instead of oneDNN, then copies the output to the
    channels-last layout: 0.74 against 0.23 ms at 1x128^2 (part 6 of
    ``benchmarks/profile_hot_path.py``). Elsewhere both run the same oneDNN kernel. Parameters,
    state dict and outputs are those of ``nn.Conv2d``; with autograd (reverse or forward mode),
    under autocast or ``torch.compile``, with oneDNN switched off, or for other dtypes the plain
    convolution runs.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution (oneDNN directly when it applies)."""
        if not self._onednn_applies(x):
            return super().forward(x)
        return torch.mkldnn_convolution(
            x,
            self.weight,
            self.bias,
            self.padding,  # type: ignore[arg-type]
            self.stride,
            self.dilation,
            self.groups,
        )

    def _onednn_applies(self, x: Tensor) -> bool:
        return (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            # Stride 1, the package's case. oneDNN's kernel for a strided, dilated filter on a tiny
            # input crashes the process (SIGSEGV, one thread; nn.Conv2d does too at batch 2, where
            # PyTorch picks oneDNN), while nn.Conv2d at batch 1 takes its reference path and works.
            and tuple(self.stride) == (1, 1)
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled  # the user's switch (torch.backends.mkldnn.flags)
            # torch.compile traces with fake tensors, which the oneDNN entry point refuses.
            and not torch.compiler.is_compiling()
            # Nor has it a forward-mode derivative (torch.func.jvp, forward_ad) for a dual input.
            and forward_ad.unpack_dual(x).tangent is None
        )


class HalfReLU(nn.ReLU):
    """An in-place ``ReLU`` whose no-grad CPU path for bf16 and fp16 inputs clamps the same bits
    read as int16: a 16-bit float with its sign bit set is a negative int16, so clamping those to
    0 is ReLU (and sends -0.0 to +0.0).

    Why: PyTorch's bf16 ``relu_`` on the CPU ran 6x slower than this (0.128 against 0.020 ms on
    8x32x64^2 channels-last, one thread; 3.5x slower than the fp32 ``relu_`` on twice the bytes),
    which made the four ReLUs of the regulariser ~9% of a bf16 forward solve. One difference: a
    NaN whose sign bit is set becomes 0 instead of NaN. Only NaNs made inside the network from
    finite inputs can meet that (overflow, as in fp32), and ``D``'s residual form passes a NaN
    iterate through to its output anyway. Elsewhere (autograd on, fp32, GPU) it is ``nn.ReLU``.
    """

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """``relu_(x)`` (the int16 clamp when it applies)."""
        if x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu" and not torch.is_grad_enabled():
            torch.clamp_min_(x.view(torch.int16), 0)
            return x
        return super().forward(x)


def shifted_sum_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], dilation: tuple[int, int]
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, dilation=dilation)`` for a one-output-channel
    ``weight`` (stride 1, zero padding), as a 1x1 convolution to ``kh*kw`` planes and a sum of
    shifted planes. Differentiable (``benchmarks/profile_hot_path.py`` times its VJP)."""
    batch, c_in, height, width = x.shape
    _, _, kh, kw = weight.shape
    # Plane k of the 1x1 convolution is tap k = (i, j) of the kernel: planes[k] = sum_c w[0, c, i, j] x[:, c].
    taps = weight.permute(2, 3, 0, 1).reshape(kh * kw, c_in)
    if x.is_contiguous(memory_format=torch.channels_last) and x.numel() > 0:
        # Channels-last x is a (B*H*W, C) matrix: one matrix product gives the planes, (k*k, B, H, W).
        # F.conv2d with a 1x1 weight ran PyTorch's reference path here, not oneDNN (3.4x slower).
        planes = torch.mm(taps, x.permute(0, 2, 3, 1).reshape(-1, c_in).t()).view(kh * kw, batch, height, width)
    else:
        planes = F.conv2d(x, taps[:, :, None, None]).transpose(0, 1)
    dtype = planes.dtype
    # The sum runs in at least fp32 (as the convolution accumulates) even when autocast gave bf16
    # planes; float64 stays float64.
    acc = torch.promote_types(dtype, torch.float32)
    ph, pw = padding
    padded = F.pad(planes.to(acc), (pw, pw, ph, ph))
    dh, dw = dilation
    h = padded.shape[-2] - dh * (kh - 1)
    w = padded.shape[-1] - dw * (kw - 1)
    # A fresh buffer: for a 1x1 output, expand(...).contiguous() would return the bias itself, and
    # the in-place sum below would then write into the parameter.
    out = padded.new_empty(batch, h, w)
    if bias is not None:
        out.copy_(bias.to(acc).view(1, 1, 1).expand_as(out))
    else:
        out.zero_()
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        out += padded[k, :, i * dh : i * dh + h, j * dw : j * dw + w]
    return out.unsqueeze(1).to(dtype)
