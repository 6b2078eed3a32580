"""Which precision the learned regulariser runs in (``training.precision``).

``auto``: bf16 autocast while training on a CPU with native bf16 arithmetic (AVX512-BF16 or AMX,
through oneDNN), where the regulariser's convolutions run about 2x faster (forward and backward;
a whole deblur training step 1.5x, measured on an AMD EPYC with AVX512-BF16), and fp32 otherwise:
on CUDA bf16 gained only 1.1x (kernel launches bound the step), and reconstructions (eval mode)
always, because bf16's rounding leaves a fixed-point residual floor near 1e-4, the inference
tolerance. Training's tolerance (1e-3) stays above that floor.
"""

from __future__ import annotations

import functools
from typing import get_args

import torch

from jfb_inverse.problems.config import Precision


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); False where torch cannot tell.

    Not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: that is true on any AVX-512 CPU, where
    oneDNN emulates bf16 (no faster, and less precise).
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers: absent in some builds
        return False


def effective_precision(precision: Precision, device: torch.device, training: bool) -> str:
    """The precision that ``precision`` means on ``device`` in training or eval mode."""
    if precision not in get_args(Precision):  # a typo must not run in some other precision
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(get_args(Precision))}")
    if precision != "auto":
        return precision
    return "bf16" if training and device.type == "cpu" and native_bf16_cpu() else "fp32"
