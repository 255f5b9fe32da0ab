"""Voxel-overlap metrics on boolean masks, with the empty-mask rule always chosen by the caller.

Challenges disagree on what Dice or sensitivity is worth when a mask is empty (challenges.md §1.1),
so no function here picks a default: the value for each undefined case is a required keyword argument.
All results are unitless fractions in [0, 1].
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
    def from_masks(cls, pred: np.ndarray, ref: np.ndarray) -> Confusion:
        """Count over the whole volume: ``tn`` depends on the field of view, as BraTS specificity does."""
        pred = np.asarray(pred, dtype=bool)
        ref = np.asarray(ref, dtype=bool)
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
        tp = int(np.count_nonzero(pred & ref))
        n_pred = int(np.count_nonzero(pred))
        n_ref = int(np.count_nonzero(ref))
        return cls(tp=tp, fp=n_pred - tp, fn=n_ref - tp, tn=pred.size - n_pred - n_ref + tp)

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
