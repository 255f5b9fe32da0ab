"""Lesion-wise rules on hand-made volumes whose answers are worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import surface_distance

from brainbench.evaluation.lesions import (
    BRATS2023_LESION_RULES,
    AnimaRule,
    anima_detection,
    brats2023_lesionwise,
    isles22_lesions,
)

ANISOTROPIC = (0.958, 0.958, 3.0)
ISO = (1.0, 1.0, 1.0)
MISSED = {"lesion_dice": 0.0, "lesion_hd95": 374.0}
NOTHING_TO_SCORE = {"lesion_dice": 1.0, "lesion_hd95": 0.0}


def package_hd95(gt: np.ndarray, pred: np.ndarray) -> float:
    """DeepMind surface-distance robust HD95 at 1 mm, as the BraTS 2023 scorer calls it."""
    return surface_distance.compute_robust_hausdorff(surface_distance.compute_surface_distances(gt, pred, ISO), 95)


# -- BraTS 2023 -------------------------------------------------------------------------------------


def brats_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT: L1, L2 (64 voxels each, 3 voxels apart), L3 (27 voxels, far), L4 (125 voxels, far).
    Prediction: P1 = L1, P3 = L3, P2 = an 8-voxel blob touching nothing. Returns (pred, gt, merged L1+L2)."""
    gt = np.zeros((40, 24, 24), dtype=bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6, 2:6] = True  # L1, x 2..5
    gt[9:13, 2:6, 2:6] = True  # L2, x 9..12: gap x 6..8
    gt[25:28, 2:5, 2:5] = True  # L3, 27 mm³ at 1 mm
    gt[2:7, 14:19, 14:19] = True  # L4: y gap 6..13 from L1, too far to merge even at d = 3
    pred[2:6, 2:6, 2:6] = True  # P1
    pred[25:28, 2:5, 2:5] = True  # P3
    pred[34:36, 2:4, 2:4] = True  # P2, false positive
    merged = np.zeros_like(gt)
    merged[2:13, 2:6, 2:6] = gt[2:13, 2:6, 2:6]
    return pred, gt, merged


def test_brats2023_gli_merges_touching_dilations_and_filters_small_lesions():
    pred, gt, merged = brats_scene()
    result = brats2023_lesionwise(pred, gt, ISO, BRATS2023_LESION_RULES["GLI"])
    # d = 3: L1 and L2 dilate into each other → one lesion of 128 mm³, matched by P1 only.
    # L3 (27 ≤ 50 mm³) is dropped, and P3, which matches it, is not a false positive.
    # Kept: merged (Dice 2·64/(64+128)), L4 missed (0, 374); FP: P2 (0, 374). Denominator 2 + 1.
    p1 = pred & merged
    hd_merged = package_hd95(merged, p1)
    assert result["lesion_dice"] == pytest.approx((2 * 64 / 192) / 3)
    assert result["lesion_hd95"] == pytest.approx((hd_merged + 374 + 374) / 3)
    assert hd_merged > 0


def test_brats2023_met_keeps_lesions_apart_and_over_two_mm3():
    pred, gt, _ = brats_scene()
    result = brats2023_lesionwise(pred, gt, ISO, BRATS2023_LESION_RULES["MET"])
    # d = 1: L1 reaches x 6, L2 starts at x 8 → separate. T = 2: all four lesions kept.
    # L1 = P1 (1, 0); L2 missed (0, 374); L3 = P3 (1, 0); L4 missed (0, 374); P2 FP (0, 374).
    assert result["lesion_dice"] == pytest.approx(2 / 5)
    assert result["lesion_hd95"] == pytest.approx(3 * 374 / 5)


def test_brats2023_empty_and_false_positive_only():
    empty = np.zeros((10, 10, 10), dtype=bool)
    rule = BRATS2023_LESION_RULES["GLI"]
    assert brats2023_lesionwise(empty, empty, ISO, rule) == NOTHING_TO_SCORE
    speck = empty.copy()
    speck[5, 5, 5] = True  # a 1-voxel false positive is not size-filtered
    assert brats2023_lesionwise(speck, empty, ISO, rule) == MISSED
    small_gt = empty.copy()
    small_gt[2:4, 2:4, 2:4] = True  # 8 mm³ ≤ 50: excluded, nothing left → denominator 0
    assert brats2023_lesionwise(empty, small_gt, ISO, rule) == NOTHING_TO_SCORE


@pytest.mark.parametrize(("voxels", "kept"), [(18, False), (19, True)])
def test_brats2023_threshold_is_on_mm3_with_anisotropic_spacing(voxels, kept):
    gt = np.zeros((30, 6, 4), dtype=bool)
    gt[1 : 1 + voxels, 2, 1] = True  # 18 · 2.753 = 49.6 mm³ ≤ 50; 19 · 2.753 = 52.3 mm³ > 50
    result = brats2023_lesionwise(np.zeros_like(gt), gt, ANISOTROPIC, BRATS2023_LESION_RULES["GLI"])
    assert result == (MISSED if kept else NOTHING_TO_SCORE)


def test_brats2023_prediction_within_dilation_counts_as_match():
    gt = np.zeros((20, 10, 10), dtype=bool)
    gt[2:8, 2:8, 2:8] = True  # 216 mm³
    pred = np.zeros_like(gt)
    pred[10:12, 2:8, 2:8] = True  # 2 voxels beyond the lesion: inside its 3-fold dilation
    result = brats2023_lesionwise(pred, gt, ISO, BRATS2023_LESION_RULES["GLI"])
    assert result["lesion_dice"] == 0.0  # matched (no FP term), but no overlap
    assert result["lesion_hd95"] == pytest.approx(package_hd95(gt, pred))
    far = np.roll(pred, 4, axis=0)  # now 6 voxels away: unmatched → one miss and one FP
    assert brats2023_lesionwise(far, gt, ISO, BRATS2023_LESION_RULES["GLI"]) == MISSED


# -- ISLES 2022 -------------------------------------------------------------------------------------


def test_isles22_any_overlap_with_26_connectivity():
    gt = np.zeros((12, 12, 12), dtype=bool)
    pred = np.zeros_like(gt)
    gt[1, 1, 1] = gt[2, 2, 2] = True  # diagonal neighbours: one lesion under 26-connectivity
    gt[8:10, 8:10, 8:10] = True  # a second lesion, missed
    pred[2, 2, 2] = True  # touches lesion 1 by one voxel → TP
    pred[5, 9, 1] = True  # FP
    result = isles22_lesions(pred, gt, if_both_empty=1.0)
    # tp 1, fp 1, fn 1 → 1 / (1 + 1) ; 2 GT lesions vs 2 predicted → difference 0
    assert result == {"lesion_f1": 0.5, "lesion_count_difference": 0.0}
    empty = np.zeros_like(gt)
    assert isles22_lesions(empty, empty, if_both_empty=1.0) == {"lesion_f1": 1.0, "lesion_count_difference": 0.0}
    assert isles22_lesions(empty, gt, if_both_empty=1.0) == {"lesion_f1": 0.0, "lesion_count_difference": 2.0}


# -- anima / MSSEG ----------------------------------------------------------------------------------


def test_anima_three_mm3_filter():
    gt = np.zeros((20, 20, 6), dtype=bool)
    gt[1:4, 1, 1] = True  # 3 voxels = 3 mm³: dropped (minSize = floor(3/1) + 1 = 4)
    gt[10:14, 10, 1] = True  # 4 voxels: kept
    result = anima_detection(gt, gt, ISO)
    assert result == {"lesion_tpr": 1.0, "lesion_ppv": 1.0, "lesion_f1": 1.0}
    only_small = np.zeros_like(gt)
    only_small[1:4, 1, 1] = True
    assert all(math.isnan(v) for v in anima_detection(only_small, only_small, ISO).values())
    # 0.958 × 0.958 × 3 = 2.75 mm³ per voxel → minSize = 2: one voxel dropped, two kept
    single = np.zeros_like(gt)
    single[5, 5, 2] = True
    assert math.isnan(anima_detection(single, single, ANISOTROPIC)["lesion_tpr"])
    single[6, 5, 2] = True
    assert anima_detection(single, single, ANISOTROPIC)["lesion_tpr"] == 1.0


@pytest.mark.parametrize(("covered", "detected"), [(5, False), (6, True)])
def test_anima_alpha(covered, detected):
    gt = np.zeros((12, 8, 4), dtype=bool)
    gt[0:10, 0:5, 0] = True  # 50 voxels
    pred = np.zeros_like(gt)
    pred[0:covered, 0, 0] = True  # 10 % is not > α = 0.10; 12 % is
    result = anima_detection(pred, gt, ISO)
    assert result["lesion_tpr"] == (1.0 if detected else 0.0)
    assert result["lesion_ppv"] == 0.0  # seen from the prediction, the lesion lies ≥ 88 % outside it (> β)


@pytest.mark.parametrize(("outside", "detected"), [(94, False), (93, True)])
def test_anima_beta(outside, detected):
    gt = np.zeros((10, 110, 3), dtype=bool)
    gt[0:5, 0:5, 0:2] = True  # 50 voxels
    pred = np.zeros_like(gt)
    pred[0:4, 0:5, 0:2] = True  # 40 voxels inside
    pred[0, 5 : 5 + outside, 0] = True  # a rod leaving the lesion
    # outside fraction 94/134 = 0.701 > β = 0.70 (missed); 93/133 = 0.699 (detected)
    result = anima_detection(pred, gt, ISO)
    assert result["lesion_tpr"] == (1.0 if detected else 0.0)
    assert result["lesion_ppv"] == 1.0  # seen from the prediction: covers 40/134 > α, GT lies 20 % outside
    assert result["lesion_f1"] == (1.0 if detected else 0.0)


def test_anima_beta_counts_the_other_component_in_this_image_background():
    gt = np.zeros((28, 3, 3), dtype=bool)
    gt[0:5, 1, 1] = True  # R1: 5 voxels
    gt[6:26, 1, 1] = True  # R2: 20 voxels, after a 1-voxel gap
    pred = np.zeros_like(gt)
    pred[0:26, 1, 1] = True  # P: one 26-voxel component over both lesions and the gap
    # R1: P lies 21/26 = 0.81 outside R1, but only 1/26 (the gap) in the reference background ≤ β → detected.
    # R2 likewise. P: covered 25/26; R2 first (20/25 = 0.8 ≥ γ), none of R2 in the prediction background.
    assert anima_detection(pred, gt, ISO) == {"lesion_tpr": 1.0, "lesion_ppv": 1.0, "lesion_f1": 1.0}


@pytest.mark.parametrize(("first", "detected"), [(20, True), (15, False)])
def test_anima_gamma_weighs_the_covered_voxels(first, detected):
    gt = np.zeros((110, 45, 3), dtype=bool)
    gt[0:100, 0, 0] = True  # a 100-voxel rod
    pred = np.zeros_like(gt)
    pred[0:first, 0, 0] = True  # A, wholly inside
    pred[first + 1 : first + 11, 0, 0] = True  # B: 10 voxels inside after a 1-voxel gap …
    pred[first + 10, 1:41, 0] = True  # … and 40 in the background: 40/50 = 0.8 > β
    # Covered voxels: first + 10. A weighs 20/30 = 0.67 ≥ γ (B never tested) → detected;
    # 15/25 = 0.60 < γ → B is tested and fails β → missed. (Weighed by the rod's size, A is 0.2 or 0.15.)
    assert anima_detection(pred, gt, ISO)["lesion_tpr"] == (1.0 if detected else 0.0)


@pytest.mark.parametrize(("second_lesion", "detected"), [(False, True), (True, False)])
def test_anima_walk_stops_after_as_many_components_as_this_image_has_labels(second_lesion, detected):
    gt = np.zeros((40, 10, 1), dtype=bool)
    gt[0:40, 0:2, 0] = True  # L: an 80-voxel strip
    pred = np.zeros_like(gt)
    pred[0:10, 0:2, 0] = True  # P1: 20 voxels of L
    pred[11:21, 0:2, 0] = True  # P2: 20
    pred[22:30, 0:10, 0] = True  # P3: 16 of L and 64 in the background: 64/80 = 0.8 > β
    pred[31:38, 0:2, 0] = True  # P4: 14
    if second_lesion:
        gt[0:5, 8, 0] = True  # a second, undetected reference lesion: the walk may test one more component
    # Covered 70: P1 and P2 weigh 40/70 = 0.57 < γ. With L alone the reference has 2 labels (with
    # background), so anima's loop (k < 2) stops there: detected. With 3 labels P3 is tested: missed.
    assert anima_detection(pred, gt, ISO)["lesion_tpr"] == (1.0 if detected else 0.0)


def test_anima_rule_is_a_parameter():
    gt = np.zeros((10, 10, 4), dtype=bool)
    gt[0:5, 0:5, 0:2] = True
    pred = np.zeros_like(gt)
    pred[0:5, 0, 0] = True
    assert anima_detection(pred, gt, ISO, AnimaRule(alpha=0.05))["lesion_tpr"] == 1.0
