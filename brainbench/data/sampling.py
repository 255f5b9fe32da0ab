"""Where training segments are centred, and how a model's inputs are cut around a centre.

A sampler draws a case and a segment centre in it (``draw(cases, rng)``) with a caller-supplied
generator, so that a seed fixes every segment of a run. Voxel index lists are computed once per case.
Extractors, which turn a centre into the network's inputs and target, belong to the models
(``models/deepmedic.py``, ``models/patches.py``): each model config names its extractor
(``model.segments``) and the data module receives it, so ``data/`` never imports a model's geometry.
An extractor is called as ``extractor(image, label, centre, rng, augment)`` and returns
``(inputs, target)``; ``augment=False`` cuts the plain segment (validation without augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from brainbench.data.cache import PreprocessedCase
from brainbench.errors import BrainbenchConfigError

Centre = tuple[int, int, int]


class CentreSampler(Protocol):
    """Draws the case and the voxel a training or validation segment is centred on."""

    def draw(self, cases: Sequence[PreprocessedCase], rng: np.random.Generator) -> tuple[PreprocessedCase, Centre]:
        ...


class PerCaseSampler:
    """A sampler whose case is uniform over ``cases`` and whose centre, drawn by the subclass's
    ``centre(case, rng)``, depends on that case alone."""

    def draw(self, cases: Sequence[PreprocessedCase], rng: np.random.Generator) -> tuple[PreprocessedCase, Centre]:
        """A case drawn uniformly, then one voxel index ``(x, y, z)`` of it."""
        case = cases[int(rng.integers(len(cases)))]
        return case, self.centre(case, rng)


@dataclass
class ForegroundBackgroundSampler(PerCaseSampler):
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

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> Centre:
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
class ClassFrequencySampler(PerCaseSampler):
    """Centres drawn class by class: P(class c) ∝ n_c ** exponent, then a voxel uniform within class c.

    ``exponent = 0`` makes every class present equally likely (Havaei phase 1, spec §1.7; Pereira's
    class balancing, §2.3); ``exponent = 1`` gives the brain's natural label distribution (Havaei
    phase 2), i.e. a uniform brain voxel; values in between move towards natural, the paper's
    unstated "more representative" distribution. Background centres are brain voxels of class 0;
    voxels outside the brain are never drawn.

    Args:
        exponent: see above.
        scope: ``"case"``: the case is drawn uniformly and n_c counts its voxels of class c (the
            balance holds within every case). ``"dataset"``: n_c counts class c over all the cases
            together and the voxel is uniform among those, so a case weighs by its share of the
            class: Havaei's patch set, built from every training brain with equiprobable labels.
    """

    exponent: float = 0.0
    scope: str = "case"
    _pools: dict[str, tuple[list[np.ndarray], np.ndarray]] = field(default_factory=dict, repr=False)
    _pooled: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.scope not in ("case", "dataset"):
            raise BrainbenchConfigError(f"ClassFrequencySampler scope: expected case or dataset, got {self.scope!r}")

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> Centre:
        """One voxel index ``(x, y, z)`` of ``case``."""
        pools, probabilities = self._class_pools(case)
        pool = pools[int(rng.choice(len(pools), p=probabilities))]
        return _unravel(pool[rng.integers(pool.size)], case)

    def draw(self, cases: Sequence[PreprocessedCase], rng: np.random.Generator) -> tuple[PreprocessedCase, Centre]:
        if self.scope == "case":
            return super().draw(cases, rng)
        class_probabilities, case_probabilities = self._pooled_weights(cases)
        c = int(rng.choice(class_probabilities.size, p=class_probabilities))
        case = cases[int(rng.choice(len(cases), p=case_probabilities[c]))]
        pool = self._class_pools(case)[0][c]
        return case, _unravel(pool[rng.integers(pool.size)], case)

    def _class_pools(self, case: PreprocessedCase) -> tuple[list[np.ndarray], np.ndarray]:
        """The case's brain voxels per class (flat indices; index = class) and P(class) within the case."""
        if case.case_id not in self._pools:
            flat, classes = brain_voxel_classes(case)
            counts = np.bincount(classes)
            pools = np.split(flat[np.argsort(classes, kind="stable")], np.cumsum(counts)[:-1])
            self._pools[case.case_id] = (pools, _class_weights(counts, self.exponent))
        return self._pools[case.case_id]

    def _pooled_weights(self, cases: Sequence[PreprocessedCase]) -> tuple[np.ndarray, np.ndarray]:
        """P(class) over the pooled cases (K,) and P(case | class) (K, n_cases)."""
        key = tuple(case.case_id for case in cases)
        if key not in self._pooled:
            sizes = [[p.size for p in self._class_pools(case)[0]] for case in cases]
            counts = np.zeros((max(map(len, sizes)), len(cases)))
            for i, n in enumerate(sizes):
                counts[:len(n), i] = n
            totals = counts.sum(axis=1, keepdims=True)
            self._pooled[key] = (_class_weights(totals[:, 0], self.exponent),
                                 np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0))
        return self._pooled[key]


def _class_weights(counts: np.ndarray, exponent: float) -> np.ndarray:
    """P(class) ∝ count ** exponent over the classes with a voxel (0 for absent classes)."""
    weights = np.where(counts > 0, np.asarray(counts, dtype=np.float64) ** exponent, 0.0)
    return weights / weights.sum()


@dataclass
class BrainUniformSampler(PerCaseSampler):
    """Centres uniform over a case's brain mask, labels unused (the distribution patch-wise
    inference sees; equal to :class:`ClassFrequencySampler` with ``exponent = 1`` on labelled data)."""

    _pools: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> Centre:
        """One voxel index ``(x, y, z)`` of ``case``."""
        if case.case_id not in self._pools:
            self._pools[case.case_id] = np.flatnonzero(np.asarray(case.brain))
        pool = self._pools[case.case_id]
        if pool.size == 0:
            raise ValueError(f"case {case.case_id} has an empty brain mask: no patch centre to draw")
        return _unravel(pool[rng.integers(pool.size)], case)


@dataclass
class WholeCaseSampler(PerCaseSampler):
    """One item per case drawn uniformly, centred on the middle of its brain's bounding box: for
    models trained on whole (cropped) volumes rather than patches (Brosch et al. 2016, spec §4.1),
    whose extractor cuts the brain box or a fixed crop around that centre."""

    _centres: dict[str, Centre] = field(default_factory=dict, repr=False)

    def centre(self, case: PreprocessedCase, rng: np.random.Generator) -> Centre:
        """The voxel index ``(x, y, z)`` in the middle of ``case``'s brain bounding box."""
        if case.case_id not in self._centres:
            nonzero = np.nonzero(np.asarray(case.brain))
            if nonzero[0].size == 0:
                raise ValueError(f"case {case.case_id} has an empty brain mask: no volume to crop")
            self._centres[case.case_id] = tuple(int((a.min() + a.max()) // 2) for a in nonzero)
        return self._centres[case.case_id]


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


def _unravel(flat: int, case: PreprocessedCase) -> Centre:
    return tuple(int(i) for i in np.unravel_index(int(flat), case.brain.shape))
