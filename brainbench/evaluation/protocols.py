"""How one challenge edition scores a case: which metrics, which variant of each, and empty-mask values.

The empty-mask values and the Hausdorff variant are where editions disagree most (challenges.md §1), so
they live here, next to the edition's name, rather than as defaults inside the metric functions. A
protocol is data only: :func:`brainbench.evaluation.evaluate.evaluate_case` dispatches its metrics.
NaN as a value means "undefined, left out of means", the way the organisers' scripts report it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from brainbench.challenges.base import Edition
from brainbench.errors import BrainbenchConfigError
from brainbench.evaluation.lesions import BRATS2023_LESION_RULES, AnimaRule, BratsLesionRule, CentreHitRule

METRIC_UNITS = {
    "dice": "1",
    "sensitivity": "1",
    "specificity": "1",
    "ppv": "1",
    "hd95": "mm",
    "hd": "mm",
    "assd": "mm",
    "avd": "%",
    "vdr": "1",
    "volume_difference_ml": "ml",
    "volume_difference_mm3": "mm3",
    "volumetric_similarity": "1",
    "lesion_tpr": "1",
    "lesion_ppv": "1",
    "lesion_f1": "1",
    "lesion_count_difference": "lesions",
    "lesion_dice": "1",
    "lesion_hd95": "mm",
    "lesion_false_positives": "lesions",
}
"""Unit of every metric: ``"1"`` = unitless fraction (Dice in [0, 1], VDR signed), ``"mm"``, ``"%"``,
``"ml"``, ``"lesions"`` (a count; ``lesion_false_positives`` averaged over cases is false positives per
subject)."""

SURFACE_VARIANTS = {
    "medpy": ("hd95", "hd", "assd"),
    "surfel": ("hd95", "hd", "assd"),
    "kth-ranked": ("hd95", "hd", "assd"),
    "in-plane": ("hd95",),
    "covalic": ("hd", "assd"),
    "itk-set": ("hd",),
}
"""Surface-distance variants (spec §1.2) and the metrics each defines (functions in ``surface.py``):
medpy voxel boundary (``hd95``/``hd``: pooled percentile; ``assd``), DeepMind surfels (robust HD and
area-weighted average), K-th ranked (MRBrainS13), MRBrainS18 in-plane erosion + KD-tree, covalic
(ISLES 2015–2017: ball-gradient boundary read in a Maurer map, ASSD = mean of the directed means), ITK
set distance (anima)."""

LESION_RULES = {
    "anima": ("lesion_tpr", "lesion_ppv", "lesion_f1"),
    "isles22": ("lesion_f1", "lesion_count_difference"),
    "brats2023": ("lesion_dice", "lesion_hd95"),
    "centre-hit": ("lesion_f1", "lesion_count_difference", "lesion_tpr", "lesion_ppv", "lesion_false_positives"),
}
"""Lesion matching rules (``lesions.py``) and the metrics each gives."""

MISSING_CASE_RULES = ("empty", "lowest-rank")
"""How a missing or unusable prediction counts: scored as an empty prediction (every protocol's
per-case values), and for ISLES 2015–2017 also ranked last on that case by the ranking step."""

BRATS_DIAGONAL_MM = 373.12866
"""√(240² + 240² + 155²) mm, the diagonal of the BraTS volume: nnU-Net's HD95 when one mask is empty."""

BRATS_2023_MISS_MM = 374.0
"""HD95 the BraTS 2023 scorer writes for an empty mask (∞ replaced by 374, spec §1.2, §2.6)."""

_NAN = math.nan

INPUT_POLICIES = ("official", "strict")
"""How prediction files are read. ``strict``: a file off the reference grid (shape, or affine by more than
1e-3 mm) or holding NaN, non-integer values or labels outside the edition's is scored as an empty
prediction. ``official``: as the edition's scorer read it (:attr:`Protocol.scorer_input`), each case read
differently from ``strict`` reported in one line. Both measure with a header voxel size (NIfTI pixdim), the
reference's under ``strict`` and the one the scorer read under ``official``, never the affine's column
norms, which differ from it by float rounding on oblique files."""


def other_values_as_background(values: np.ndarray, labels: Collection[int]) -> np.ndarray:
    """Values that are not one of ``labels`` (label 4 in BraTS 2023, 2.5, NaN) become background.

    rachitsaluja/BraTS-2023-Metrics ``eval.py`` ``get_TissueWiseSeg``: each region keeps the voxels
    equal to one of its labels (``np.place(pred, (pred != 1) & (pred != 2) & (pred != 3), 0)``).
    """
    return np.where(np.isin(values, list(labels)), values, 0).astype(np.int16)


def nonzero_as_lesion(values: np.ndarray, labels: Collection[int]) -> np.ndarray:
    """Any non-zero value (a probability, label 2, NaN) is lesion, label 1.

    ezequieldlrosa/isles22_docker_evaluation ``eval_metrics_isles.py``: ``np.asarray(pred).astype(bool)``.
    """
    return (values != 0).astype(np.int16)


def truncated_to_uint8(values: np.ndarray, labels: Collection[int]) -> np.ndarray:
    """Non-integer values truncated toward zero; then values other than a label count for none.

    hjkuijf/MRBrainS18 ``evaluation.py`` ``getImages``: a non-integer image is ``sitk.Cast`` to UInt8;
    each label is then selected by ``BinaryThreshold(image, k, k)``.
    """
    return other_values_as_background(np.trunc(values), labels)


@dataclass(frozen=True)
class LabelReading:
    """How a scorer turns voxel values that brainbench's strict reading refuses into labels."""

    read: Callable[[np.ndarray, Collection[int]], np.ndarray]
    effect: str


@dataclass(frozen=True)
class ScorerInput:
    """What an edition's scorer does with a prediction file: the ``official`` input policy.

    The default is brainbench's ``strict`` reading, kept for editions whose scorer code was not read.

    Attributes:
        scorer: the scorer, named in each problem line it decides.
        labels: its reading of NaN, non-integer or unknown values; None: it refuses them too.
        compares_affine: False when it never compares the headers: the voxels are scored on the reference
            grid whatever the affine says (the shapes must still agree).
        spacing_from: whose header voxel size it measures with, ``"reference"`` or ``"prediction"``.
    """

    scorer: str = "brainbench's strict reading"
    labels: LabelReading | None = None
    compares_affine: bool = True
    spacing_from: str = "reference"

    def __post_init__(self) -> None:
        if self.spacing_from not in ("reference", "prediction"):
            raise ValueError(f"{self.scorer}: spacing_from must be 'reference' or 'prediction'")


STRICT_INPUT = ScorerInput()
"""The ``strict`` policy, and ``official`` for an edition that declares no scorer reading."""

BRATS_2023_INPUT = ScorerInput(
    scorer="BraTS-2023-Metrics eval.py",
    labels=LabelReading(other_values_as_background, "values other than the edition's labels are background"),
    compares_affine=False,
    spacing_from="prediction",
)
"""rachitsaluja/BraTS-2023-Metrics ``eval.py`` ``get_LesionWiseScores``: ``nib.load(...).get_fdata()`` of
both files, no header comparison, ``sx, sy, sz = pred_nii.header.get_zooms()``."""

ISLES_2022_INPUT = ScorerInput(
    scorer="ISLES'22 evaluation.py",
    labels=LabelReading(nonzero_as_lesion, "any non-zero value is lesion"),
    compares_affine=False,
    spacing_from="prediction",
)
"""ezequieldlrosa/isles22_docker_evaluation ``evaluation.py`` ``score_case``: both images read by
SimpleITK, no header comparison, voxel volume of the prediction (``get_voxel_volume(pred)``)."""

MRBRAINS18_INPUT = ScorerInput(
    scorer="MRBrainS18 evaluation.py",
    labels=LabelReading(truncated_to_uint8, "non-integer values are truncated (UInt8 cast), other values "
                                            "count for no label"),
    compares_affine=False,
    spacing_from="reference",
)
"""hjkuijf/MRBrainS18 ``evaluation.py`` ``getImages``: only the sizes are compared (``assert``), then
``resultImage.CopyInformation(testImage)`` gives the prediction the reference's geometry."""


def input_policy_note(policy: str, protocol: Protocol) -> str:
    """The sentence stating how the predictions were read, shown next to their scores."""
    if policy == "strict":
        return ("Input policy: strict (a prediction off the reference grid or with values other than the "
                "edition's labels is scored as empty).")
    if protocol.scorer_input == STRICT_INPUT:
        return "Input policy: official (no scorer reading is declared for this edition: read as strict)."
    return (f"Input policy: official (predictions read as {protocol.scorer_input.scorer} reads them; each case "
            "read differently from strict is listed as a problem).")


@dataclass(frozen=True)
class Protocol:
    """One edition's per-case evaluation rules.

    A case whose prediction is missing or unusable is scored as an all-background prediction, so it
    receives the "exactly one empty" values wherever the reference region is non-empty.

    Attributes:
        name: edition label written into reports.
        metrics: metric names, each a key of :data:`METRIC_UNITS`.
        dice_both_empty: Dice when prediction and reference are both empty (exactly one empty gives 0).
        hd_both_empty: surface distance (``hd95``, ``hd``, ``assd``; mm) when both are empty.
        hd_one_empty: surface distance (mm) when exactly one is empty.
        sensitivity_both_empty: sensitivity when both are empty.
        sensitivity_ref_empty: sensitivity when the reference is empty and the prediction is not.
        specificity_no_negatives: specificity when the reference fills the whole volume.
        ppv_both_empty: PPV when both are empty.
        ppv_pred_empty: PPV when the prediction is empty and the reference is not.
        volume_ref_empty: AVD and VDR when the reference is empty.
        vs_both_empty: volumetric similarity when both are empty.
        surface_variant: key of :data:`SURFACE_VARIANTS`.
        lesion_rule: key of :data:`LESION_RULES`, or None.
        lesion_both_empty: lesion F1 with no lesion in either mask (``isles22`` and ``centre-hit`` rules).
        anima: anima detection parameters (``lesion_rule="anima"``).
        brats_lesions: BraTS 2023 dilation/threshold (``lesion_rule="brats2023"``).
        centre_hit: microbleed hit radius and its units (``lesion_rule="centre-hit"``).
        ignore_labels: reference labels whose voxels are set to background in both masks before any
            metric (MRBrainS18 9 and 10).
        missing_case: one of :data:`MISSING_CASE_RULES`.
        scorer_input: how the edition's scorer reads a prediction file (``official`` input policy).
    """

    name: str
    metrics: tuple[str, ...]
    dice_both_empty: float = _NAN
    hd_both_empty: float = _NAN
    hd_one_empty: float = _NAN
    sensitivity_both_empty: float = _NAN
    sensitivity_ref_empty: float = _NAN
    specificity_no_negatives: float = _NAN
    ppv_both_empty: float = _NAN
    ppv_pred_empty: float = _NAN
    volume_ref_empty: float = _NAN
    vs_both_empty: float = _NAN
    surface_variant: str = "medpy"
    lesion_rule: str | None = None
    lesion_both_empty: float = _NAN
    anima: AnimaRule = AnimaRule()
    brats_lesions: BratsLesionRule | None = None
    centre_hit: CentreHitRule | None = None
    ignore_labels: frozenset[int] = frozenset()
    missing_case: str = "empty"
    scorer_input: ScorerInput = STRICT_INPUT

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRIC_UNITS]
        if unknown:
            known = sorted(METRIC_UNITS)
            raise ValueError(f"protocol {self.name!r}: unknown metrics {unknown}; known: {known}")
        if self.surface_variant not in SURFACE_VARIANTS:
            raise ValueError(f"protocol {self.name!r}: unknown surface variant {self.surface_variant!r}")
        surface = [m for m in self.metrics if m in ("hd95", "hd", "assd")]
        undefined = [m for m in surface if m not in SURFACE_VARIANTS[self.surface_variant]]
        if undefined:
            raise ValueError(f"protocol {self.name!r}: variant {self.surface_variant!r} defines no {undefined}")
        lesion = [m for m in self.metrics if m.startswith("lesion_")]
        if lesion and (self.lesion_rule not in LESION_RULES or set(lesion) - set(LESION_RULES[self.lesion_rule])):
            raise ValueError(f"protocol {self.name!r}: lesion rule {self.lesion_rule!r} does not give {lesion}")
        if self.lesion_rule == "brats2023" and self.brats_lesions is None:
            raise ValueError(f"protocol {self.name!r}: lesion rule 'brats2023' needs brats_lesions")
        if self.lesion_rule == "centre-hit" and self.centre_hit is None:
            raise ValueError(f"protocol {self.name!r}: lesion rule 'centre-hit' needs centre_hit")
        if self.missing_case not in MISSING_CASE_RULES:
            raise ValueError(f"protocol {self.name!r}: missing_case must be one of {MISSING_CASE_RULES}")


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

medpy HD95. Sensitivity follows TP/(TP+FN+eps) of the BraTS 2023 legacy scorer: 1 when both are empty,
0 when only the reference is. Specificity is TN/(TN+FP) over the whole 240×240×155 volume. Missing case:
empty prediction (Dice 0, HD95 373.13).
"""


def _brats_2023(subchallenge: str) -> Protocol:
    return Protocol(
        name=f"brats-2023-{subchallenge.lower()}",
        metrics=("dice", "hd95", "sensitivity", "specificity", "lesion_dice", "lesion_hd95"),
        dice_both_empty=1.0,
        hd_both_empty=0.0,
        hd_one_empty=BRATS_2023_MISS_MM,
        sensitivity_both_empty=1.0,
        sensitivity_ref_empty=0.0,
        specificity_no_negatives=0.0,
        surface_variant="surfel",
        lesion_rule="brats2023",
        brats_lesions=BRATS2023_LESION_RULES[subchallenge],
        scorer_input=BRATS_2023_INPUT,
    )


BRATS_2023 = {sub: _brats_2023(sub) for sub in BRATS2023_LESION_RULES}
"""BraTS 2023 GLI/SSA/PED/MEN/MET (official ``BraTS-2023-Metrics``, spec §2.6, §1.2).

"Legacy" Dice (both empty 1), surfel robust HD95 (both empty 0, one empty 374), sensitivity and
specificity with +eps denominators (both empty sensitivity 1; no negatives gives specificity 0), and
lesion-wise Dice/HD95 with the sub-challenge's dilation and volume threshold (lesions.py). Input as the
scorer reads it: :data:`BRATS_2023_INPUT`. Missing case: empty prediction.
"""

BRATS_VSD = Protocol(
    name="brats-vsd-2012-2016",
    metrics=("dice", "ppv", "sensitivity"),
    dice_both_empty=1.0,
    sensitivity_both_empty=1.0,
    sensitivity_ref_empty=0.0,
    ppv_both_empty=1.0,
    ppv_pred_empty=0.0,
)
"""BRATS 2012–2016 on the VSD online table (spec §2.7): Dice, PPV, sensitivity per region.

Means are "divided by the number of cases": a missing case is scored as an empty prediction, which
gives exactly 0 for all three metrics on a non-empty region (PPV of an empty prediction is 0 here).
Both-empty values (1) are not documented by VSD [I].
"""

COVALIC_EMPTY_OVERLAP = 0.0
"""covalic's Dice, sensitivity and PPV divide by their voxel count plus 1e-20 (InsightSoftwareConsortium/covalic
``Code/Metrics/{DiceOverlap,Sensitivity,PositivePredictiveValue}ImageToImageMetric.txx``): an empty
denominator gives 0 / 1e-20 = 0, and a count of at least one is unchanged by the 1e-20 in float64."""

ISLES_2015_2017 = Protocol(
    name="isles-2015-2017",
    metrics=("dice", "assd", "hd", "ppv", "sensitivity"),
    dice_both_empty=COVALIC_EMPTY_OVERLAP,
    hd_both_empty=0.0,
    hd_one_empty=math.inf,
    sensitivity_both_empty=COVALIC_EMPTY_OVERLAP,
    sensitivity_ref_empty=COVALIC_EMPTY_OVERLAP,
    ppv_both_empty=COVALIC_EMPTY_OVERLAP,
    ppv_pred_empty=COVALIC_EMPTY_OVERLAP,
    surface_variant="covalic",
    missing_case="lowest-rank",
)
"""ISLES 2015 SISS/SPES, 2016, 2017 (``validateLabelImages-ISLES``: ASSD, DC, HD, precision, recall;
spec §3.3, §1.2). covalic max HD (fraction 1.0) and AverageDistance ASSD; both empty 0, exactly one
empty ∞ (``vnl_huge_val``) for HD and ASSD; Dice, precision and recall 0 wherever their denominator is
empty (:data:`COVALIC_EMPTY_OVERLAP`), two empty masks included. A failed case is excluded from the
ASSD/HD means and ranked last (lowest vacant rank).
"""

ISLES_2022 = Protocol(
    name="isles-2022",
    metrics=("dice", "volume_difference_ml", "lesion_count_difference", "lesion_f1"),
    dice_both_empty=1.0,
    lesion_rule="isles22",
    lesion_both_empty=1.0,
    scorer_input=ISLES_2022_INPUT,
)
"""ISLES 2022 (``ezequieldlrosa/isles22``, spec §3.3): Dice (both empty 1), |ΔV| in ml, lesion-count
difference and lesion F1 (26-connectivity, any overlap; no lesions at all → 1). Input as the scorer reads it:
:data:`ISLES_2022_INPUT`. Missing case: empty."""

MSSEG_2016 = Protocol(
    name="msseg-2016",
    metrics=("dice", "sensitivity", "ppv", "specificity", "hd", "lesion_tpr", "lesion_ppv", "lesion_f1"),
    sensitivity_ref_empty=0.0,
    ppv_pred_empty=0.0,
    specificity_no_negatives=_NAN,
    surface_variant="itk-set",
    lesion_rule="anima",
)
"""MSSEG 2016 (``animaSegPerfAnalyzer``, spec §4.3, §1.2, §1.4): segmentation scores, ITK Hausdorff over
whole masks, detection LTPR/LPPV/F1 (α 0.10, β 0.70, γ 0.65, lesions > 3 mm³, 6-connectivity). NaN
wherever a label set is missing (both-empty Dice, HD with an empty mask, LTPR/LPPV with no lesion).
Missing case: empty."""

ISBI_2015 = Protocol(
    name="isbi-2015",
    metrics=("dice", "ppv", "sensitivity", "avd", "assd"),
    sensitivity_ref_empty=0.0,
    ppv_pred_empty=0.0,
)
"""ISBI 2015 longitudinal MS (spec §4.2): the voxel metrics of the organisers' list (Dice, PPV, TPR,
volume difference as AVD %, ASSD with medpy boundaries). LTPR/LFPR are not computed: their lesion
matching rule was not found [R]. Empty masks undocumented: NaN. Missing case: empty."""

MICCAI_2008 = Protocol(
    name="miccai-2008",
    metrics=("avd", "assd", "sensitivity", "ppv", "dice"),
    sensitivity_ref_empty=0.0,
    ppv_pred_empty=0.0,
)
"""MICCAI 2008 MS lesion challenge (spec §4.1): volume difference (AVD %), ASSD, voxel TPR, PPV and Dice.
The organisers' lesion-wise TPR/FPR and the score normalised to inter-rater 90 are [R] and not computed.
Empty masks undocumented: NaN. Missing case: empty."""

MRBRAINS13 = Protocol(
    name="mrbrains13",
    metrics=("dice", "hd95", "avd"),
    dice_both_empty=_NAN,
    surface_variant="kth-ranked",
)
"""MRBrainS13 (spec §5): Dice (the board prints it ×100), K-th ranked HD95 (mm) and AVD (%) per tissue.
Empty masks are not documented [P]: NaN. Missing case: empty."""

MRBRAINS18 = Protocol(
    name="mrbrains18",
    metrics=("dice", "hd95", "volumetric_similarity"),
    surface_variant="in-plane",
    ignore_labels=frozenset({9, 10}),
    scorer_input=MRBRAINS18_INPUT,
)
"""MRBrainS18 (organisers' evaluation script, spec §6, §1.2): Dice, in-plane-erosion KD-tree HD95, VS
per label 1–8 after masking reference labels 9 (infarction) and 10 (other) out of both images. The
script's ``None`` (Dice/VS both empty, HD95 either empty) is NaN here. Input as the script reads it:
:data:`MRBRAINS18_INPUT`. Missing case: empty."""

NEOBRAINS12 = Protocol(
    name="neobrains12",
    metrics=("dice", "assd", "hd"),
)
"""NeoBrainS12 (spec §7): Dice, mean surface distance and Hausdorff distance per tissue; the HD variant
is not stated, medpy voxel boundaries are used; empty masks undefined (NaN). Missing case: empty."""

MICROBLEED_HIT = CentreHitRule()
"""The hit rule of both microbleed protocols: centres of mass at most 5 voxel index units apart. VALDO's
value and Dou et al.'s radius were not found (architectures.md §5.5 [M]): the 5 is brainbench's choice."""

VALDO_2021_TASK2 = Protocol(
    name="valdo-2021-task2",
    metrics=("dice", "volume_difference_mm3", "lesion_f1", "lesion_count_difference", "lesion_tpr",
             "lesion_false_positives"),
    dice_both_empty=1.0,
    lesion_rule="centre-hit",
    lesion_both_empty=1.0,
    centre_hit=MICROBLEED_HIT,
)
"""VALDO 2021 Task 2, cerebral microbleeds (lesions.py :func:`microbleed_detection`): Dice, absolute
volume difference (mm³: a CMB of 5 mm diameter is about 65 mm³, 0.065 ml, which a table printing ml
would round to 0; the challenge's unit was not verified), detection F1 = 2TP/(2TP+FP+FN) and |#pred − #ref| CMBs, with sensitivity and the
false-positive count added. 26-connected CMBs hit when their centres of mass are within
:data:`MICROBLEED_HIT` (voxel index units). Unverified, brainbench's choices: the hit radius, and 1 for
Dice and F1 when a case has no CMB in either mask (as ISLES 2022; a subject without CMBs and a clean
prediction counts as perfect). Sensitivity is NaN with no reference CMB. Missing case: empty."""

DOU_2016 = Protocol(
    name="dou-2016",
    metrics=("lesion_tpr", "lesion_ppv", "lesion_false_positives", "lesion_f1"),
    lesion_rule="centre-hit",
    lesion_both_empty=1.0,
    centre_hit=MICROBLEED_HIT,
)
"""Dou et al. 2016's report on its released CMB data (architectures.md §5.5): sensitivity S = TP/#CMB,
precision P = TP/(TP+FP), false positives per subject FP_avg (the mean of ``lesion_false_positives``), and
F1 as VALDO defines it. Dou counts a detection within a radius of an annotated centre; that radius is
unverified [M], so the rule is :data:`MICROBLEED_HIT` as for VALDO. Per-case values: S and P are NaN with
no reference / no predicted CMB, and their means are not the paper's pooled S and P [I]. Missing case:
empty."""

PROTOCOLS: dict[str, Protocol] = {
    protocol.name: protocol
    for protocol in (
        BRATS_LEGACY,
        *BRATS_2023.values(),
        BRATS_VSD,
        ISLES_2015_2017,
        ISLES_2022,
        MSSEG_2016,
        ISBI_2015,
        MICCAI_2008,
        MRBRAINS13,
        MRBRAINS18,
        NEOBRAINS12,
        VALDO_2021_TASK2,
        DOU_2016,
    )
}
"""Protocols by name; each challenge edition names its protocol (``Edition.protocol``)."""


def protocol_for(edition: Edition) -> Protocol:
    """The evaluation protocol ``edition`` declares (a user's declaration may name an unknown one)."""
    if edition.protocol not in PROTOCOLS:
        raise BrainbenchConfigError(f"{edition.name}: unknown evaluation protocol {edition.protocol!r}; "
                                    f"known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[edition.protocol]
