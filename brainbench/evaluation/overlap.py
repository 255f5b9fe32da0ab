"""Voxel-overlap and volume metrics on boolean masks, with the empty-mask rule always chosen by the caller.

Challenges disagree on what Dice or sensitivity is worth when a mask is empty (challenges.md §1.1),
so no function here picks a default: the value for each undefined case is a required keyword argument.
Overlap results are unitless fractions in [0, 1]; volume metrics (§1.3) state their unit (ml, %, signed
fraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of a prediction against a reference (true/false positives/negatives)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def from_masks(cls, pred: np.ndarray, ref: np.ndarray, *, outside: int = 0) -> Confusion:
        """Count over the whole volume: ``tn`` depends on the field of view, as BraTS specificity does.

        ``outside``: voxels of the volume cropped away from both masks (all background), added to ``tn``.
        """
        pred = np.asarray(pred, dtype=bool)
        ref = np.asarray(ref, dtype=bool)
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
        tp = int(np.count_nonzero(pred & ref))
        n_pred = int(np.count_nonzero(pred))
        n_ref = int(np.count_nonzero(ref))
        return cls(tp=tp, fp=n_pred - tp, fn=n_ref - tp, tn=pred.size + outside - n_pred - n_ref + tp)

    @property
    def ref_empty(self) -> bool:
        return self.tp + self.fn == 0

    @property
    def pred_empty(self) -> bool:
        return self.tp + self.fp == 0


def dice(counts: Confusion, *, if_both_empty: float) -> float:
    """2·TP / (2·TP + FP + FN); undefined only when both masks are empty (exactly one empty gives 0)."""
    denominator = 2 * counts.tp + counts.fp + counts.fn
    if denominator == 0:
        return float(if_both_empty)
    return 2 * counts.tp / denominator


def sensitivity(counts: Confusion, *, if_both_empty: float, if_ref_empty: float) -> float:
    """TP / (TP + FN); ``if_ref_empty`` applies when the reference is empty but the prediction is not."""
    if counts.ref_empty:
        return float(if_both_empty if counts.pred_empty else if_ref_empty)
    return counts.tp / (counts.tp + counts.fn)


def specificity(counts: Confusion, *, if_no_negatives: float) -> float:
    """TN / (TN + FP) over the whole volume; undefined only when the reference fills the volume."""
    negatives = counts.tn + counts.fp
    if negatives == 0:
        return float(if_no_negatives)
    return counts.tn / negatives


def precision(counts: Confusion, *, if_both_empty: float, if_pred_empty: float) -> float:
    """PPV = TP / (TP + FP); ``if_pred_empty`` applies when the prediction is empty but the reference not."""
    if counts.pred_empty:
        return float(if_both_empty if counts.ref_empty else if_pred_empty)
    return counts.tp / (counts.tp + counts.fp)


# -- volume metrics: volumes are voxel counts times the voxel volume (mm³) -----------------------------


def absolute_volume_difference_mm3(counts: Confusion, voxel_volume_mm3: float) -> float:
    """|V_pred − V_ref| in mm³ (microbleeds: a few mm³ each); defined for empty masks too."""
    return abs((counts.tp + counts.fp) - (counts.tp + counts.fn)) * voxel_volume_mm3


def absolute_volume_difference_ml(counts: Confusion, voxel_volume_mm3: float) -> float:
    """|V_pred − V_ref| in ml (ISLES 2022 "Volume_difference"); defined for empty masks too."""
    return absolute_volume_difference_mm3(counts, voxel_volume_mm3) / 1000.0


def absolute_volume_difference_percent(counts: Confusion, *, if_ref_empty: float) -> float:
    """AVD = |V_pred − V_ref| / V_ref × 100 (MRBrainS13, %); ``if_ref_empty`` when V_ref = 0."""
    return _volume_ratio(counts, if_ref_empty=if_ref_empty, absolute=True)


def volume_difference_ratio(counts: Confusion, *, if_ref_empty: float) -> float:
    """VDR = (V_pred − V_ref) / V_ref, signed, a fraction (review Table 1); ``if_ref_empty`` when V_ref = 0."""
    return _volume_ratio(counts, if_ref_empty=if_ref_empty, absolute=False) / 100.0


def volumetric_similarity(counts: Confusion, *, if_both_empty: float) -> float:
    """VS = 1 − |V_pred − V_ref| / (V_pred + V_ref) (MRBrainS18); ``if_both_empty`` when the sum is 0."""
    total = 2 * counts.tp + counts.fp + counts.fn
    if total == 0:
        return float(if_both_empty)
    return 1.0 - abs(counts.fp - counts.fn) / total


def _volume_ratio(counts: Confusion, *, if_ref_empty: float, absolute: bool) -> float:
    """(V_pred − V_ref) / V_ref × 100, or its absolute value; voxel volumes cancel."""
    if counts.ref_empty:
        return float(if_ref_empty)
    difference = counts.fp - counts.fn
    return (abs(difference) if absolute else difference) / (counts.tp + counts.fn) * 100.0
