"""Figures for reports and notebooks: overlays, channels, learning curves, per-case metric plots, ranking stability.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot, so importing or using this
module never touches the user's backend or rcParams; a notebook displays the returned figure, and
:func:`save_figure` writes it as PNG atomically. The ``*_png`` helpers are thin wrappers for callers
that only want the file.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from enum import IntEnum
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from brainbench.errors import BrainbenchError
from brainbench.evaluation.protocols import METRIC_UNITS
from brainbench.io import write_atomic

PLANES = ("sagittal", "coronal", "axial")
"""Overlay rows: a slice across array axis 0, 1 and 2 respectively."""
OVERLAY_COLUMNS = ("reference", "prediction", "error map")


class ErrorCategory(IntEnum):
    """What the error map shows at a voxel; agreement on background is left transparent."""

    BACKGROUND = 0  # both background
    AGREEMENT = 1  # both foreground with the same label
    FALSE_POSITIVE = 2  # predicted foreground where the reference is background
    FALSE_NEGATIVE = 3  # reference foreground predicted as background
    WRONG_LABEL = 4  # both foreground, different labels


ERROR_STYLE = {
    ErrorCategory.AGREEMENT: ("agreement", "white"),
    ErrorCategory.FALSE_POSITIVE: ("false positive", "red"),
    ErrorCategory.FALSE_NEGATIVE: ("false negative", "#0044ff"),
    ErrorCategory.WRONG_LABEL: ("wrong label", "yellow"),
}
"""Legend name and colour of each shown error category."""
LABEL_COLOURS = ("#ff7f0e", "#2ca02c", "#9467bd", "#e377c2", "#8c564b", "#17becf", "#98df8a", "#d2b48c", "#808000",
                 "#005f5f")
"""Label colours, cycled by label rank: none near an error colour, so a label never reads as an error."""
LEGEND_WRAP = 30
"""Characters per line of a label's legend entry, so long names keep the labels legend under two columns."""


def error_map(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per-voxel :class:`ErrorCategory` (uint8) of ``prediction`` against ``reference`` (label maps, 0 = background)."""
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise BrainbenchError(f"error map: reference shape {reference.shape} differs from prediction's "
                              f"{prediction.shape}")
    in_reference, in_prediction = reference != 0, prediction != 0
    both = in_reference & in_prediction
    categories = np.select([both & (reference == prediction), both, in_prediction, in_reference],
                           [ErrorCategory.AGREEMENT, ErrorCategory.WRONG_LABEL, ErrorCategory.FALSE_POSITIVE,
                            ErrorCategory.FALSE_NEGATIVE], ErrorCategory.BACKGROUND)
    return categories.astype(np.uint8)


def overlay_figure(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, labels: Mapping[int, str],
                   title: str = "", spacing: Sequence[float] | None = None) -> Figure:
    """Tri-planar overlay: rows sagittal / coronal / axial, columns reference / prediction / error map.

    The slices pass through the reference's foreground centre of mass (the image's non-zero centre
    when the reference is empty), so the lesion is in view. ``image`` (X, Y, Z) is shown in grey;
    ``reference`` and ``prediction`` are (X, Y, Z) label maps in the edition's values (e.g. BraTS 1, 2,
    4), coloured per label with a legend from ``labels`` (value → name; 0 is background and never
    drawn; values missing from ``labels`` are named by their value). ``spacing`` (mm per axis, e.g. the
    grid's) keeps anisotropic voxels in proportion; without it voxels are drawn square.
    """
    image = np.asarray(image, dtype=np.float32)
    reference = _label_map(reference, "overlay: the reference")
    prediction = _label_map(prediction, "overlay: the prediction")
    if image.ndim != 3 or reference.shape != image.shape or prediction.shape != image.shape:
        raise BrainbenchError(f"overlay: image {image.shape}, reference {reference.shape} and prediction "
                              f"{prediction.shape} must be one (X, Y, Z) shape")
    names = _label_names(labels, reference, prediction)
    error_colours = ListedColormap(["none", *(colour for _, colour in ERROR_STYLE.values())])
    error_norm = BoundaryNorm(np.arange(-0.5, len(ErrorCategory)), error_colours.N)
    errors = error_map(reference, prediction)
    centre = _focus_centre(image, reference)
    low, high = _grey_window(image)
    spacing = _voxel_spacing(spacing, "overlay")

    figure = Figure(figsize=(10, 11), layout="constrained")
    axes = figure.subplots(len(PLANES), len(OVERLAY_COLUMNS))
    for axis, plane in enumerate(PLANES):
        aspect = _slice_aspect(spacing, axis)
        for ax, column in zip(axes[axis], OVERLAY_COLUMNS):
            ax.imshow(_cut(image, axis, centre[axis]), cmap="gray", vmin=low, vmax=high, interpolation="nearest",
                      aspect=aspect)
            if column == "error map":
                ax.imshow(np.ma.masked_equal(_cut(errors, axis, centre[axis]), ErrorCategory.BACKGROUND),
                          cmap=error_colours, norm=error_norm, alpha=0.7, interpolation="nearest", aspect=aspect)
            else:
                _draw_labels(ax, _cut(reference if column == "reference" else prediction, axis, centre[axis]), names,
                             aspect)
            ax.set_title(f"{column}: {plane} slice {centre[axis]}", fontsize=9)
            ax.axis("off")
    # Labels under the reference/prediction columns, errors under the error-map column: each legend is
    # narrower than its columns (wrapped names, at most two columns), so the two never overlap.
    _labels_legend(figure, names, loc="outside lower left", ncol=min(2, len(names)))
    counts = np.bincount(errors.ravel(), minlength=len(ErrorCategory))
    figure.legend(handles=[Patch(facecolor=colour, edgecolor="black", linewidth=0.5,
                                 label=f"{name} ({counts[category]} voxels)")
                           for category, (name, colour) in ERROR_STYLE.items()],
                  loc="outside lower right", title="error map (whole volume)", fontsize=8)
    figure.suptitle(title or "prediction vs reference")
    return figure


def channels_figure(images: Mapping[str, np.ndarray], label: np.ndarray | None, labels: Mapping[int, str],
                    title: str = "", spacing: Sequence[float] | None = None) -> Figure:
    """A case at a glance: one axial slice, one panel per channel (titled with its name), labels overlaid.

    ``images`` maps channel name → (X, Y, Z) volume, all one shape; ``label`` is a label map of that
    shape (or None: channels only). The slice passes through the label's foreground centre of mass (the
    channels' non-zero centre when the label is empty or None), or through the labelled slice nearest to
    it when scattered labels (microbleeds) leave the centre's slice empty, so that they are in view.
    Labels are coloured and named as in :func:`overlay_figure`'s label panels (legend from ``labels``,
    value → name, background never drawn).
    """
    channels = {name: np.asarray(volume, dtype=np.float32) for name, volume in images.items()}
    shapes = {name: volume.shape for name, volume in channels.items()}
    if not channels or any(len(shape) != 3 for shape in shapes.values()) or len(set(shapes.values())) > 1:
        raise BrainbenchError(f"channels figure: expected one or more channels of one (X, Y, Z) shape, got {shapes}")
    shape = next(iter(shapes.values()))
    names: dict[int, str] = {}  # no label map: no overlay and no legend
    if label is not None:
        label = _label_map(label, "channels figure: the label")
        if label.shape != shape:
            raise BrainbenchError(f"channels figure: label shape {label.shape} differs from the channels' {shape}")
        names = _label_names(labels, label)
    foreground = np.any([volume != 0 for volume in channels.values()], axis=0)
    z = _focus_centre(foreground, np.zeros(shape, bool) if label is None else label)[2]
    if label is not None and label.any() and not label[:, :, z].any():
        labelled = np.flatnonzero(label.any(axis=(0, 1)))
        z = int(labelled[np.argmin(np.abs(labelled - z))])
    aspect = _slice_aspect(_voxel_spacing(spacing, "channels figure"), 2)

    figure = Figure(figsize=(2.4 * len(channels) + (2.8 if names else 0.4), 3.2), layout="constrained")
    for ax, (name, volume) in zip(figure.subplots(1, len(channels), squeeze=False)[0], channels.items()):
        low, high = _grey_window(volume)
        ax.imshow(_cut(volume, 2, z), cmap="gray", vmin=low, vmax=high, interpolation="nearest", aspect=aspect)
        if label is not None:
            _draw_labels(ax, _cut(label, 2, z), names, aspect)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    _labels_legend(figure, names, loc="outside right", ncol=1)
    figure.suptitle(f"{title}: axial slice {z}" if title else f"axial slice {z}", fontsize=10)
    return figure


def learning_curves_figure(history: pd.DataFrame, title: str = "") -> Figure:
    """Training curves from an MLflow metric history (columns ``key, step, value``, one row per logged value).

    Only ``train_*`` and ``val_*`` keys are drawn, also behind a training phase's prefix
    (``<phase>-train_loss``). One panel holds the losses, one the Dice scores: keys containing "dice"
    that training did not log too (training logs only its loss terms, so ``train_dice``/``val_dice`` are
    a Dice *loss*, ``val_dice_segments`` a score). Training is drawn solid and validation dashed, in one
    colour per quantity. An empty history gives a figure saying so instead of empty axes.
    """
    missing = {"key", "step", "value"} - set(history.columns)
    if missing:
        raise BrainbenchError(f"learning curves: the metric history lacks column(s) {sorted(missing)} "
                              f"(expected key, step, value; found {list(history.columns)})")
    curves = history[[is_training_curve(str(key)) for key in history["key"]]]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    figure.suptitle(title or "learning curves")
    if curves.empty:
        ax = figure.subplots()
        ax.text(0.5, 0.5, "no training metrics logged", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
        return figure
    keys = sorted(set(curves["key"]))
    quantities = list(dict.fromkeys((phase, quantity) for phase, _, quantity in map(_parts, keys)))
    scores = [key for key, (phase, _, quantity) in zip(keys, map(_parts, keys))
              if "dice" in quantity and f"{phase}train_{quantity}" not in keys]
    panels = [(name, chosen) for name, chosen in (("loss", [k for k in keys if k not in scores]), ("Dice", scores))
              if chosen]
    for ax, (name, chosen) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in chosen:
            series = curves[curves["key"] == key].sort_values("step", kind="stable")
            ax.plot(series["step"].to_numpy(), series["value"].to_numpy(), label=key, marker="o", markersize=3,
                    linestyle="-" if _parts(key)[1] == "train" else "--",
                    color=colormaps["tab10"](quantities.index(_parts(key)[::2]) % 10))
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.legend(fontsize=8)
    return figure


def case_metric_figure(frame: pd.DataFrame, metric: str, teams: Sequence[str], title: str = "",
                       unit: str | None = None) -> Figure:
    """One panel per region: a box of the per-case values of ``metric`` per team, cases as jittered dots.

    ``frame`` is the long table ``team, case, region, metric, value``; teams appear left to right in
    the order given (the leaderboard's). ``unit``: the y axis's, by default the metric's own
    (:data:`~brainbench.evaluation.protocols.METRIC_UNITS`; none for a metric it does not list).
    """
    unit = METRIC_UNITS.get(metric, "") if unit is None else unit
    rows = frame[frame["metric"] == metric]
    regions = list(dict.fromkeys(rows["region"]))
    figure = Figure(figsize=(3.2 + 2.6 * len(regions), 4.2), layout="constrained")
    axes = figure.subplots(1, max(1, len(regions)), squeeze=False)[0]
    jitter = np.random.default_rng(0)
    for ax, region in zip(axes, regions):
        per_team = [rows[(rows["region"] == region) & (rows["team"] == t)]["value"].dropna().to_numpy() for t in teams]
        ax.boxplot(per_team, widths=0.5, showfliers=False)
        for position, values in enumerate(per_team, start=1):
            ax.scatter(position + jitter.uniform(-0.12, 0.12, values.size), values, s=14, alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(teams) + 1), teams, rotation=45, ha="right", fontsize=8)
        ax.set_title(region)
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    figure.suptitle(title or f"per-case {metric}")
    return figure


def rank_stability_figure(frequencies: pd.DataFrame, original_ranks: Sequence[int], title: str = "") -> Figure:
    """challengeR-style blob plot: a disc per (team, rank) with area ∝ how often the bootstrap gave it.

    ``frequencies`` is teams (in leaderboard order) × rank, fractions summing to 1 per team (as
    :meth:`brainbench.evaluation.stats.BootstrapRanks.frequencies`); the original rank is a black cross.
    """
    teams = list(frequencies.index)
    figure = Figure(figsize=(1.6 + 0.9 * len(teams), 4.2), layout="constrained")
    ax = figure.subplots()
    for x, team in enumerate(teams):
        fractions = frequencies.loc[team]
        shown = fractions[fractions > 0]
        ax.scatter(np.full(len(shown), x), shown.index.to_numpy(dtype=float), s=600 * shown.to_numpy(),
                   alpha=0.6, color=colormaps["tab10"](x % 10), edgecolors="none")
    ax.scatter(range(len(teams)), original_ranks, marker="x", color="black", zorder=3, label="original rank")
    ax.set_xticks(range(len(teams)), teams, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(1, len(teams) + 1))
    ax.set_ylim(len(teams) + 0.7, 0.3)
    ax.set_ylabel("rank (1 = best)")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title or "rank stability (bootstrap)")
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as PNG atomically (a crash leaves no partial file) and return ``path``."""
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def overlay_png(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, path: str | Path,
                title: str = "", labels: Mapping[int, str] | None = None,
                spacing: Sequence[float] | None = None) -> Path:
    """:func:`overlay_figure` saved as PNG; boolean masks are drawn as one label named "foreground"."""
    return save_figure(overlay_figure(image, reference, prediction, {1: "foreground"} if labels is None else labels,
                                      title, spacing), path)


def case_metric_png(frame: pd.DataFrame, metric: str, teams: Sequence[str], path: str | Path, title: str = "",
                    unit: str | None = None) -> Path:
    """:func:`case_metric_figure` saved as PNG."""
    return save_figure(case_metric_figure(frame, metric, teams, title, unit), path)


def rank_stability_png(frequencies: pd.DataFrame, original_ranks: Sequence[int], path: str | Path,
                       title: str = "") -> Path:
    """:func:`rank_stability_figure` saved as PNG."""
    return save_figure(rank_stability_figure(frequencies, original_ranks, title), path)


def _label_map(volume: np.ndarray, name: str) -> np.ndarray:
    """``volume`` as non-negative integers (booleans become 0/1); a clear error naming ``name`` for anything else."""
    volume = np.asarray(volume)
    if volume.dtype == bool:
        return volume.astype(np.uint8)
    if not np.issubdtype(volume.dtype, np.integer) and not np.array_equal(volume, np.round(volume)):
        raise BrainbenchError(f"{name} holds non-integer values; expected a label map")
    volume = volume.astype(np.int64)
    if volume.size and volume.min() < 0:
        raise BrainbenchError(f"{name} holds negative values; expected a label map (0 = background)")
    return volume


def _label_names(labels: Mapping[int, str], *maps: np.ndarray) -> dict[int, str]:
    """Value → name of every foreground label named in ``labels`` or present in ``maps``, sorted by value."""
    present = set().union(*(np.unique(m).tolist() for m in maps))
    return {value: labels.get(value, f"label {value}") for value in sorted((set(labels) | present) - {0})}


def _label_colours(names: Mapping[int, str]) -> tuple[ListedColormap, BoundaryNorm]:
    """Colour map and norm of the label panels: a label's colour is picked by its rank among ``names``' values."""
    colours = ListedColormap([LABEL_COLOURS[i % len(LABEL_COLOURS)] for i in range(max(1, len(names)))])
    return colours, BoundaryNorm(np.arange(-0.5, colours.N), colours.N)


def _draw_labels(ax, shown: np.ndarray, names: Mapping[int, str], aspect: float) -> None:
    """Overlay the label slice ``shown`` on ``ax`` in the colours of :func:`_label_colours`, background transparent."""
    values = np.array(list(names))
    index = np.searchsorted(values, shown) if len(values) else np.zeros_like(shown)
    colours, norm = _label_colours(names)
    ax.imshow(np.ma.masked_where(shown == 0, index), cmap=colours, norm=norm, alpha=0.6, interpolation="nearest",
              aspect=aspect)


def _labels_legend(figure: Figure, names: Mapping[int, str], loc: str, ncol: int) -> None:
    """The "labels" legend: a swatch per value with its wrapped name (none when nothing is named)."""
    if not names:
        return
    colours, _ = _label_colours(names)
    figure.legend(handles=[Patch(facecolor=colours(i), edgecolor="black", linewidth=0.5,
                                 label=textwrap.fill(f"{value} {name}", LEGEND_WRAP))
                           for i, (value, name) in enumerate(names.items())],
                  loc=loc, title="labels", fontsize=8, ncol=ncol)


def _voxel_spacing(spacing: Sequence[float] | None, figure: str) -> np.ndarray:
    """``spacing`` (mm per axis) checked as three positive sizes; square voxels when None."""
    checked = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    if checked.shape != (3,) or not (checked > 0).all():
        raise BrainbenchError(f"{figure}: spacing {checked.tolist()} must be three positive voxel sizes (mm)")
    return checked


def _cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` across ``axis``, rotated so that its columns run along the lower remaining axis."""
    return np.rot90(np.take(volume, index, axis=axis))


def _slice_aspect(spacing: np.ndarray, axis: int) -> float:
    """Pixel aspect (height / width) of a :func:`_cut` across ``axis``, so anisotropic voxels keep their proportions."""
    across, up = (a for a in range(3) if a != axis)  # rot90: columns run along `across`, rows along `up`
    return float(spacing[up] / spacing[across])


def _focus_centre(image: np.ndarray, reference: np.ndarray) -> list[int]:
    """Voxel the slices pass through: the reference's centre of mass, else the image's non-zero one."""
    focus = reference != 0 if reference.any() else image != 0
    if not focus.any():
        return [size // 2 for size in image.shape]
    return [int(round(c)) for c in np.argwhere(focus).mean(axis=0)]


def _grey_window(image: np.ndarray) -> tuple[float, float]:
    """Display range: the 1st–99th percentile of the non-zero intensities (the whole image if all zero)."""
    values = image[image != 0] if image.any() else image.ravel()
    low, high = np.percentile(values, (1, 99)) if values.size else (0.0, 1.0)
    return float(low), (float(high) if high > low else float(low) + 1.0)


def is_training_curve(key: str) -> bool:
    """Whether a run metric is a per-epoch training or validation value (``train_*``, ``val_*``, also behind a
    phase's prefix, ``<phase>-train_loss``): what :func:`learning_curves_figure` draws."""
    return _parts(key)[1] in ("train", "val")


def _parts(key: str) -> tuple[str, str, str]:
    """Phase prefix (with its dash), split and quantity of a key: ``p2-val_dice`` → ``("p2-", "val", "dice")``."""
    phase, _, name = key.rpartition("-")
    split, underscore, quantity = name.partition("_")
    return f"{phase}-" if phase else "", split if underscore else "", quantity
