"""What every challenge adapter provides: cases found on disk, labels, regions and validation.

An adapter turns an official release layout into :class:`Case` records. Everything downstream
(preprocessing, training, evaluation) sees only cases, never the layout. Adding an edition means
declaring one :class:`Edition` and one config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainbench.data.io import Grid, load_label, read_grid
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


class ChallengeAdapter:
    """Finds and validates the cases of one edition in its official layout on disk."""

    edition: Edition

    def discover(self, root: str | Path) -> list[Case]:
        """Every case under ``root``, sorted by id; raises if the folder holds none."""
        raise NotImplementedError

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
                raise BrainbenchDataError(
                    path,
                    f"grid {grid.shape} / spacing {_fmt(grid.spacing)} does not match "
                    f"{reference[0].name} ({reference[1].shape} / spacing {_fmt(reference[1].spacing)})",
                )
        if case.label is not None and check_label_values:
            load_label(case.label, allowed=set(self.edition.label_values))
        assert reference is not None
        return reference[1]


def _fmt(values: tuple[float, ...]) -> str:
    return "×".join(f"{v:.3g}" for v in values)
