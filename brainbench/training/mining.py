"""Hard-negative mining for Dou et al.'s stage 2 (IEEE TMI 35(5):1182-1195, 2016; spec §5.5).

The discrimination CNN learns to tell CMBs from "hard mimics": the screening stage's false
positives. :class:`HardNegativeSampler` therefore needs the trained stage 1 before its phase
starts: ``prepare(net, cases)`` runs it on every case and keeps the candidates, and
:meth:`~brainbench.training.phases.Phase.prepare` calls it for the phase's training and
validation cases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from brainbench.data.cache import PreprocessedCase
from brainbench.data.sampling import Centre, ForegroundBackgroundSampler
from brainbench.errors import BrainbenchConfigError
from brainbench.models.dou import find_candidates, lesion_centres, screening_scores

log = logging.getLogger(__name__)


@dataclass
class HardNegativeSampler:
    """Stage-2 centres: CMB centres (positives) and stage-1 false positives (hard negatives).

    Positives are :func:`~brainbench.models.dou.lesion_centres` of the label; hard negatives are the
    stage-1 candidates (:func:`~brainbench.models.dou.find_candidates` of the ``stage`` submodule's
    scores) farther than ``hit_distance`` voxels from every CMB centre. Candidates within it are
    hits and used as neither. Both kinds are pooled over the cases drawn from: with probability
    ``positive_fraction`` a centre is uniform over every CMB of every case, otherwise uniform over
    every hard negative, so that CMB-free cases still give negatives and the balance holds
    although CMBs are few. When one pool is empty the other is used; when both are (a stage 1 that
    finds nothing on CMB-free cases), a uniform brain voxel of class 0 of a uniform case is the
    negative.

    Args:
        stage: dotted name of the stage-1 submodule (:class:`~brainbench.models.dou.DouCascade`:
            ``screening``).
        positive_fraction: probability of a positive. Default 0.5 [M]: the paper's ratio is unknown.
        hit_distance: voxels (Euclidean) within which a candidate counts as finding a CMB. Default
            5 [M]: the paper's hit radius is unverified (spec §5.5).
        threshold, nms_radius: candidate settings; ``None``: the net's ``screening_threshold`` and
            ``nms_radius`` (the test-time ones).
        device: where stage 1 runs while mining (``cuda``, ``cpu``); ``auto``: a GPU when there is
            one; ``None``: where the net is (the CPU before Lightning's fit: 6.7 s for a 256×256×40
            volume at the paper's widths on two cores, linear in voxels). The module is moved back
            afterwards.
    """

    stage: str = "screening"
    positive_fraction: float = 0.5
    hit_distance: float = 5.0
    threshold: float | None = None
    nms_radius: float | None = None
    device: str | None = None
    _positives: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _negatives: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _background: ForegroundBackgroundSampler = field(
        default_factory=lambda: ForegroundBackgroundSampler(foreground_fraction=0.0), repr=False)

    def __post_init__(self):
        if not 0.0 <= self.positive_fraction <= 1.0:
            raise BrainbenchConfigError(f"positive_fraction: must be in [0, 1], got {self.positive_fraction}")
        if self.hit_distance < 0:
            raise BrainbenchConfigError(f"hit_distance: must be >= 0 voxels, got {self.hit_distance}")

    def prepare(self, net: nn.Module, cases: Sequence[PreprocessedCase]) -> None:
        """Run stage 1 on every case and keep its CMB centres and hard negatives (replacing earlier ones)."""
        try:
            screening = net.get_submodule(self.stage)
        except AttributeError as error:
            raise BrainbenchConfigError(
                f"HardNegativeSampler stage: the net has no submodule {self.stage!r}") from error
        threshold = self.threshold if self.threshold is not None else getattr(net, "screening_threshold", None)
        nms_radius = self.nms_radius if self.nms_radius is not None else getattr(net, "nms_radius", None)
        if threshold is None or nms_radius is None:
            raise BrainbenchConfigError("HardNegativeSampler: set threshold and nms_radius, or use a net "
                                        "with screening_threshold and nms_radius (DouCascade)")
        home = next(screening.parameters()).device
        device = home if self.device is None else torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device)
        screening.to(device)
        try:
            hits = 0
            for case in cases:
                if case.label is None:
                    raise ValueError(f"case {case.case_id} has no label map: it cannot be used for training")
                centres, _ = find_candidates(screening_scores(screening, case.image, device=device),
                                             threshold, nms_radius)
                positives = lesion_centres(case.label)
                far = _farther_than(centres, positives, self.hit_distance)
                self._positives[case.case_id], self._negatives[case.case_id] = positives, centres[far]
                hits += int((~far).sum())
        finally:
            screening.to(home)
        log.info("hard-negative mining over %d cases: %d CMB centres, %d hard negatives, %d candidates "
                 "within %g voxels of a CMB (unused)", len(cases),
                 sum(len(self._positives[c.case_id]) for c in cases),
                 sum(len(self._negatives[c.case_id]) for c in cases), hits, self.hit_distance)

    def mined(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A prepared case's CMB centres and hard negatives, int64 (P, 3) and (N, 3)."""
        if case_id not in self._positives:
            raise BrainbenchConfigError(f"HardNegativeSampler: case {case_id} was not prepared: call "
                                        f"prepare(net, cases) with the stage-1 net first (Phase.prepare does)")
        return self._positives[case_id], self._negatives[case_id]

    def draw(self, cases: Sequence[PreprocessedCase], rng: np.random.Generator) -> tuple[PreprocessedCase, Centre]:
        """A case and a voxel index ``(x, y, z)`` of it (class docstring)."""
        pools = [[self.mined(case.case_id)[kind] for case in cases] for kind in (0, 1)]
        sizes = np.array([[len(p) for p in pool] for pool in pools])  # (2, n_cases)
        if not sizes.any():
            case = cases[int(rng.integers(len(cases)))]
            return case, self._background.centre(case, rng)
        kind = 0 if rng.random() < self.positive_fraction else 1
        if not sizes[kind].any():
            kind = 1 - kind
        flat = int(rng.integers(sizes[kind].sum()))
        index = int(np.searchsorted(np.cumsum(sizes[kind]), flat, side="right"))
        offset = flat - int(sizes[kind][:index].sum())
        return cases[index], tuple(int(v) for v in pools[kind][index][offset])


def _farther_than(points: np.ndarray, centres: np.ndarray, distance: float) -> np.ndarray:
    """Bool (M,): points farther than ``distance`` (Euclidean, voxels) from every centre."""
    if len(centres) == 0:
        return np.ones(len(points), dtype=bool)
    gaps = np.linalg.norm(points[:, None, :].astype(np.float64) - centres[None, :, :], axis=-1)
    return gaps.min(axis=1) > distance
