"""Where training segments are centred, and how a model's inputs are cut around a centre.

Samplers draw segment centres from a cached case with a caller-supplied generator, so that a
seed fixes every segment of a run. Voxel index lists are computed once per case. Extractors, which
turn a centre into the network's inputs and target, belong to the models (``models/deepmedic.py``,
``models/patches.py``): each model config names its extractor (``model.segments``) and the data
module receives it, so ``data/`` never imports a model's geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brainbench.data.cache import PreprocessedCase


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


@dataclass
class ClassFrequencySampler:
    """Centres drawn class by class: P(class c) ∝ n_c ** exponent over the classes in a case's brain.

    ``exponent = 0`` makes every class present equally likely (Havaei phase 1, spec §1.7; Pereira's
    class balancing, §2.3); ``exponent = 1`` gives the brain's natural label distribution (Havaei
    phase 2), i.e. a uniform brain voxel; values in between move towards natural, the paper's
    unstated "more representative" distribution. Background centres are brain voxels of class 0;
    voxels outside the brain are never drawn. The voxel is then uniform within its class.
    """

    exponent: float = 0.0
    _pools: dict[str, tuple[list[np.ndarray], np.ndarray]] = field(default_factory=dict, repr=False)

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        """One voxel index ``(x, y, z)`` of ``case``."""
        pools, probabilities = self._class_pools(case)
        pool = pools[int(rng.choice(len(pools), p=probabilities))]
        return _unravel(pool[rng.integers(pool.size)], case)

    def _class_pools(self, case: PreprocessedCase) -> tuple[list[np.ndarray], np.ndarray]:
        if case.case_id not in self._pools:
            flat, classes = brain_voxel_classes(case)
            order = np.argsort(classes, kind="stable")
            counts = np.bincount(classes)
            pools = [p for p in np.split(flat[order], np.cumsum(counts)[:-1]) if p.size]
            weights = np.array([p.size for p in pools], dtype=np.float64) ** self.exponent
            self._pools[case.case_id] = (pools, weights / weights.sum())
        return self._pools[case.case_id]


@dataclass
class BrainUniformSampler:
    """Centres uniform over a case's brain mask, labels unused (the distribution patch-wise
    inference sees; equal to :class:`ClassFrequencySampler` with ``exponent = 1`` on labelled data)."""

    _pools: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> tuple[int, int, int]:
        """One voxel index ``(x, y, z)`` of ``case``."""
        if case.case_id not in self._pools:
            self._pools[case.case_id] = np.flatnonzero(np.asarray(case.brain))
        pool = self._pools[case.case_id]
        if pool.size == 0:
            raise ValueError(f"case {case.case_id} has an empty brain mask: no patch centre to draw")
        return _unravel(pool[rng.integers(pool.size)], case)


def brain_voxel_classes(case: PreprocessedCase) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the brain (mask ∪ labelled voxels) and their class, both int64 (V,)."""
    if case.label is None:
        raise ValueError(f"case {case.case_id} has no label map: it cannot be used for training")
    label = np.asarray(case.label).ravel()
    flat = np.flatnonzero(np.asarray(case.brain).ravel() | (label > 0))
    return flat, label[flat].astype(np.int64)


def label_frequencies(cases: list[PreprocessedCase], n_classes: int) -> np.ndarray:
    """Brain-voxel label frequencies pooled over ``cases`` (n_classes,), each class counted once more
    (Laplace) so that a class absent from the training cases keeps a finite log frequency."""
    counts = np.ones(n_classes, dtype=np.float64)
    for case in cases:
        counts += np.bincount(brain_voxel_classes(case)[1], minlength=n_classes)[:n_classes]
    return counts / counts.sum()


def _unravel(flat: int, case: PreprocessedCase) -> tuple[int, int, int]:
    return tuple(int(i) for i in np.unravel_index(int(flat), case.brain.shape))
