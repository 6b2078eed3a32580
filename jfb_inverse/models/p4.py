"""Convolutions equivariant to quarter-turns (p4 group convolutions, Cohen & Welling, "Group
equivariant convolutional networks", ICML 2016), for a regulariser that is rotation-equivariant by
construction rather than by averaging four applications of ``D`` at evaluation.

A hidden layer of ``fields * 4`` channels holds, per field, one channel per orientation
(channel ``4 f + r``: field ``f`` seen turned by ``r`` quarter-turns). Turning the input by ``t``
quarter-turns turns every hidden channel by ``t`` and cycles its orientation ``r -> r + t``; the
image-valued first input and last output just turn. Each layer stores a base kernel and builds its
full weight by turning and cycling copies of it, so a layer costs what a plain convolution of the
same shape costs, with a quarter of the parameters (for the hidden-to-hidden layers).

Why: ``D`` averaged over quarter-turns (``model.equivariance = "rotations"``) scored higher than the
network as trained, but costs four applications of ``D`` per iteration at evaluation, and training
never sees the averaged map. Here ``T`` is equivariant in training and in evaluation at the cost of
one application.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from jfb_inverse.models.layers import onednn_applies, shifted_sum_applies, shifted_sum_conv2d

#: Where a layer's input and output live: ``lift`` image -> fields, ``group`` fields -> fields,
#: ``project`` fields -> image.
P4Kind = Literal["lift", "group", "project"]
ORIENTATIONS = 4


def _turn(w: Tensor, r: int) -> Tensor:
    """``w`` turned by ``r`` quarter-turns over its last two (spatial) dimensions."""
    return torch.rot90(w, r, dims=(-2, -1)) if r % ORIENTATIONS else w


class P4Conv2d(nn.Module):
    """A ``kernel_size`` (odd, dilated, stride 1, zero padding to the same size) convolution
    equivariant to quarter-turns.

    ``lift``: ``in_channels`` image channels to ``out_channels = 4 * fields`` (kernel of orientation
    ``r``: the base kernel turned by ``r``). ``group``: ``4 * fields`` to ``4 * fields``; the kernel
    from input orientation ``s`` to output orientation ``r`` is the base kernel of relative
    orientation ``s - r`` turned by ``r``. ``project``: ``4 * fields`` to ``out_channels`` image
    channels, the ``group`` kernel summed over the output orientations. Biases are shared by the
    four orientations of a field. ``zero_init`` starts the layer at zero (a residual's last layer).
    """

    def __init__(
        self,
        kind: P4Kind,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"P4Conv2d needs an odd kernel_size (same-size output), got {kernel_size}")
        for name, count in (("in_channels", in_channels), ("out_channels", out_channels)):
            hidden = (name == "in_channels" and kind != "lift") or (name == "out_channels" and kind != "project")
            if hidden and count % ORIENTATIONS:
                raise ValueError(f"P4Conv2d({kind!r}) needs {name} divisible by 4 (one per orientation), got {count}")
        self.kind: P4Kind = kind
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.padding = dilation * (kernel_size // 2)
        k = kernel_size
        out_base = out_channels if kind == "project" else out_channels // ORIENTATIONS
        if kind == "lift":
            shape: tuple[int, ...] = (out_base, in_channels, k, k)
        else:
            shape = (out_base, in_channels // ORIENTATIONS, ORIENTATIONS, k, k)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_base))
        #: Lay the built weight out channels-last (set by ``apply_memory_format``).
        self.channels_last = False
        if zero_init:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)
        else:
            # nn.Conv2d's default: uniform in +-1/sqrt(fan_in) over the full layer's fan-in.
            bound = 1 / math.sqrt(in_channels * k * k)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)

    def full_weight(self) -> Tensor:
        """The ``(out_channels, in_channels, k, k)`` weight of the equivalent plain convolution."""
        w = self.weight
        if self.kind == "lift":
            full = torch.stack([_turn(w, r) for r in range(ORIENTATIONS)], dim=1)
            return full.reshape(self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        # Output orientation r: relative orientations cycled by r (roll: slot s holds s - r), turned by r.
        per_output = [_turn(w.roll(r, dims=2), r) for r in range(ORIENTATIONS)]
        k = self.kernel_size
        if self.kind == "project":
            return torch.stack(per_output).sum(0).reshape(self.out_channels, self.in_channels, k, k)
        return torch.stack(per_output, dim=1).reshape(self.out_channels, self.in_channels, k, k)

    def full_bias(self) -> Tensor:
        """The bias of the equivalent plain convolution (a field's bias on its four orientations)."""
        return self.bias if self.kind == "project" else self.bias.repeat_interleave(ORIENTATIONS)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution (with the package's faster CPU forms where they apply)."""
        weight, bias = self.full_weight(), self.full_bias()
        if self.channels_last:
            # empty_like + copy_, not .contiguous(): that returns a 1-input-channel weight as it is.
            weight = torch.empty_like(weight, memory_format=torch.channels_last).copy_(weight)
        pad, dil = (self.padding, self.padding), (self.dilation, self.dilation)
        if shifted_sum_applies(x, self.out_channels, (1, 1)):
            return shifted_sum_conv2d(x, weight, bias, pad, dil)
        if onednn_applies(x, weight, (1, 1)):
            return torch.mkldnn_convolution(x, weight, bias, pad, (1, 1), dil, 1)
        return F.conv2d(x, weight, bias, padding=pad, dilation=dil)

    def extra_repr(self) -> str:
        return (
            f"{self.kind}, {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}"
        )
