"""What every challenge edition declares, and the one adapter that reads any of them.

An :class:`Edition` is the whole definition of a challenge edition in one frozen record: its layout
reader, channels, label map and regions, evaluation protocol, ranking rule, how reference label maps
are found in the release (for ``brainbench evaluate --ref``) and its synthetic look-alike. Adding an
edition means one declaration in its family file (``brats.py``, ``isles.py``, ...); the registry in
:mod:`brainbench.challenges` collects them. Everything downstream (preprocessing, training,
evaluation) sees :class:`Case` records, never the layout.

This module imports no torch and nothing from ``data/``: the synthetic generator is named by its
import path, so an organiser can read releases without the training stack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.io import (NIFTI_SUFFIXES, VOLUME_SUFFIXES, Grid, existing_dir, load_label, load_volume, read_grid,
                           strip_nifti_suffix)


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


class Layout:
    """How one release lays out its files; each family file declares its layouts as small frozen records.

    Subclasses set :attr:`channels` (every channel the layout can read, the edition's default subset
    first) and :attr:`expected` (what a case looks like, for error messages), and implement
    :meth:`scan`.
    """

    channels: tuple[str, ...] = ()
    expected: str = ""

    def derived_labels(self) -> Path | None:
        """The folder of label maps brainbench derives from the release outside it (Dou et al.'s masks
        grown from centroids), which ``find_references`` accepts; None: every label is in the release."""
        return None

    def scan(self, root: Path, edition: Edition,
             require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        """The cases of ``edition.modalities`` under the existing folder ``root`` and one error per case
        that could not be assembled (a missing channel or label), never raising for a single case."""
        raise NotImplementedError


@dataclass(frozen=True)
class Synthetic:
    """An edition's synthetic look-alike: a generator named by import path, and its defaults.

    The generator is called as ``generator(root, n_cases=, spacing_mm=, seed=, overwrite=, **options)``
    (see :func:`brainbench.data.synth.synthesize`); ``options`` holds what selects the edition's
    layout (e.g. ``{"edition": "brats2017"}``).
    """

    generator: str
    n_cases: int
    spacing_mm: float | None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unranked:
    """An edition without a published ranking rule; ``reason`` is what the CLI says instead of ranking."""

    reason: str


@dataclass(frozen=True)
class Edition:
    """Declarative description of one challenge edition.

    Attributes:
        name: config and MLflow name, e.g. ``brats2020``.
        challenge: family name, e.g. ``brats``.
        modalities: channel names in the order models receive them (a subset of ``layout.channels``).
        label_values: every value a reference label map may contain (0 = background).
        label_names: label value → the organisers' name of it, for every label value (0 → ``"background"``);
            figure legends and notebooks read it. Stored in the order of ``label_values``.
        regions: evaluated region → label values it unites, e.g. ``{"WT": (1, 2, 4)}``.
        protocol: name of the evaluation protocol in :mod:`brainbench.evaluation.protocols`.
        ranking: name of the ranking rule in :mod:`brainbench.evaluation.ranking`, or :class:`Unranked`.
        layout: the release's layout reader.
        source: where the layout and label conventions were verified.
        synthetic: the synthetic look-alike, or None (a user's own cohort).
        reference_grid: channel whose voxel grid is the case's reference when channels come on
            different grids (ISLES 2022 FLAIR, MRBrainS ``T1_1mm``); the pipeline resamples the
            others onto it. ``None``: every channel and the label share one grid.
        spacing_mm: nominal voxel spacing of the release, for documentation and synthetic data.
        empty_labels: a training case may have an all-background label map (a subject without any
            microbleed); otherwise ``brainbench data check`` reports one as a problem.
    """

    name: str
    challenge: str
    modalities: tuple[str, ...]
    label_values: tuple[int, ...]
    label_names: Mapping[int, str]
    regions: Mapping[str, tuple[int, ...]]
    protocol: str
    ranking: str | Unranked
    layout: Layout
    source: str
    synthetic: Synthetic | None = None
    reference_grid: str | None = None
    spacing_mm: tuple[float, float, float] | None = None
    empty_labels: bool = False

    def __post_init__(self) -> None:
        """A label map without a name for each of its values (or naming others) fails where it is declared."""
        names = self.label_names
        problems = {
            "no name for": [v for v in self.label_values if v not in names],
            "names for values not in label_values": [key for key in names if key not in self.label_values],
            "blank names for": [v for v, text in names.items() if not isinstance(text, str) or not text.strip()],
        }
        if any(problems.values()):
            found = "; ".join(f"{what} {values}" for what, values in problems.items() if values)
            raise BrainbenchConfigError(f"edition {self.name}: label_names must name each of its label_values "
                                        f"{list(self.label_values)} and nothing else ({found})")
        object.__setattr__(self, "label_names", {v: names[v] for v in self.label_values})

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

    def with_channels(self, modalities: Sequence[str] | None) -> Edition:
        """This edition reading ``modalities`` (distinct names of ``layout.channels``, in the given order).

        The reference grid stays the declared one when it is read, else becomes the first channel read.
        """
        if modalities is None:
            return self
        chosen = tuple(modalities)
        available = self.layout.channels
        unknown = [m for m in chosen if m not in available]
        if not chosen or unknown or len(set(chosen)) != len(chosen):
            raise BrainbenchConfigError(
                f"modalities of {self.name} must be distinct names among {list(available)}, got {list(chosen)}"
            )
        reference = self.reference_grid
        if reference is not None and reference not in chosen:
            reference = chosen[0]
        return replace(self, modalities=chosen, reference_grid=reference)

    def find_references(self, root: str | Path) -> dict[str, Path]:
        """Case id → reference label map of a release folder as released, or of a flat folder of
        ``<case_id>.nii.gz`` files; used by ``brainbench evaluate --ref`` (reads no voxel).

        Raises:
            BrainbenchDataError: no reference found (saying what was expected), or a label map that
                links outside ``root``.
        """
        root = existing_dir(root)
        cases, problems = self.layout.scan(root, self, require_labels=True)
        found = {case.case_id: case.label for case in cases if case.label is not None}
        if not found:
            found = {strip_nifti_suffix(p.name): p for p in sorted(root.iterdir())
                     if p.is_file() and p.name.endswith(VOLUME_SUFFIXES)}
        if not found:
            detail = f"; first problem: {problems[0]}" if problems else ""
            raise BrainbenchDataError(
                root, f"no {self.name} reference label maps found (expected the release layout, "
                      f"{self.layout.expected}, or a flat folder of <case_id>.nii.gz){detail}")
        derived = self.layout.derived_labels()
        allowed = [root, *([derived.resolve()] if derived is not None else [])]
        for case_id, path in found.items():
            if not any(Path(path).resolve().is_relative_to(folder) for folder in allowed):
                raise BrainbenchDataError(path, f"reference of case {case_id} links outside {root}")
        return dict(sorted(found.items()))


def case_order(case: Case) -> list:
    """Sort key: the case id with its digit runs compared as numbers (``train_2`` before ``train_10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", case.case_id)]


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


def read_channels(folder: Path, stems: Mapping[str, str], modalities: Sequence[str], case_id: str,
                  suffixes: Sequence[str] = VOLUME_SUFFIXES) -> dict[str, Path]:
    """Path of each channel ``folder/stems[m]<suffix>``; raises naming the first missing file."""
    images = {}
    for modality in modalities:
        path = find_volume(folder, stems[modality], suffixes)
        if path is None:
            raise BrainbenchDataError(folder / f"{stems[modality]}{suffixes[0]}",
                                      f"missing {modality} channel of case {case_id}")
        images[modality] = path
    return images


def with_label(case: Case, require_labels: bool) -> Case:
    """``case``, or an error naming its folder (``meta["folder"]``) when a required label map is missing."""
    if case.label is None and require_labels:
        raise BrainbenchDataError(case.meta["folder"], f"missing label map of case {case.case_id}")
    return case


def collect(readers: Sequence[Any]) -> tuple[list[Case], list[BrainbenchDataError]]:
    """Call each zero-argument case reader; a reader's :class:`BrainbenchDataError` becomes an error line."""
    cases, errors = [], []
    for read in readers:
        try:
            cases.append(read())
        except BrainbenchDataError as error:
            errors.append(error)
    return cases, errors


class ChallengeAdapter:
    """Finds and validates the cases of one edition in its official layout on disk.

    Args:
        edition: a registered edition's name, an :class:`Edition`, or a user's YAML declaration as a
            mapping (see :mod:`brainbench.challenges.custom`).
        modalities: channels to read, a subset of the layout's, in the order models receive them
            (e.g. an MSSEG copy without DP; MRBrainS13 adding ``t1_1mm``); default: the edition's.
        require_labels: training data must have a label map per case; test releases have none.
    """

    def __init__(self, edition: str | Edition | Mapping[str, Any], modalities: Sequence[str] | None = None,
                 require_labels: bool = True):
        from brainbench.challenges import get_edition

        self.edition = get_edition(edition).with_channels(modalities)
        self.require_labels = require_labels

    def discover(self, root: str | Path) -> list[Case]:
        """Every case under ``root``, sorted by id; raises naming the first problem, or when there is no case."""
        cases, errors = self._scan(root)
        if errors:
            raise errors[0]
        return cases

    def scan(self, root: str | Path) -> tuple[list[Case], list[str]]:
        """The cases under ``root`` (sorted by id) and one line per case that could not be assembled,
        never raising; a folder without any case gives one line saying what was expected."""
        cases, errors = self._scan(root)
        return cases, [str(error) for error in errors]

    def _scan(self, root: str | Path) -> tuple[list[Case], list[BrainbenchDataError]]:
        path = Path(root)
        if not path.is_dir():
            return [], [BrainbenchDataError(root, "data folder not found")]
        cases, errors = self.edition.layout.scan(path, self.edition, self.require_labels)
        if not cases and not errors:
            errors = [BrainbenchDataError(
                root, f"no {self.edition.name} cases found (expected {self.edition.layout.expected})")]
        ids = [case.case_id for case in cases]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            errors.append(BrainbenchDataError(root, f"case ids {repeated} occur in more than one folder"))
        return sorted(cases, key=case_order), errors

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
                if label_values == (0,) and self.require_labels and not self.edition.empty_labels:
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
