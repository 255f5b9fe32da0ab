"""Lesion-wise (connected-component) metrics with each challenge's own matching rule (challenges.md §1.4).

Three rules that disagree on connectivity, size filters and what counts as detected:

* anima / MSSEG 2016 (:func:`anima_detection`): 6-connected components larger than 3 mm³, a lesion is
  detected by the α/β/γ overlap test; gives LTPR (SensL), LPPV (PPVL) and their F1.
* ISLES 2022 (:func:`isles22_lesions`): 26-connected components, any-voxel overlap; lesion F1 and
  the lesion-count difference.
* BraTS 2023 (:func:`brats2023_lesionwise`): 26-connected components, GT lesions merged when their
  dilations touch, a prediction matches a lesion it meets after dilation; lesion-wise Dice and HD95.
* Cerebral microbleeds, VALDO 2021 Task 2 and Dou et al. 2016 (:func:`microbleed_detection`): 26-connected
  components matched by the distance between their centres of mass (:class:`CentreHitRule`), no overlap
  needed; F1, count difference, sensitivity, precision and false-positive count.

Components are found with :func:`scipy.ndimage.label` (6-connectivity: ``generate_binary_structure(3, 1)``,
26-connectivity: ``(3, 3)``), which labels exactly as ITK's ConnectedComponentImageFilter and cc3d do.
Work is done inside the bounding box of everything that can matter, which leaves the result unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, center_of_mass, generate_binary_structure, label

from brainbench.evaluation.surface import robust_hausdorff, union_box

SIX_CONNECTED = generate_binary_structure(3, 1)
TWENTY_SIX_CONNECTED = generate_binary_structure(3, 3)
_EIGHTEEN_CONNECTED = generate_binary_structure(3, 2)


@dataclass(frozen=True)
class AnimaRule:
    """animaSegPerfAnalyzer's detection parameters (CLI defaults; spec §1.4)."""

    alpha: float = 0.10
    beta: float = 0.70
    gamma: float = 0.65
    min_volume_mm3: float = 3.0


def anima_detection(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], rule: AnimaRule = AnimaRule()
) -> dict[str, float]:
    """LTPR (SensL), LPPV (PPVL) and lesion F1 as animaSegPerfAnalyzer computes them.

    Source: Inria-Empenn/Anima-Public ``segmentation_performance_analyzer/animaSegPerfCAnalyzer.cxx``
    (``getOverlapTab``, ``getTruePositiveLesions``, ``falsePositiveRatioTester``). Components (6-connected)
    of at most ``min_volume_mm3`` become background first: a component is kept when it has at least
    ``floor(min_volume_mm3 / voxel volume) + 1`` voxels. A reference lesion is detected when (a) the
    prediction covers more than ``alpha`` of it and (b) walking the predicted components that overlap it
    by decreasing overlap, none fails :func:`_anima_outside_fractions` (> ``beta``) before the weights
    of :func:`_anima_coverage_weights` reach ``gamma`` or the walk reaches :func:`_anima_walk_length`;
    predicted lesions are tested against the reference the same way. No reference (prediction) lesion
    leaves LTPR (LPPV) at 0/0 = NaN, and F1 NaN with it.
    """
    pred, ref = _cropped(pred, ref)
    voxel_volume = float(np.prod(spacing))
    min_size = math.floor(rule.min_volume_mm3 / voxel_volume) + 1
    ref_labels, n_ref = _components(ref, SIX_CONNECTED, min_size)
    pred_labels, n_pred = _components(pred, SIX_CONNECTED, min_size)
    table = _overlap_table(ref_labels, n_ref, pred_labels, n_pred)
    detected_ref = sum(_anima_detected(table, lesion, rule) for lesion in range(1, n_ref + 1))
    detected_pred = sum(_anima_detected(table.T, lesion, rule) for lesion in range(1, n_pred + 1))
    ltpr = detected_ref / n_ref if n_ref else math.nan
    lppv = detected_pred / n_pred if n_pred else math.nan
    f1 = 2 * lppv * ltpr / (lppv + ltpr) if lppv + ltpr > 0 else math.nan
    return {"lesion_tpr": ltpr, "lesion_ppv": lppv, "lesion_f1": f1}


def _anima_detected(table: np.ndarray, lesion: int, rule: AnimaRule) -> bool:
    """The α/β/γ test of component ``lesion`` of this image (a row of ``table``, see :func:`_overlap_table`)."""
    overlaps = table[lesion, 1:]
    if overlaps.sum() / table[lesion].sum() <= rule.alpha:
        return False
    outside = _anima_outside_fractions(table)
    weights = _anima_coverage_weights(overlaps)
    covered = 0.0
    for j in np.argsort(-overlaps, kind="stable")[: _anima_walk_length(table)]:
        if covered >= rule.gamma:
            break
        if outside[j] > rule.beta:
            return False
        covered += weights[j]
    return True


def _anima_outside_fractions(table: np.ndarray) -> np.ndarray:
    """Per component of the other image, the fraction of its voxels in THIS image's background.

    anima's β ratio ``overlapTab[0][j] / columnSum[j]``: a component overlapping two lesions is not
    "outside" the one tested where it covers the other.
    """
    return table[0, 1:] / table[:, 1:].sum(axis=0)


def _anima_coverage_weights(overlaps: np.ndarray) -> np.ndarray:
    """The γ weight of each overlapping component: its overlap over the lesion's COVERED voxels.

    anima divides by ``iSumOfTPForCurentRow`` (the lesion's voxels in any kept component of the other
    image), not by the lesion's size, so the weights of the overlapping components sum to 1.
    """
    return overlaps / overlaps.sum()


def _anima_walk_length(table: np.ndarray) -> int:
    """Most components the walk tests: THIS image's label count, background included.

    anima's loop runs ``while (dfSumWeight < γ && k < pi_iNbLabelsRef && !bExit)`` where the bound is
    the number of labels of the image whose lesion is tested (lesions + 1), not the other image's.
    """
    return table.shape[0]


def isles22_lesions(pred: np.ndarray, ref: np.ndarray, *, if_both_empty: float) -> dict[str, float]:
    """ISLES 2022 lesion F1 = TP / (TP + (FP + FN)/2) and |#lesions(ref) − #lesions(pred)|.

    26-connected components; a reference lesion is TP when it shares a voxel with the prediction (else FN),
    a predicted lesion is FP when it shares none with the reference. F1 is ``if_both_empty`` (1.0 in the
    official script) when there are no lesions at all.
    """
    pred, ref = _cropped(pred, ref)
    ref_labels, n_ref = _components(ref, TWENTY_SIX_CONNECTED)
    pred_labels, n_pred = _components(pred, TWENTY_SIX_CONNECTED)
    both = (ref_labels > 0) & (pred_labels > 0)
    tp = len(np.unique(ref_labels[both]))
    fp = n_pred - len(np.unique(pred_labels[both]))
    fn = n_ref - tp
    denominator = tp + (fp + fn) / 2
    f1 = tp / denominator if denominator else float(if_both_empty)
    return {"lesion_f1": f1, "lesion_count_difference": float(abs(n_ref - n_pred))}


@dataclass(frozen=True)
class BratsLesionRule:
    """BraTS 2023 lesion-wise parameters of one sub-challenge (spec §2.6 step 8)."""

    dilation: int
    min_volume_mm3: float
    miss_hd95: float = 374.0


BRATS2023_LESION_RULES = {
    "GLI": BratsLesionRule(dilation=3, min_volume_mm3=50.0),
    "SSA": BratsLesionRule(dilation=3, min_volume_mm3=50.0),
    "PED": BratsLesionRule(dilation=3, min_volume_mm3=50.0),
    "MEN": BratsLesionRule(dilation=1, min_volume_mm3=50.0),
    "MET": BratsLesionRule(dilation=1, min_volume_mm3=2.0),
}
"""Dilation iterations and GT volume threshold (mm³) per BraTS 2023 sub-challenge (S-03, S-22)."""


def brats2023_lesionwise(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], rule: BratsLesionRule
) -> dict[str, float]:
    """Lesion-wise Dice and HD95 (mm) of the BraTS 2023 scorer, spec §2.6.

    GT components (26-connected) whose ``dilation``-fold dilations (18-connected structure) touch are
    merged into one lesion. For each lesion, the predicted components (26-connected) meeting its
    dilation are its TP; Dice and surfel HD95 are taken between the lesion and their union (none: 0 and
    ``miss_hd95``). Predicted components matching no lesion are FP (never size-filtered) and score 0 and
    ``miss_hd95``. Lesions of volume ≤ ``min_volume_mm3`` are left out of both sums and of the count:
    Dice = Σ dice / (n_kept + n_FP), HD95 = (Σ hd95 + miss·n_FP) / (n_kept + n_FP); 1 and 0 when the
    denominator is 0.
    """
    pred, ref = _cropped(pred, ref, margin=rule.dilation + 1)  # the dilations stay inside
    if not pred.any() and not ref.any():
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    pred_labels, n_pred = _components(pred, TWENTY_SIX_CONNECTED)
    lesions, n_lesions = _merged_lesions(ref, rule.dilation)
    voxel_volume = float(np.prod(spacing))
    matched: set[int] = set()
    dice_sum = hd_sum = 0.0
    n_kept = 0
    for lesion_id in range(1, n_lesions + 1):
        lesion = lesions == lesion_id
        reach = binary_dilation(lesion, structure=_EIGHTEEN_CONNECTED, iterations=rule.dilation)
        tp_ids = np.unique(pred_labels[reach & (pred_labels > 0)])
        matched.update(tp_ids.tolist())
        if np.count_nonzero(lesion) * voxel_volume <= rule.min_volume_mm3:
            continue
        n_kept += 1
        if len(tp_ids) == 0:
            hd_sum += rule.miss_hd95
            continue
        hits = np.isin(pred_labels, tp_ids)
        dice_sum += 2 * np.count_nonzero(hits & lesion) / (np.count_nonzero(hits) + np.count_nonzero(lesion))
        hd_sum += robust_hausdorff(lesion, hits, spacing, if_both_empty=0.0, if_one_empty=rule.miss_hd95)
    n_fp = n_pred - len(matched)
    denominator = n_kept + n_fp
    if denominator == 0:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0}
    return {"lesion_dice": dice_sum / denominator, "lesion_hd95": (hd_sum + rule.miss_hd95 * n_fp) / denominator}


def _merged_lesions(ref: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """GT voxels labelled by the 26-connected component of the dilated GT that holds them."""
    dilated = binary_dilation(ref, structure=_EIGHTEEN_CONNECTED, iterations=dilation)
    groups, n_groups = label(dilated, structure=TWENTY_SIX_CONNECTED)
    groups[~ref] = 0
    return groups, n_groups


CENTRE_UNITS = ("voxel", "mm")
"""Units of :attr:`CentreHitRule.max_distance`: voxel index steps (VALDO's rule) or millimetres."""


@dataclass(frozen=True)
class CentreHitRule:
    """When a predicted microbleed hits a reference one: centres of mass at most ``max_distance`` apart.

    VALDO 2021 Task 2's rule as brainbench's issue states it (the organisers' scorer was not read): the
    distance is measured in voxel INDEX units, so on an anisotropic grid (e.g. 0.5×0.5×3 mm) a step across
    slices counts as much as one in plane; ``"mm"`` scales each axis by the voxel size instead. A centre
    exactly ``max_distance`` away is a hit (≤, unverified).

    Attributes:
        max_distance: the hit radius m, in ``units``. The default 5 is UNVERIFIED: neither VALDO's
            official value nor Dou et al. 2016's radius (architectures.md §5.5, [M]) was found.
        units: one of :data:`CENTRE_UNITS`.
    """

    max_distance: float = 5.0
    units: str = "voxel"

    def __post_init__(self) -> None:
        if self.units not in CENTRE_UNITS:
            raise ValueError(f"CentreHitRule units must be one of {CENTRE_UNITS}, got {self.units!r}")
        if not math.isfinite(self.max_distance) or self.max_distance < 0:
            raise ValueError(f"CentreHitRule max_distance must be a finite distance ≥ 0, got {self.max_distance!r}")


def microbleed_detection(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], rule: CentreHitRule, *, if_both_empty: float
) -> dict[str, float]:
    """Detection counts and scores of one case's microbleeds (CMBs) under ``rule``.

    ``pred`` and ``ref`` are masks on one grid, ``spacing`` the voxel size in mm (used only when
    ``rule.units == "mm"``). Each mask is split into 26-connected components, each reduced to its
    (unweighted) centre of mass. Matching:

    * every predicted component is assigned to its NEAREST reference component (ties: the reference
      first in scan order, as :func:`scipy.ndimage.label` numbers them) and is a candidate hit when that
      distance is at most ``rule.max_distance``; it is never reassigned to a farther reference, so a
      prediction within reach of two references counts only for the nearer one;
    * a reference with at least one candidate is a true positive (TP) and only its closest candidate
      counts, the others are false positives (FP); a reference with none is a false negative (FN).

    Hence TP = references with a candidate, FP = predicted components − TP, FN = reference components − TP.

    Returns:
        ``lesion_f1`` = 2TP / (2TP + FP + FN) (VALDO's detection F1; ``if_both_empty`` when neither mask
        holds a component), ``lesion_count_difference`` = |#pred − #ref| components,
        ``lesion_tpr`` = TP / #ref (Dou's sensitivity S; NaN with no reference CMB),
        ``lesion_ppv`` = TP / (TP + FP) (Dou's precision P; NaN with no predicted CMB) and
        ``lesion_false_positives`` = FP, whose mean over cases is Dou's FP_avg (false positives per subject).
        Dou pools S and P over all CMBs of the test set [I]; the per-case values here are not pooled.
    """
    pred, ref = _cropped(pred, ref)  # moves every centre by the same offset: distances unchanged
    pred_labels, n_pred = _components(pred, TWENTY_SIX_CONNECTED)
    ref_labels, n_ref = _components(ref, TWENTY_SIX_CONNECTED)
    scale = np.asarray(spacing, dtype=float) if rule.units == "mm" else np.ones(pred.ndim)
    pred_centres = _centres(pred_labels, n_pred) * scale
    ref_centres = _centres(ref_labels, n_ref) * scale
    nearest, distance = _nearest(pred_centres, ref_centres)
    tp = len(np.unique(nearest[distance <= rule.max_distance]))
    fp, fn = n_pred - tp, n_ref - tp
    denominator = 2 * tp + fp + fn
    return {
        "lesion_f1": 2 * tp / denominator if denominator else float(if_both_empty),
        "lesion_count_difference": float(abs(n_pred - n_ref)),
        "lesion_tpr": tp / n_ref if n_ref else math.nan,
        "lesion_ppv": tp / n_pred if n_pred else math.nan,
        "lesion_false_positives": float(fp),
    }


def _centres(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, ndim) centres of mass, in voxel index coordinates, of components 1..n of ``labels``."""
    if n == 0:
        return np.zeros((0, labels.ndim))
    return np.asarray(center_of_mass(labels > 0, labels, np.arange(1, n + 1)), dtype=float).reshape(n, labels.ndim)


def _nearest(points: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of the (n, d) ``points``: index of its nearest of the (m, d) ``targets`` and that distance.

    One pass per target (CMBs per scan are few, predicted components may be many): memory stays O(n).
    Ties go to the lower target index. No target: index -1, distance ∞.
    """
    best = np.full(len(points), -1)
    best_distance = np.full(len(points), np.inf)
    for index, target in enumerate(targets):
        distance = np.sqrt(((points - target) ** 2).sum(axis=1))
        closer = distance < best_distance
        best[closer] = index
        best_distance[closer] = distance[closer]
    return best, best_distance


def _components(mask: np.ndarray, structure: np.ndarray, min_size: int = 1) -> tuple[np.ndarray, int]:
    """Connected components labelled 1..n; those under ``min_size`` voxels are dropped and the rest renumbered."""
    labels, n = label(np.asarray(mask, dtype=bool), structure=structure)
    if min_size > 1 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        renumber = np.zeros(n + 1, dtype=labels.dtype)
        renumber[keep] = np.arange(1, int(keep.sum()) + 1)
        labels = renumber[labels]
        n = int(keep.sum())
    return labels, n


def _overlap_table(a_labels: np.ndarray, n_a: int, b_labels: np.ndarray, n_b: int) -> np.ndarray:
    """(n_a + 1, n_b + 1) voxel counts shared by label i of ``a`` and label j of ``b``, 0 = background,
    as anima's ``getOverlapTab`` (the [0][0] cell counts only the voxels inside the arrays given)."""
    pairs = a_labels.astype(np.int64).ravel() * (n_b + 1) + b_labels.ravel()
    return np.bincount(pairs, minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)


def _cropped(pred: np.ndarray, ref: np.ndarray, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Both masks (bool) cut to the bounding box of their union grown by ``margin``; unchanged if empty."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if not pred.any() and not ref.any():
        return pred, ref
    box = union_box(pred, ref, margin=margin)
    return pred[box], ref[box]
