"""What every challenge adapter provides: cases found on disk, labels, regions and validation.

An adapter turns an official release layout into :class:`Case` records. Everything downstream
(preprocessing, training, evaluation) sees only cases, never the layout. Adding an edition means
declaring one :class:`Edition` and one config file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainbench.data.io import NIFTI_SUFFIXES, VOLUME_SUFFIXES, Grid, load_label, load_volume, read_grid, strip_nifti_suffix
from brainbench.errors import BrainbenchDataError


@dataclass(frozen=True)
class Case:
    """One subject: channel name → image path, optional label path, and free-form metadata."""

    case_id: str
    images: Mapping[str, Path]
    label: Path | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [*self.images.values(), *([self.label] if self.label else [])]


@dataclass(frozen=True)
class Edition:
    """Declarative description of one challenge edition.

    Attributes:
        name: config and MLflow name, e.g. ``brats2020``.
        challenge: family name, e.g. ``brats``.
        modalities: channel names in the order models receive them.
        label_values: every value a reference label map may contain (0 = background).
        regions: evaluated region → label values it unites, e.g. ``{"WT": (1, 2, 4)}``.
        protocol: name of the evaluation protocol in :mod:`brainbench.evaluation.protocols`.
        source: where the layout and label conventions were verified.
        reference_grid: channel whose voxel grid is the case's reference when channels come on
            different grids (ISLES 2022 FLAIR, MRBrainS ``T1_1mm``); the pipeline resamples the
            others onto it. ``None``: every channel and the label share one grid.
        spacing_mm: nominal voxel spacing of the release, for documentation and synthetic data.
    """

    name: str
    challenge: str
    modalities: tuple[str, ...]
    label_values: tuple[int, ...]
    regions: Mapping[str, tuple[int, ...]]
    protocol: str
    source: str
    reference_grid: str | None = None
    spacing_mm: tuple[float, float, float] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.label_values)

    def encode_labels(self, label: np.ndarray) -> np.ndarray:
        """Map label values to contiguous class indices ``0..n_classes-1`` (e.g. BraTS 4 → 3)."""
        lookup = np.zeros(max(self.label_values) + 1, dtype=np.int64)
        lookup[list(self.label_values)] = np.arange(self.n_classes)
        return lookup[label]

    def decode_labels(self, classes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode_labels`: class indices back to the edition's label values."""
        return np.asarray(self.label_values, dtype=np.uint8)[classes]

    def region_masks(self, label: np.ndarray) -> dict[str, np.ndarray]:
        """Boolean mask per evaluated region of a label map holding this edition's values."""
        return {name: np.isin(label, values) for name, values in self.regions.items()}


@dataclass(frozen=True)
class CaseCheck:
    """What ``brainbench data check`` reports about one case.

    ``grid`` is the reference channel's (``None`` if unreadable); ``label_values`` the values found in
    the label map (``None`` without a readable label); ``problems`` one line each.
    """

    case: Case
    grid: Grid | None
    label_values: tuple[int, ...] | None
    problems: tuple[str, ...]


def find_volume(folder: Path, stem: str, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> Path | None:
    """``folder/stem`` with the first of ``suffixes`` that exists (default: NIfTI, MetaImage, NRRD)."""
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class ChallengeAdapter:
    """Finds and validates the cases of one edition in its official layout on disk."""

    edition: Edition

    def discover(self, root: str | Path) -> list[Case]:
        """Every case under ``root``, sorted by id; raises if the folder holds none."""
        raise NotImplementedError

    def scan(self, root: str | Path) -> tuple[list[Case], list[str]]:
        """The cases under ``root`` and one line per case that could not be assembled, never raising.

        This default stops at :meth:`discover`'s first error; adapters whose layout has case folders
        override it to go on with the other cases.
        """
        try:
            return self.discover(root), []
        except BrainbenchDataError as error:
            return [], [str(error)]

    def check(self, root: str | Path) -> tuple[list[CaseCheck], list[str]]:
        """Every case found and every problem under ``root``: all of them, not just the first."""
        cases, problems = self.scan(root)
        return [self.check_case(case) for case in cases], problems

    def check_case(self, case: Case) -> CaseCheck:
        """Read every file of ``case`` and list its problems: unreadable, 4D or non-finite files, a
        channel stored twice (``.nii`` and ``.nii.gz``), label values the edition does not know, an
        empty label map where labels are required, grids that differ (when the edition names no
        reference grid) or do not overlap (when it does)."""
        problems: list[str] = []
        grids: dict[Path, Grid] = {}
        label_values = None
        for path in case.files:
            stem = strip_nifti_suffix(path.name)
            for twin in (path.with_name(stem + suffix) for suffix in NIFTI_SUFFIXES):
                if twin != path and twin.is_file():
                    problems.append(f"{path}: the same file is also stored as {twin.name}; keep one")
            try:
                grids[path] = read_grid(path)
                if path == case.label:
                    labels, _ = load_label(path)
                else:
                    load_volume(path)
            except BrainbenchDataError as error:
                problems.append(str(error))
                continue
            if path == case.label:
                label_values = tuple(int(v) for v in np.unique(labels))
                unexpected = sorted(set(label_values) - set(self.edition.label_values))
                if unexpected:
                    problems.append(f"{path}: label values {unexpected} are not allowed "
                                    f"(expected a subset of {list(self.edition.label_values)})")
                if label_values == (0,) and getattr(self, "require_labels", True):
                    problems.append(f"{path}: label map is empty (only background); a training case needs labels")
        reference_name = self.edition.reference_grid or next(iter(case.images))
        reference = case.images.get(reference_name)
        if reference in grids:
            for path, grid in grids.items():
                if self.edition.reference_grid is None and not grid.matches(grids[reference]):
                    problems.append(str(_grid_mismatch(path, grid, reference, grids[reference])))
                elif not _overlap(grid, grids[reference]):
                    problems.append(f"{path}: its field of view does not overlap {reference.name}; cannot resample")
        return CaseCheck(case, grids.get(reference), label_values, tuple(problems))

    def prediction_name(self, case_id: str) -> str:
        """File name a submission uses for ``case_id``."""
        return f"{case_id}.nii.gz"

    def validate(self, case: Case, check_label_values: bool = True) -> Grid:
        """Check that every channel and the label share one grid and the label values are allowed.

        Returns the case's grid. Raises :class:`BrainbenchDataError` naming the first bad file.
        ``check_label_values=False`` skips reading the label voxels, for callers that load it anyway.
        """
        reference: tuple[Path, Grid] | None = None
        for path in case.files:
            grid = read_grid(path)
            if reference is None:
                reference = (path, grid)
            elif not grid.matches(reference[1]):
                raise _grid_mismatch(path, grid, *reference)
        if case.label is not None and check_label_values:
            load_label(case.label, allowed=set(self.edition.label_values))
        assert reference is not None
        return reference[1]


def _grid_mismatch(path: Path, grid: Grid, reference: Path, reference_grid: Grid) -> BrainbenchDataError:
    return BrainbenchDataError(
        path,
        f"grid {grid.shape} / spacing {_fmt(grid.spacing)} does not match "
        f"{reference.name} ({reference_grid.shape} / spacing {_fmt(reference_grid.spacing)})",
    )


def _overlap(a: Grid, b: Grid) -> bool:
    """True when the world-space bounding boxes (mm) of the two grids intersect."""
    boxes = []
    for grid in (a, b):
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in grid.shape], indexing="ij")).reshape(3, -1)
        world = (grid.affine @ np.vstack([corners, np.ones(corners.shape[1])]))[:3]
        boxes.append((world.min(axis=1), world.max(axis=1)))
    return bool(np.all(boxes[0][0] <= boxes[1][1]) and np.all(boxes[1][0] <= boxes[0][1]))


def _fmt(values: tuple[float, ...]) -> str:
    return "×".join(f"{v:.3g}" for v in values)
