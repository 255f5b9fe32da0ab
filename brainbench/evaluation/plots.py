"""Figures for reports: prediction-vs-reference overlays, per-case metric plots, ranking stability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from brainbench.io import write_atomic  # noqa: E402


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
    return _save(figure, path)


def case_metric_png(frame: pd.DataFrame, metric: str, teams: Sequence[str], path: str | Path, title: str = "",
                    unit: str = "") -> Path:
    """One panel per region: a box of the per-case values of ``metric`` per team, cases as jittered dots.

    ``frame`` is the long table ``team, case, region, metric, value``; teams appear left to right in
    the order given (the leaderboard's).
    """
    rows = frame[frame["metric"] == metric]
    regions = list(dict.fromkeys(rows["region"]))
    figure, axes = plt.subplots(1, max(1, len(regions)), figsize=(3.2 + 2.6 * len(regions), 4.2), squeeze=False)
    jitter = np.random.default_rng(0)
    for ax, region in zip(axes[0], regions):
        per_team = [rows[(rows["region"] == region) & (rows["team"] == t)]["value"].dropna().to_numpy() for t in teams]
        ax.boxplot(per_team, widths=0.5, showfliers=False)
        for position, values in enumerate(per_team, start=1):
            ax.scatter(position + jitter.uniform(-0.12, 0.12, values.size), values, s=14, alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(teams) + 1), teams, rotation=45, ha="right", fontsize=8)
        ax.set_title(region)
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    figure.suptitle(title or f"per-case {metric}")
    return _save(figure, path)


def rank_stability_png(frequencies: pd.DataFrame, original_ranks: Sequence[int], path: str | Path,
                       title: str = "") -> Path:
    """challengeR-style blob plot: a disc per (team, rank) with area ∝ how often the bootstrap gave it.

    ``frequencies`` is teams (in leaderboard order) × rank, fractions summing to 1 per team (as
    :meth:`brainbench.evaluation.stats.BootstrapRanks.frequencies`); the original rank is a black cross.
    """
    teams = list(frequencies.index)
    figure, ax = plt.subplots(figsize=(1.6 + 0.9 * len(teams), 4.2))
    for x, team in enumerate(teams):
        fractions = frequencies.loc[team]
        shown = fractions[fractions > 0]
        ax.scatter(np.full(len(shown), x), shown.index.to_numpy(dtype=float), s=600 * shown.to_numpy(),
                   alpha=0.6, color=plt.cm.tab10(x % 10), edgecolors="none")
    ax.scatter(range(len(teams)), original_ranks, marker="x", color="black", zorder=3, label="original rank")
    ax.set_xticks(range(len(teams)), teams, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(1, len(teams) + 1))
    ax.set_ylim(len(teams) + 0.7, 0.3)
    ax.set_ylabel("rank (1 = best)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "rank stability (bootstrap)")
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG atomically and release it."""
    figure.tight_layout()
    try:
        return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(figure)
