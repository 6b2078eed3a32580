"""The training figure: loss / PSNR / iterations curves and held-out reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jfb_inverse.atomic import atomic_path
from jfb_inverse.evaluation import Evaluation


def training_figure(history: list[dict[str, Any]], evaluation: Evaluation | None, path: str | Path) -> None:
    """Write a PNG with the training curves (top) and up to 3 held-out examples (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = evaluation.examples[:3] if evaluation else []
    rows = 1 + len(examples)
    fig = plt.figure(figsize=(10, 3 * rows))
    steps = [h["step"] for h in history]
    for i, (key, label) in enumerate(
        (("loss", "MSE loss"), ("psnr", "train PSNR (dB)"), ("iterations", "forward iterations"))
    ):
        ax = fig.add_subplot(rows, 3, i + 1)
        # null in history.jsonl (every step of a record skipped): a gap in the curve.
        ax.plot(steps, [float("nan") if h.get(key) is None else h[key] for h in history])
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        if key == "loss":
            ax.set_yscale("log")
    for r, ex in enumerate(examples):
        row = evaluation.report["images"][r] if evaluation else {}
        keys = ["truth", "measurement", "model"] if "measurement" in ex else ["truth", "model"]
        for c, key in enumerate(keys):
            ax = fig.add_subplot(rows, 3, 3 * (r + 1) + c + 1)
            ax.imshow(ex[key][0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
            title = f"{row.get('name', '')} {key}"
            if key != "truth":
                title += f" {row['psnr'][key]:.2f} dB"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:  # an interrupted redraw keeps the previous figure whole
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
