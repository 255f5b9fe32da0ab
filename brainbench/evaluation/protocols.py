"""How one challenge edition scores a case: which metrics, and what each is worth on empty masks.

The empty-mask values are where editions disagree most (challenges.md §1), so they live here, next to
the edition's name, rather than as defaults inside the metric functions.
"""

from __future__ import annotations

from dataclasses import dataclass

METRIC_UNITS = {
    "dice": "1",
    "hd95": "mm",
    "hd": "mm",
    "sensitivity": "1",
    "specificity": "1",
}
"""Unit of every metric the evaluator knows: ``"1"`` = unitless fraction in [0, 1], ``"mm"`` = millimetres."""

BRATS_DIAGONAL_MM = 373.12866
"""√(240² + 240² + 155²) mm, the diagonal of the BraTS volume: nnU-Net's HD95 when one mask is empty."""


@dataclass(frozen=True)
class Protocol:
    """One edition's per-case evaluation rules.

    A case whose prediction is missing or unusable is scored as an all-background prediction, so it
    receives the "exactly one empty" values wherever the reference region is non-empty.

    Attributes:
        name: edition label written into reports.
        metrics: metric names, each a key of :data:`METRIC_UNITS`.
        dice_both_empty: Dice when prediction and reference are both empty (exactly one empty gives 0).
        hd_both_empty: Hausdorff distance (mm) when both are empty.
        hd_one_empty: Hausdorff distance (mm) when exactly one is empty.
        sensitivity_both_empty: sensitivity when both are empty.
        sensitivity_ref_empty: sensitivity when the reference is empty and the prediction is not.
        specificity_no_negatives: specificity when the reference fills the whole volume.
    """

    name: str
    metrics: tuple[str, ...]
    dice_both_empty: float
    hd_both_empty: float
    hd_one_empty: float
    sensitivity_both_empty: float
    sensitivity_ref_empty: float
    specificity_no_negatives: float

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRIC_UNITS]
        if unknown:
            known = sorted(METRIC_UNITS)
            raise ValueError(f"protocol {self.name!r}: unknown metrics {unknown}; known: {known}")


BRATS_LEGACY = Protocol(
    name="brats-legacy-2017-2021",
    metrics=("dice", "hd95", "sensitivity", "specificity"),
    dice_both_empty=1.0,
    hd_both_empty=0.0,
    hd_one_empty=BRATS_DIAGONAL_MM,
    sensitivity_both_empty=1.0,
    sensitivity_ref_empty=0.0,
    specificity_no_negatives=1.0,
)
"""BraTS 2017–2021 (CaPTk; as reimplemented by nnU-Net, challenges.md §2.5).

Sensitivity follows TP/(TP+FN+eps) of the BraTS 2023 legacy scorer: 1 when both are empty, 0 when only
the reference is. Specificity is TN/(TN+FP) over the whole 240×240×155 volume.
"""

PROTOCOLS: dict[str, Protocol] = {protocol.name: protocol for protocol in (BRATS_LEGACY,)}
"""Protocols by name; each challenge edition names its protocol (``Edition.protocol``)."""
