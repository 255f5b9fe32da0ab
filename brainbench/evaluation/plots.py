"""Figures for reports: prediction-vs-reference overlays on orthogonal slices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from brainbench.data.io import write_atomic  # noqa: E402


def overlay_png(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, path: str | Path,
                title: str = "") -> Path:
    """Three orthogonal slices through the reference's centre of mass (the brain's if empty).

    Args:
        image: (X, Y, Z) intensities shown in grey (e.g. FLAIR).
        reference / prediction: (X, Y, Z) foreground masks; reference contour in green,
            prediction filled in red.
    """
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    focus = reference if reference.any() else image != 0
    centre = [int(round(c)) for c in np.argwhere(focus).mean(axis=0)] if focus.any() else [s // 2 for s in image.shape]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for axis, name, ax in zip(range(3), ("sagittal", "coronal", "axial"), axes):
        take = lambda volume: np.rot90(np.take(volume, centre[axis], axis=axis))  # noqa: E731
        ax.imshow(take(image), cmap="gray")
        ax.imshow(np.ma.masked_where(~take(prediction), take(prediction)), cmap="autumn", alpha=0.45)
        if take(reference).any():
            ax.contour(take(reference), levels=[0.5], colors="lime", linewidths=1.0)
        ax.set_title(f"{name} slice {centre[axis]}")
        ax.axis("off")
    figure.suptitle(f"{title}\nprediction (red) vs reference (green contour)")
    figure.tight_layout()

    def save(tmp: Path) -> None:
        figure.savefig(tmp, format="png", dpi=90)

    try:
        return write_atomic(path, save)
    finally:
        plt.close(figure)
