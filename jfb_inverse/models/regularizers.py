"""Learned regularisers ``D_theta`` for the fixed-point map."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from jfb_inverse.implicit import spectral_normalize
from jfb_inverse.models.layers import HalfReLU, OneDNNConv2d, SingleOutputConv2d

#: Without autograd, ``N`` runs on images wider or taller than this in tiles of at most this size:
#: on the whole image its activations took ~0.4 kB a pixel (a 2048 x 2048 reconstruction peaked at
#: 2.9 GB; a 24-megapixel colour photo would not fit in 24 GB), and the tiles run faster (cache).
TILE = 512


class SmoothingResidual(nn.Module):
    """``D(v) = v - w (v - G v) + N(v)``: a learned blend with a fixed smoothing ``G`` plus a residual net ``N``.

    ``G`` is the 3x3 binomial filter and ``w`` a learned weight in (0, 1); ``N``'s last layer starts
    at zero, so the untrained ``D`` is a mild linear smoother: inside the fixed-point map this makes
    the untrained network a classical regularised iteration (Tikhonov with a smoothness penalty)
    that converges, rather than an unregularised one that amplifies noise. With ``spectral_norm``
    every layer of ``N`` is normalised, which a zero weight cannot be (its norm is 0: the layer
    would output NaN), so ``N`` keeps its last layer's usual random start and is scaled by a
    learned gain that starts at zero instead.

    With ``context_channels > 0``, ``N`` also sees a context image that does not change across the
    iterations (input injection, as in deep equilibrium models): ``D(v, c) = ... + N([v, c])``. The
    reconstructor passes the iteration's start (the Tikhonov or adjoint reconstruction), which tells
    ``N`` what the measurement says about each pixel; ``D`` is then a function of ``v`` alone for a
    given measurement, so ``T`` stays a fixed-point map in ``u``.
    """

    def __init__(
        self,
        net: nn.Module,
        channels: int,
        spectral_norm: bool = False,
        smoothing_init: float = 0.5,
        context_channels: int = 0,
    ) -> None:
        super().__init__()
        self.net = net
        #: Rows of input each output row depends on, above and below (``N``'s receptive radius);
        #: None: ``N`` is not evaluated in tiles (its output depends on the whole image's size).
        self.halo: int | None = None
        self.context_channels = context_channels
        self.residual_gain: nn.Parameter | None = None
        if spectral_norm:
            last = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
            last.reset_parameters()
            self.residual_gain = nn.Parameter(torch.zeros(()))
            spectral_normalize(self.net)
        smoothing_init = min(max(smoothing_init, 1e-4), 1 - 1e-4)
        self.smoothing_logit = nn.Parameter(torch.logit(torch.tensor(smoothing_init)))
        self.channels = channels

    @property
    def smoothing(self) -> Tensor:
        """The learned smoothing weight ``w`` in (0, 1)."""
        return torch.sigmoid(self.smoothing_logit)

    def forward(self, v: Tensor, context: Tensor | None = None) -> Tensor:
        """Apply ``D`` to a batch (B, C, H, W) of any size (with its context, same shape but
        ``context_channels`` channels, when the regulariser takes one)."""
        # The fixed smoother stays in v's precision even under autocast: it carries the whole image,
        # and bf16's rounding of it (~0.4%) would stop the fixed-point residual from reaching 1e-3.
        with torch.autocast(device_type=v.device.type, enabled=False):
            smooth = binomial_smooth(v)
        x = self._with_context(v, context)
        # Not in training mode: a spectral norm's power iteration would advance once per tile.
        if self.halo is not None and not torch.is_grad_enabled() and not self.training:
            residual = in_tiles(self.net, x, self.halo)
        else:
            residual = self.net(x)
        if self.residual_gain is not None:
            residual = residual * self.residual_gain.to(residual.dtype)
        return torch.lerp(v, smooth.to(v.dtype), self.smoothing.to(v.dtype)) + residual

    def _with_context(self, v: Tensor, context: Tensor | None) -> Tensor:
        """``N``'s input: ``v``, or ``v`` and the context stacked along the channels."""
        if not self.context_channels:
            if context is not None:
                raise ValueError("this regulariser takes no context (context_channels=0); call D(v)")
            return v
        if context is None:
            raise ValueError(
                f"this regulariser takes a context of {self.context_channels} channel(s) (input injection); "
                "call D(v, context)"
            )
        if context.shape[:2] != (v.shape[0], self.context_channels) or context.shape[-2:] != v.shape[-2:]:
            raise ValueError(
                f"context of shape {tuple(context.shape)} does not fit v of shape {tuple(v.shape)} "
                f"with {self.context_channels} context channel(s)"
            )
        return torch.cat([v, context.to(v.dtype)], dim=1)


def in_tiles(net: nn.Module, x: Tensor, halo: int, size: int = TILE) -> Tensor:
    """``net(x)`` computed on tiles of at most ``size`` x ``size`` pixels, each read with ``halo``
    pixels of input around it: exact for a network of 'same'-padded convolutions whose receptive
    radius is at most ``halo`` (the outputs a tile's own border padding reaches are cut off)."""
    height, width = x.shape[-2:]
    if height <= size and width <= size:
        return net(x)
    out: Tensor | None = None
    for top in range(0, height, size):
        for left in range(0, width, size):
            bottom, right = min(height, top + size), min(width, left + size)
            y0, x0 = max(0, top - halo), max(0, left - halo)
            y1, x1 = min(height, bottom + halo), min(width, right + halo)
            tile = net(x[..., y0:y1, x0:x1])[..., top - y0 : bottom - y0, left - x0 : right - x0]
            if out is None:
                out = tile.new_empty((*tile.shape[:-2], height, width))
            out[..., top:bottom, left:right] = tile
    assert out is not None
    return out


def binomial_smooth(v: Tensor) -> Tensor:
    """The 3x3 binomial filter ``[1, 2, 1]^T [1, 2, 1] / 16`` per channel, replicate boundary.

    Applied separably as sums of shifted slices: on the CPU, a depthwise ``F.conv2d`` with a 3x3
    kernel on one channel was 3x slower without autograd and 7x with its backward (8x64^2).
    """
    p = F.pad(v, (1, 1, 1, 1), mode="replicate")
    rows = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]
    return (rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :]) * (1 / 16)


def _zero_conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution starting at zero (the last layer of every ``N``)."""
    conv = SingleOutputConv2d(c_in, c_out, 3, padding=1, bias=bias)
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class SmoothingResidualCNN(SmoothingResidual):
    """:class:`SmoothingResidual` with ``N`` a ``depth``-layer CNN of ``width`` channels whose middle
    layers use dilations (1, 2, 4, ..., 2, 1): a wide receptive field at the cost of a 3x3 conv.

    ``bias=False`` leaves the convolutions without biases (a bias-free CNN, Mohan et al., "Robust and
    interpretable blind image denoising via bias-free convolutional neural networks", ICLR 2020):
    with ReLU, ``N(a v) = a N(v)`` for ``a > 0``, so ``D`` commutes with a change of contrast."""

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        depth: int = 5,
        spectral_norm: bool = False,
        smoothing_init: float = 0.5,
        context_channels: int = 0,
        bias: bool = True,
    ) -> None:
        _check_sizes(channels=channels, width=width, context_channels=(context_channels, 0))
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an integer >= 2 (a first and a last layer), got {depth!r}")
        c_in = channels + context_channels
        layers: list[nn.Module] = [OneDNNConv2d(c_in, width, 3, padding=1, bias=bias), HalfReLU()]
        for d in _dilations(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d, bias=bias), HalfReLU()]
        layers.append(_zero_conv(width, channels, bias))
        super().__init__(nn.Sequential(*layers), channels, spectral_norm, smoothing_init, context_channels)
        self.halo = 2 + sum(_dilations(depth - 2))  # the first and the last layer add a row each


class SmoothingResidualUNet(SmoothingResidual):
    """:class:`SmoothingResidual` with ``N`` a small three-scale U-Net.

    Each scale has two 3x3 convolutions; channels double as the resolution halves, so every scale
    costs about the same, and the receptive field is 35 px (the 5-layer dilated CNN's is 13) at a
    similar cost per pixel. Inputs of any size are padded (replicate) to a multiple of 4 and
    cropped back. ``bias=False``: no biases, as in :class:`SmoothingResidualCNN`.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 16,
        spectral_norm: bool = False,
        smoothing_init: float = 0.5,
        context_channels: int = 0,
        bias: bool = True,
    ) -> None:
        _check_sizes(channels=channels, width=width, context_channels=(context_channels, 0))
        image_channels = channels + context_channels

        def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            # OneDNNConv2d: the first layer sees a one-channel image (PyTorch's slow path at batch 1).
            first = OneDNNConv2d if c_in == image_channels else nn.Conv2d
            return nn.Sequential(
                first(c_in, c_out, 3, stride=stride, padding=1, bias=bias),
                HalfReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias),
                HalfReLU(),
            )

        w = width
        net = _UNet(
            enc1=block(image_channels, w),
            enc2=block(w, 2 * w, stride=2),
            mid=block(2 * w, 4 * w, stride=2),
            up2=nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2, bias=bias),
            dec2=block(4 * w, 2 * w),
            up1=nn.ConvTranspose2d(2 * w, w, 2, stride=2, bias=bias),
            dec1=block(2 * w, w),
            last=_zero_conv(w, channels, bias),
        )
        super().__init__(net, channels, spectral_norm, smoothing_init, context_channels)


class _UNet(nn.Module):
    """The three-scale body of :class:`SmoothingResidualUNet` (skip connections by concatenation)."""

    def __init__(self, **layers: nn.Module) -> None:
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, v: Tensor) -> Tensor:
        h, w = v.shape[-2:]
        pad_h, pad_w = -h % 4, -w % 4
        if pad_h or pad_w:
            v = F.pad(v, (0, pad_w, 0, pad_h), mode="replicate")
        e1 = self.enc1(v)
        e2 = self.enc2(e1)
        m = self.mid(e2)
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.last(d1)[..., :h, :w]


def _dilations(n: int) -> list[int]:
    """Dilations rising then falling: 1, 2, 4, ..., 4, 2, 1 (length ``n``)."""
    up = [2**i for i in range((n + 1) // 2)]
    return (up + up[: n // 2][::-1])[:n] if n > 0 else []


def _check_sizes(**sizes: int | tuple[int, int]) -> None:
    """Each size an integer of at least 1 (or of a given minimum, passed as ``(value, minimum)``):
    a zero width would build a network that cannot learn, without a word."""
    for name, item in sizes.items():
        value, minimum = item if isinstance(item, tuple) else (item, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
