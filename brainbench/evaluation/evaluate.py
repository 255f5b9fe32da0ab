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
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from brainbench.data.io import NIFTI_SUFFIXES, Grid, load_label, read_grid, strip_nifti_suffix, write_atomic
from brainbench.errors import BrainbenchDataError
from brainbench.evaluation.overlap import Confusion, dice, sensitivity, specificity
from brainbench.evaluation.protocols import Protocol
from brainbench.evaluation.surface import hausdorff_distance

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
    ``regions`` maps a region name to the label values it merges (e.g. ``{"TC": (1, 4)}``).
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    rows = []
    for region, labels in regions.items():
        pred_mask = _region_mask(pred, labels)
        ref_mask = _region_mask(ref, labels)
        counts = Confusion.from_masks(pred_mask, ref_mask)
        for metric in protocol.metrics:
            value = _metric(metric, pred_mask, ref_mask, counts, spacing, protocol)
            rows.append({"region": region, "metric": metric, "value": value})
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

    A prediction that is missing, unreadable, on another grid (shape or affine off by more than
    1e-3 mm), holds labels outside ``allowed_labels``, or is a symlink leaving ``pred_dir`` is reported
    and scored as empty. Files matching no reference are reported and ignored.

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


def write_metrics_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the long-format metrics table (columns case, region, metric, value) atomically."""
    missing = [column for column in METRIC_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}")
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, columns=list(METRIC_COLUMNS), index=False))


def _metric(
    metric: str,
    pred: np.ndarray,
    ref: np.ndarray,
    counts: Confusion,
    spacing: tuple[float, float, float],
    protocol: Protocol,
) -> float:
    """One metric of one region, with the protocol's empty-mask values."""
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
        case "hd95" | "hd":
            return hausdorff_distance(
                pred,
                ref,
                spacing,
                percentile=95.0 if metric == "hd95" else 100.0,
                if_both_empty=protocol.hd_both_empty,
                if_one_empty=protocol.hd_one_empty,
            )
    raise ValueError(f"no implementation for metric {metric!r}")


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
            case_id = case_of(path.relative_to(root).as_posix()) if _is_nifti(name) else None
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


def _grid_mismatch(grid: Grid, ref_grid: Grid) -> str:
    if grid.shape != ref_grid.shape:
        return f"grid shape {grid.shape} differs from the reference {ref_grid.shape}"
    offset = float(np.abs(grid.affine - ref_grid.affine).max())
    return f"affine differs from the reference by up to {offset:.4g} mm"
