"""Where training segments are centred, and how a model's inputs are cut around a centre.

Samplers draw segment centres from a cached case with a caller-supplied generator, so that a
seed fixes every segment of a run. Voxel index lists are computed once per case. Extractors turn
a centre into the network's inputs and target; each model family names its extractor in its
config (``model.segments``), so the data module never depends on a model's geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brainbench.data.cache import PreprocessedCase
from brainbench.models.deepmedic import CONV_LAYERS, extract_label_block, extract_training_pair


@dataclass
class ForegroundBackgroundSampler:
    """DeepMedic's sampling (spec §3.5): a fraction of centres on foreground, the rest on brain.

    Args:
        foreground_fraction: probability that a centre lies on a labelled (non-background) voxel;
            otherwise it lies on a brain voxel of background class. Paper: 0.5.
    """

    foreground_fraction: float = 0.5
    _indices: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        """One voxel index ``(x, y, z)`` of ``case``."""
        foreground, background = self._category_indices(case)
        use_foreground = foreground.size > 0 and (background.size == 0 or rng.random() < self.foreground_fraction)
        pool = foreground if use_foreground else background
        flat = int(pool[rng.integers(pool.size)])
        return tuple(int(i) for i in np.unravel_index(flat, case.brain.shape))

    def _category_indices(self, case: PreprocessedCase) -> tuple[np.ndarray, np.ndarray]:
        if case.case_id not in self._indices:
            if case.label is None:
                raise ValueError(f"case {case.case_id} has no label map: it cannot be used for training")
            labelled = np.asarray(case.label) > 0
            brain = np.asarray(case.brain) | labelled
            self._indices[case.case_id] = (np.flatnonzero(labelled), np.flatnonzero(brain & ~labelled))
        return self._indices[case.case_id]


@dataclass(frozen=True)
class TwoPathwaySegments:
    """DeepMedic training segments: normal ``(C, S, S, S)`` and subsampled inputs, ``(O, O, O)`` target.

    Args:
        segment_size: normal-pathway segment edge in voxels (paper: 25, predicting 9³).
        subsample_factor: the subsampled pathway's factor (paper: 3).
        flip_x_probability: mirror the segment along x with this probability (paper: 0.5).
    """

    segment_size: int = 25
    subsample_factor: int = 3
    flip_x_probability: float = 0.5

    @property
    def output_size(self) -> int:
        return self.segment_size - 2 * CONV_LAYERS

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        normal, subsampled = extract_training_pair(image, centre, self.segment_size, self.subsample_factor)
        target = extract_label_block(label, centre, self.output_size)
        if rng.random() < self.flip_x_probability:
            normal, subsampled, target = (np.flip(a, axis=-3) for a in (normal, subsampled, target))
        return (normal, subsampled), target
