"""Score prediction files against reference files, case by case, under one challenge :class:`Protocol`.

Runs on files alone (no torch, no models), so that an organiser can score submitted folders. A bad
submitted file never stops the run: it becomes one line in ``problems`` and its case is scored as an
empty prediction, as the protocol prescribes for a missing one. Problems with the *reference* folder
are the organiser's to fix and raise :class:`~brainbench.errors.BrainbenchDataError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pandas as pd

from brainbench.data.io import NIFTI_SUFFIXES, VOLUME_SUFFIXES, Grid, load_label, read_grid, strip_nifti_suffix, write_atomic
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.evaluation import surface
from brainbench.evaluation.lesions import anima_detection, brats2023_lesionwise, isles22_lesions
from brainbench.evaluation.overlap import (
    Confusion,
    absolute_volume_difference_ml,
    absolute_volume_difference_percent,
    dice,
    precision,
    sensitivity,
    specificity,
    volume_difference_ratio,
    volumetric_similarity,
)
from brainbench.evaluation.protocols import Protocol

METRIC_COLUMNS = ("case", "region", "metric", "value")
"""Long-format metrics table: one row per case, region and metric; units in ``protocols.METRIC_UNITS``."""

_EMPTY_SCORED = "scored as an empty prediction"


@dataclass
class FolderEvaluation:
    """Result of scoring a prediction folder: long-format ``metrics`` and one ``problems`` line per fault."""

    metrics: pd.DataFrame
    problems: list[str]


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, float, float],
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
) -> list[dict]:
    """Score one case: rows ``{"region", "metric", "value"}`` for every region and protocol metric.

    ``pred`` and ``ref`` are label maps on the same grid; ``spacing`` is the voxel size in mm;
    ``regions`` maps a region name to the label values it merges (e.g. ``{"TC": (1, 4)}``). Voxels whose
    reference label is in ``protocol.ignore_labels`` are background in both maps before any metric.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if protocol.ignore_labels:
        ignored = _region_mask(ref, sorted(protocol.ignore_labels))
        pred = np.where(ignored, 0, pred)
        ref = np.where(ignored, 0, ref)
    outside = 0
    if not any(0 in labels for labels in regions.values()):
        pred, ref, outside = _foreground_crop(pred, ref)
    rows = []
    for region, labels in regions.items():
        pred_mask = _region_mask(pred, labels)
        ref_mask = _region_mask(ref, labels)
        counts = Confusion.from_masks(pred_mask, ref_mask, outside=outside)
        lesion_values = _lesion_metrics(pred_mask, ref_mask, spacing, protocol)
        for metric in protocol.metrics:
            if metric in lesion_values:
                value = lesion_values[metric]
            else:
                value = _metric(metric, pred_mask, ref_mask, counts, spacing, protocol)
            rows.append({"region": region, "metric": metric, "value": float(value)})
    return rows


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
    allowed_labels: set[int],
    ref_name: Callable[[str], str | None] | None = None,
) -> FolderEvaluation:
    """Score every reference case against ``<pred_dir>/<case_id>.nii.gz`` (or ``.nii``).

    References are found anywhere under ``ref_dir``; ``ref_name`` maps a reference file's path relative
    to ``ref_dir`` (POSIX form) to its case id, or to None for files that are not references. The
    default, :func:`default_reference_case`, accepts ``<case_id>.nii.gz`` and the BraTS training layout
    ``<case_id>/<case_id>_seg.nii.gz``. Spacing comes from the reference header.

    Predictions are untrusted: each header is checked before any voxel is read (3D, at most
    ``MAX_VOXELS`` voxels, an integer or float voxel type, the reference grid). A prediction that is
    missing, duplicated (``x.nii`` beside ``x.nii.gz``), unreadable, fails a header check (shape or
    affine off by more than 1e-3 mm), holds NaNs or labels outside ``allowed_labels``, or is a symlink
    leaving ``pred_dir`` is reported in one line and scored as empty. Files matching no reference are
    reported and ignored.

    Raises:
        BrainbenchDataError: a folder is missing, no reference is found, two references share a case
            id, or a reference is unreadable, has disallowed labels or links outside ``ref_dir``.
    """
    pred_root = _existing_dir(pred_dir)
    ref_root = _existing_dir(ref_dir)
    references = _find_references(ref_root, ref_name or default_reference_case)
    problems: list[str] = []
    predictions = _find_predictions(pred_root, problems)
    rows = []
    for case_id, ref_path in references.items():
        ref, ref_grid = load_label(ref_path, allowed=allowed_labels)
        candidates = predictions.pop(case_id, [])
        pred = _prediction_or_none(case_id, candidates, pred_root, ref_grid, allowed_labels, problems)
        if pred is None:
            pred = np.zeros_like(ref)
        case_rows = evaluate_case(pred, ref, ref_grid.spacing, regions, protocol)
        rows.extend({"case": case_id, **row} for row in case_rows)
    for paths in predictions.values():
        problems.extend(f"{path}: matches no reference case in {ref_root}; ignored" for path in paths)
    return FolderEvaluation(metrics=pd.DataFrame(rows, columns=list(METRIC_COLUMNS)), problems=problems)


def default_reference_case(relative_path: str) -> str | None:
    """``case.nii.gz`` at the top of the folder, or ``…/case/case_seg.nii.gz`` at any depth → ``case``."""
    parts = PurePosixPath(relative_path).parts
    stem = strip_nifti_suffix(parts[-1])
    if len(parts) == 1:
        return stem
    if stem == f"{parts[-2]}_seg":
        return parts[-2]
    return None


def evaluate_submissions(
    submission_dirs: Sequence[str | Path],
    ref_dir: str | Path,
    regions: Mapping[str, Sequence[int]],
    protocol: Protocol,
    allowed_labels: set[int],
    ref_name: Callable[[str], str | None] | None = None,
) -> FolderEvaluation:
    """:func:`evaluate_folders` for each submission folder; ``team`` (the folder's name) leads each row.

    Raises:
        BrainbenchConfigError: two submission folders share a name.
    """
    teams = [Path(folder).resolve().name for folder in submission_dirs]
    repeated = sorted({team for team in teams if teams.count(team) > 1})
    if repeated:
        raise BrainbenchConfigError(f"--submissions: team names (folder names) must differ; repeated: {repeated}")
    frames, problems = [], []
    for team, folder in zip(teams, submission_dirs):
        result = evaluate_folders(folder, ref_dir, regions, protocol, allowed_labels, ref_name)
        frames.append(result.metrics.assign(team=team))
        problems.extend(f"team {team}: {problem}" for problem in result.problems)
    metrics = pd.concat(frames, ignore_index=True)[["team", *METRIC_COLUMNS]]
    return FolderEvaluation(metrics=metrics, problems=problems)


def write_metrics_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the long-format metrics table (``[team,] case, region, metric, value``) atomically."""
    missing = [column for column in METRIC_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}")
    columns = ["team", *METRIC_COLUMNS] if "team" in frame.columns else list(METRIC_COLUMNS)
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, columns=columns, index=False))


_SURFACE_METRICS: dict[tuple[str, str], Callable[..., float]] = {
    ("medpy", "hd95"): partial(surface.hausdorff_distance, percentile=95.0),
    ("medpy", "hd"): partial(surface.hausdorff_distance, percentile=100.0),
    ("medpy", "assd"): surface.average_symmetric_surface_distance,
    ("surfel", "hd95"): partial(surface.robust_hausdorff, percentile=95.0),
    ("surfel", "hd"): partial(surface.robust_hausdorff, percentile=100.0),
    ("surfel", "assd"): surface.surfel_average_distance,
    ("kth-ranked", "hd95"): partial(surface.kth_ranked_hausdorff, percentile=95.0),
    ("kth-ranked", "hd"): partial(surface.kth_ranked_hausdorff, percentile=100.0),
    ("kth-ranked", "assd"): surface.average_symmetric_surface_distance,
    ("in-plane", "hd95"): surface.in_plane_hd95,
    ("covalic", "hd"): partial(surface.covalic_hausdorff, fraction=1.0),
    ("covalic", "assd"): surface.average_symmetric_surface_distance,
    ("itk-set", "hd"): surface.set_hausdorff,
}
"""(variant, metric) → function of ``(pred, ref, spacing, *, if_both_empty, if_one_empty)``; the keys
are ``protocols.SURFACE_VARIANTS``."""


def _metric(
    metric: str,
    pred: np.ndarray,
    ref: np.ndarray,
    counts: Confusion,
    spacing: tuple[float, float, float],
    protocol: Protocol,
) -> float:
    """One voxel or surface metric of one region, with the protocol's empty-mask values."""
    match metric:
        case "dice":
            return dice(counts, if_both_empty=protocol.dice_both_empty)
        case "sensitivity":
            return sensitivity(
                counts,
                if_both_empty=protocol.sensitivity_both_empty,
                if_ref_empty=protocol.sensitivity_ref_empty,
            )
        case "specificity":
            return specificity(counts, if_no_negatives=protocol.specificity_no_negatives)
        case "ppv":
            return precision(counts, if_both_empty=protocol.ppv_both_empty, if_pred_empty=protocol.ppv_pred_empty)
        case "avd":
            return absolute_volume_difference_percent(counts, if_ref_empty=protocol.volume_ref_empty)
        case "vdr":
            return volume_difference_ratio(counts, if_ref_empty=protocol.volume_ref_empty)
        case "volume_difference_ml":
            return absolute_volume_difference_ml(counts, voxel_volume_mm3=float(np.prod(spacing)))
        case "volumetric_similarity":
            return volumetric_similarity(counts, if_both_empty=protocol.vs_both_empty)
        case "hd95" | "hd" | "assd":
            function = _SURFACE_METRICS[protocol.surface_variant, metric]
            return function(
                pred, ref, spacing, if_both_empty=protocol.hd_both_empty, if_one_empty=protocol.hd_one_empty
            )
    raise ValueError(f"no implementation for metric {metric!r}")


def _lesion_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float], protocol: Protocol
) -> dict[str, float]:
    """All lesion-wise metrics of the protocol's matching rule for one region (one component analysis)."""
    if not any(metric.startswith("lesion_") for metric in protocol.metrics):
        return {}
    match protocol.lesion_rule:
        case "anima":
            return anima_detection(pred, ref, spacing, protocol.anima)
        case "isles22":
            return isles22_lesions(pred, ref, if_both_empty=protocol.lesion_both_empty)
        case "brats2023":
            return brats2023_lesionwise(pred, ref, spacing, protocol.brats_lesions)
    raise ValueError(f"no implementation for lesion rule {protocol.lesion_rule!r}")


def _foreground_crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Both label maps cut to the box of their labelled voxels plus one voxel, and the voxel count left out.

    Exact for every metric when no region holds label 0: every region voxel is inside, the one-voxel
    background margin keeps each boundary and erosion as on the full grid (see ``surface``), lesion
    dilations merge inside the box as outside it, and the voxels left out are true negatives.
    """
    labelled_pred, labelled_ref = pred != 0, ref != 0
    if not labelled_pred.any() and not labelled_ref.any():
        return pred, ref, 0
    box = surface.union_box(labelled_pred, labelled_ref, margin=1)
    return pred[box], ref[box], pred.size - pred[box].size


def _region_mask(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Voxels holding any of ``values``, in the memory order of ``labels`` (nibabel gives Fortran order).

    A loop of ``==`` is several times faster than ``np.isin``; matching the memory order avoids a strided
    copy per label.
    """
    mask = np.zeros_like(labels, dtype=bool)
    for value in values:
        mask |= labels == value
    return mask


def _existing_dir(path: str | Path) -> Path:
    root = Path(path).resolve()
    if not root.is_dir():
        raise BrainbenchDataError(path, "folder not found")
    return root


def _is_nifti(name: str) -> bool:
    return name.endswith(NIFTI_SUFFIXES)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _find_references(root: Path, case_of: Callable[[str], str | None]) -> dict[str, Path]:
    """Case id → reference file, sorted by case id; symlinked folders are not entered."""
    found: dict[str, Path] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            case_id = case_of(path.relative_to(root).as_posix()) if name.endswith(VOLUME_SUFFIXES) else None
            if case_id is None:
                continue
            if not _inside(path, root):
                raise BrainbenchDataError(path, f"reference is a link that resolves outside {root}")
            if case_id in found:
                raise BrainbenchDataError(path, f"case {case_id!r} already has reference {found[case_id]}")
            found[case_id] = path
    if not found:
        raise BrainbenchDataError(root, "no reference label maps found")
    return dict(sorted(found.items()))


def _find_predictions(root: Path, problems: list[str]) -> dict[str, list[Path]]:
    """Case id → prediction files at the top of ``root``; anything else is reported and ignored."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()):
        if path.is_dir() or not _is_nifti(path.name):
            problems.append(f"{path}: not a NIfTI prediction file; ignored")
            continue
        found.setdefault(strip_nifti_suffix(path.name), []).append(path)
    return found


def _prediction_or_none(
    case_id: str, paths: list[Path], root: Path, ref_grid: Grid, allowed: set[int], problems: list[str]
) -> np.ndarray | None:
    """The case's prediction labels, or None (with one line in ``problems``) when it cannot be used."""
    if not paths:
        expected = root / f"{case_id}{NIFTI_SUFFIXES[0]}"
        problems.append(f"{expected}: no prediction for case {case_id}; {_EMPTY_SCORED}")
        return None
    if len(paths) > 1:
        names = ", ".join(str(p) for p in paths)
        problems.append(f"{names}: several predictions for case {case_id}; {_EMPTY_SCORED}")
        return None
    path = paths[0]
    try:
        if not _inside(path, root):
            raise BrainbenchDataError(path, f"link resolves outside {root}")
        grid = read_grid(path)
        _check_voxel_type(path)
        if not grid.matches(ref_grid):
            raise BrainbenchDataError(path, _grid_mismatch(grid, ref_grid))
        pred, _ = load_label(path, allowed=allowed)
    except BrainbenchDataError as error:
        problems.append(f"{error}; {_EMPTY_SCORED}")
        return None
    except Exception as error:  # a submitted file must never stop the evaluation
        detail = " ".join(str(error).split())[:200]
        problems.append(f"{path}: cannot be read ({type(error).__name__}: {detail}); {_EMPTY_SCORED}")
        return None
    return pred


def _check_voxel_type(path: Path) -> None:
    """Refuse header voxel types that cannot hold labels (RGB, complex, ...), before reading voxels."""
    dtype = nib.load(str(path)).get_data_dtype()
    if dtype.kind not in "iuf":
        raise BrainbenchDataError(path, f"voxel type {dtype} in header; expected an integer or float type")


def _grid_mismatch(grid: Grid, ref_grid: Grid) -> str:
    if grid.shape != ref_grid.shape:
        return f"grid shape {grid.shape} differs from the reference {ref_grid.shape}"
    offset = float(np.abs(grid.affine - ref_grid.affine).max())
    return f"affine differs from the reference by up to {offset:.4g} mm"
