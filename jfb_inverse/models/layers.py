"""Layers with a faster CPU inference path; same parameters and results as their torch parents."""

from __future__ import annotations

from typing import Any

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
    """The regulariser's first layer (a few input channels to many): a ``Conv2d`` with two faster
    CPU paths, same parameters, state dict and results.

    - Without autograd, fp32: oneDNN always runs. For a batch of one with under 20,480 input
      values (one grey image of up to 143x143, as in every reconstruction and evaluation at
      128 px), PyTorch picks its reference convolution instead, then copies the output to the
      channels-last layout: 0.74 against 0.23 ms at 1x128^2 (part 6 of
      ``benchmarks/profile_hot_path.py``). Not under autocast or ``torch.compile``, with oneDNN
      switched off, for other dtypes or forward-mode AD: the plain convolution runs.
    - With autograd, for an input that needs a gradient (every VJP of implicit differentiation,
      and JFB's backward, as the input depends on the learned step size): the input gradient
      comes from :func:`shifted_sum_conv2d` (:class:`_FewInputChannelConv`, stride 1).
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution (oneDNN directly when it applies)."""
        if self._shifted_sum_input_grad_applies(x):
            return _few_input_channel_conv(x, self.weight, self.bias, self.padding, self.dilation)  # type: ignore[arg-type]
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

    def _shifted_sum_input_grad_applies(self, x: Tensor) -> bool:
        kh, kw = self.kernel_size
        return (
            torch.is_grad_enabled()
            and x.requires_grad
            and x.device.type == "cpu"
            and x.dim() == 4
            and self.in_channels <= 4
            and self.groups == 1
            and self.stride == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            # The input gradient is then a convolution with padding d (k - 1) - p >= 0, same size.
            and self.padding[0] <= self.dilation[0] * (kh - 1)
            and self.padding[1] <= self.dilation[1] * (kw - 1)
            and not torch.compiler.is_compiling()
            and forward_ad.unpack_dual(x).tangent is None
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
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled  # the user's switch (torch.backends.mkldnn.flags)
            # torch.compile traces with fake tensors, which the oneDNN entry point refuses.
            and not torch.compiler.is_compiling()
            # Nor has it a forward-mode derivative (torch.func.jvp, forward_ad) for a dual input.
            and forward_ad.unpack_dual(x).tangent is None
        )


class _FewInputChannelConv(torch.autograd.Function):
    """``F.conv2d`` (stride 1) whose input gradient, a many-to-few convolution, is a shifted sum.

    oneDNN computes the input gradient of a 1-to-32 convolution as slowly as a 32-to-32 one
    (6.3 ms at 8x64^2, a quarter of every VJP of the regulariser); :func:`shifted_sum_conv2d`
    takes 0.7 ms (``benchmarks/profile_hot_path.py``, part 7). The weight and bias gradients stay
    oneDNN's. The backward is made of differentiable operations, so double backward (the
    Lipschitz monitor's Jacobian-vector products) works.
    """

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], dilation: tuple[int, int]
    ) -> Tensor:
        return F.conv2d(x, weight, bias, 1, padding, dilation)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, bias, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation, ctx.has_bias = padding, dilation, bias is not None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            kh, kw = weight.shape[-2:]
            (ph, pw), (dh, dw) = ctx.padding, ctx.dilation
            # d/dx of a stride-1 convolution: the flipped, transposed kernel, padded d (k - 1) - p.
            transposed = weight.flip(-2, -1).transpose(0, 1)
            grad_x = shifted_sum_conv2d(grad, transposed, None, (dh * (kh - 1) - ph, dw * (kw - 1) - pw), ctx.dilation)
        if need_w or need_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                [weight.shape[0]] if ctx.has_bias else None,
                (1, 1),
                ctx.padding,
                ctx.dilation,
                False,
                (0, 0),
                1,
                (False, need_w, need_b),
            )
        return grad_x, grad_w, grad_b, None, None


def _few_input_channel_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], dilation: tuple[int, int]
) -> Tensor:
    """:class:`_FewInputChannelConv` under autocast as ``F.conv2d`` is: inputs cast to the autocast
    dtype, so the saved tensors and the backward run in it too."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device_type=device, enabled=False):
            cast = None if bias is None else bias.to(dtype)
            return _FewInputChannelConv.apply(x.to(dtype), weight.to(dtype), cast, padding, dilation)
    return _FewInputChannelConv.apply(x, weight, bias, padding, dilation)


def shifted_sum_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int], dilation: tuple[int, int]
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, dilation=dilation)`` for a few-output-channel
    ``weight`` (stride 1, zero padding), as a 1x1 convolution to ``kh*kw*c_out`` planes and a sum of
    shifted planes. Differentiable (``benchmarks/profile_hot_path.py`` times its VJP)."""
    batch, c_in, height, width = x.shape
    c_out, _, kh, kw = weight.shape
    # Plane (k, o) of the 1x1 convolution is tap k = (i, j) of output channel o:
    # planes[k, o] = sum_c w[o, c, i, j] x[:, c].
    taps = weight.permute(2, 3, 0, 1).reshape(kh * kw * c_out, c_in)
    if x.is_contiguous(memory_format=torch.channels_last) and x.numel() > 0:
        # Channels-last x is a (B*H*W, C) matrix: one matrix product gives the planes, (k*k, C_out, B, H, W).
        # F.conv2d with a 1x1 weight ran PyTorch's reference path here, not oneDNN (3.4x slower).
        planes = torch.mm(taps, x.permute(0, 2, 3, 1).reshape(-1, c_in).t())
        planes = planes.view(kh * kw, c_out, batch, height, width)
    else:
        planes = F.conv2d(x, taps[:, :, None, None]).view(batch, kh * kw, c_out, height, width).permute(1, 2, 0, 3, 4)
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
    out = padded.new_empty(c_out, batch, h, w)
    if bias is not None:
        out.copy_(bias.to(acc).view(c_out, 1, 1, 1).expand_as(out))
    else:
        out.zero_()
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        out += padded[k, :, :, i * dh : i * dh + h, j * dw : j * dw + w]
    out = out.transpose(0, 1)
    return (out if c_out == 1 else out.contiguous()).to(dtype)
