"""Bring your own forward operator: a line-scan sensor whose measurements are smaller than the image.

``StripedSensor`` blurs each image row horizontally (a motion blur of ``length`` px, circular) and
reads only every ``stride``-th row, so a ``(C, H, W)`` image gives a ``(C, H / stride, W)``
measurement. It subclasses deepinv's ``LinearPhysics`` and defines ``A`` and its exact adjoint
``A_adjoint``; any object with these two methods works too (it is wrapped for you). The noise comes
from the problem's ``noise`` section (Gaussian, sigma 0.01 by default), not from the class. At
start-up the operator must pass a dot-product test ``<A x, y> = <x, A^T y>`` (relative mismatch at
most 1e-3), so a wrong adjoint stops with a clear error instead of training a broken model.

Train it from the command line (the checkpoint records the file path and the arguments)::

    jfb-inverse train --operator examples/custom_operator.py:StripedSensor \\
        --operator-args '{"stride": 2, "length": 5}' --steps 200 --out runs/striped
    jfb-inverse simulate --checkpoint runs/striped --input photo.png --output y.npy --trust-operator
    jfb-inverse reconstruct --checkpoint runs/striped --input y.npy --output x.png --trust-operator

(``--trust-operator`` confirms that the checkpoint may import this file, which runs its code.)
The optional ``image_shape`` method tells ``reconstruct`` the image shape of a measurement; without
it, set ``operator.img_size = [C, H, W]`` in a config file.

Or from Python, with the same trainer::

    from jfb_inverse.problems.custom import custom_config
    from jfb_inverse.training.loop import train

    cfg = custom_config(StripedSensor, {"stride": 2, "length": 5}, overrides={"training": {"steps": 200}})
    train(cfg, "runs/striped")

Run this file to do just that (``python examples/custom_operator.py --help``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor


class StripedSensor(LinearPhysics):
    """Horizontal motion blur of ``length`` px (circular), then every ``stride``-th row: ``(C, H / stride, W)``."""

    def __init__(
        self, stride: int = 2, length: int = 5, img_size: tuple[int, int, int] | None = None, device: Any = "cpu"
    ) -> None:
        super().__init__(img_size=img_size, device=device)
        if stride < 1 or length < 1:
            raise ValueError(f"stride and length must be positive, got {stride} and {length}")
        if img_size is not None and img_size[1] % stride:
            raise ValueError(f"image height {img_size[1]} must be divisible by stride {stride}")
        self.stride = stride
        self.length = length

    def A(self, x: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """Blur each row, keep every ``stride``-th row."""
        blurred = sum(torch.roll(x, shift, dims=-1) for shift in range(self.length)) / self.length
        return blurred[..., :: self.stride, :]

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:  # noqa: N802 - deepinv's name
        """Put the rows back (zeros between them), then the transposed blur (shifts the other way)."""
        b, c, h, w = y.shape
        full = y.new_zeros(b, c, h * self.stride, w)
        full[..., :: self.stride, :] = y
        return sum(torch.roll(full, -shift, dims=-1) for shift in range(self.length)) / self.length

    @staticmethod
    def image_shape(measurement_shape: tuple[int, ...], stride: int = 2, **_: Any) -> tuple[int, int, int]:
        """The image shape of a measurement (used by ``reconstruct``)."""
        c, h, w = measurement_shape
        return c, h * stride, w


def main() -> None:
    """Train on the bundled images for a few steps, then reconstruct a held-out image."""
    from jfb_inverse.datasets import load_builtin

    from jfb_inverse.metrics import psnr
    from jfb_inverse.problems import simulate
    from jfb_inverse.problems.custom import custom_config
    from jfb_inverse.training.checkpoint import load_model
    from jfb_inverse.training.loop import train

    parser = argparse.ArgumentParser(description="Train an implicit network on the StripedSensor operator.")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="runs/striped")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    opts = parser.parse_args()

    cfg = custom_config(
        StripedSensor,
        {"stride": 2, "length": 5},
        overrides={
            "data": {"patch_size": opts.patch_size, "eval_size": opts.patch_size},
            "model": {"width": opts.width},
            "training": {"steps": opts.steps, "batch_size": opts.batch_size, "device": "cpu"},
        },
    )
    result = train(
        cfg, opts.out, on_log=lambda r: print(f"step {r['step']}: loss {r['loss']:.2e}, psnr {r['psnr']:.2f}")
    )
    print(f"trained {result.steps} steps in {result.seconds:.1f} s -> {opts.out}/model.pt")

    model, cfg, physics = load_model(opts.out, trust_operator=True)  # our own operator, from this file
    x = load_builtin("camera", size=cfg.data.eval_size)[None]
    y = simulate(x, physics.for_image(tuple(x.shape[1:])), cfg.noise, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_hat = model(y)  # the image shape comes from StripedSensor.image_shape
    score = float(psnr(x_hat.clamp(0, 1), x))
    print(f"measurement {tuple(y.shape[1:])} -> image {tuple(x_hat.shape[1:])}, PSNR {score:.2f} dB")


if __name__ == "__main__":
    main()
