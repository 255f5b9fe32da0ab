"""Microbleed (CMB) detection by centre-of-mass distance: hand-built scenes whose hits are worked out in
the comments (VALDO 2021 Task 2 and Dou et al. 2016 protocols, lesions.py ``microbleed_detection``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainbench.evaluation.evaluate import evaluate_folders
from brainbench.evaluation.lesions import CentreHitRule, microbleed_detection
from brainbench.evaluation.protocols import PROTOCOLS, Protocol
from tests.helpers import run_cli, write_nifti

SPACING = (1.0, 1.0, 3.0)
"""Anisotropic voxels: a step along axis 2 is 1 voxel index unit but 3 mm."""
M = 5.0
VOXEL_RULE = CentreHitRule(max_distance=M, units="voxel")


def scene() -> tuple[np.ndarray, np.ndarray]:
    """4 reference CMBs and 5 predicted components on a (40, 20, 12) grid; returns (pred, ref) as uint8.

    Centres of mass (voxel index units) and the nearest reference of each prediction:

    ====  ==========================  =====================  ===========================================
    id    voxels                      centre                 outcome (m = 5 voxels)
    ====  ==========================  =====================  ===========================================
    R1    [2:4, 2:4, 2:4]             (2.5, 2.5, 2.5)        hit by P1
    R2    [2:4, 12:14, 2:4]           (2.5, 12.5, 2.5)       hit by P2a (the closer of P2a, P2b)
    R3    [20:22, 2:4, 2:4]           (20.5, 2.5, 2.5)       missed: FN
    R4    (30,12,2) + (31,13,3)       (30.5, 12.5, 2.5)      hit by P4; corner-touching voxels: ONE CMB
    P1    [3:5, 2:4, 2:4]             (3.5, 2.5, 2.5)        (a) R1 at 1: TP (shares 4 voxels with R1)
    P2a   [2:4, 15:17, 2:4]           (2.5, 15.5, 2.5)       (b) R2 at 3: the closest on R2, TP
    P2b   [2:4, 8:10, 2:4]            (2.5, 8.5, 2.5)        (b) R2 at 4 (R1 at 6): second on R2, FP
    P3    [25:28, 2:4, 2:4]           (26.0, 2.5, 2.5)       (c) R3 at 5.5 > 5: FP, and R3 is FN
    P4    (30,12,6) + (31,13,7)       (30.5, 12.5, 6.5)      (d) R4 at 4 voxels = 12 mm: TP in voxels only
    ====  ==========================  =====================  ===========================================

    (e) R4 and P4 are each two voxels touching at a corner: one 26-connected component each. With
    6-connectivity they would be 2 + 2 CMBs (5 references, 6 predictions); both halves of P4 are nearest
    (31,13,3), at 3.3 and 4: TP 3, FP 3, FN 2, F1 6/11, TPR 3/5.
    """
    ref = np.zeros((40, 20, 12), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[2:4, 2:4, 2:4] = 1
    ref[2:4, 12:14, 2:4] = 1
    ref[20:22, 2:4, 2:4] = 1
    ref[30, 12, 2] = ref[31, 13, 3] = 1
    pred[3:5, 2:4, 2:4] = 1
    pred[2:4, 15:17, 2:4] = 1
    pred[2:4, 8:10, 2:4] = 1
    pred[25:28, 2:4, 2:4] = 1
    pred[30, 12, 6] = pred[31, 13, 7] = 1
    return pred, ref


SCENE_VOXEL = {
    # TP 3 (R1, R2, R4), FP 5 − 3 = 2 (P2b, P3), FN 4 − 3 = 1 (R3)
    "lesion_f1": 2 * 3 / (2 * 3 + 2 + 1),  # 6/9
    "lesion_count_difference": 1.0,  # |5 − 4|
    "lesion_tpr": 3 / 4,
    "lesion_ppv": 3 / 5,
    "lesion_false_positives": 2.0,
}
SCENE_MM = {
    # in mm only P4 changes: 4 slices × 3 mm = 12 mm > 5. TP 2 (R1, R2), FP 3, FN 2
    "lesion_f1": 2 * 2 / (2 * 2 + 3 + 2),  # 4/9
    "lesion_count_difference": 1.0,
    "lesion_tpr": 2 / 4,
    "lesion_ppv": 2 / 5,
    "lesion_false_positives": 3.0,
}


def test_hit_table_of_the_scene_in_voxel_units():
    pred, ref = scene()
    assert microbleed_detection(pred, ref, SPACING, VOXEL_RULE, if_both_empty=1.0) == pytest.approx(SCENE_VOXEL)


def test_the_same_scene_in_mm_loses_the_cross_slice_hit():
    """Proves the VALDO rule measures in voxel index units: only P4's hit depends on the unit."""
    pred, ref = scene()
    mm_rule = CentreHitRule(max_distance=M, units="mm")
    assert microbleed_detection(pred, ref, SPACING, mm_rule, if_both_empty=1.0) == pytest.approx(SCENE_MM)


def test_a_prediction_goes_to_its_nearest_reference_and_a_hit_at_exactly_m_counts():
    ref = np.zeros((24, 10, 14), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[5, 5, 5] = ref[5, 5, 11] = ref[15, 5, 5] = 1  # Ra, Rb, Rc
    pred[5, 5, 5] = 1  # Pa: on Ra (0)
    pred[5, 5, 7] = 1  # Pm: Ra at 2, Rb at 4; nearest Ra, where Pa is closer → FP, never moved to Rb
    pred[20, 5, 5] = 1  # Pc: Rc at exactly 5 = m → hit
    # TP 2 (Ra, Rc), FP 1 (Pm), FN 1 (Rb). A one-to-one optimal matching would give TP 3.
    result = microbleed_detection(pred, ref, (1.0, 1.0, 1.0), VOXEL_RULE, if_both_empty=1.0)
    assert result == pytest.approx({"lesion_f1": 4 / 6, "lesion_count_difference": 0.0, "lesion_tpr": 2 / 3,
                                    "lesion_ppv": 2 / 3, "lesion_false_positives": 1.0})


def test_empty_masks():
    empty = np.zeros((8, 8, 8), dtype=np.uint8)
    two = empty.copy()
    two[1, 1, 1] = two[5, 5, 5] = 1
    nothing = microbleed_detection(empty, empty, SPACING, VOXEL_RULE, if_both_empty=0.25)
    assert nothing["lesion_f1"] == 0.25
    assert (nothing["lesion_count_difference"], nothing["lesion_false_positives"]) == (0.0, 0.0)
    assert math.isnan(nothing["lesion_tpr"]) and math.isnan(nothing["lesion_ppv"])
    false_alarm = microbleed_detection(two, empty, SPACING, VOXEL_RULE, if_both_empty=1.0)
    assert math.isnan(false_alarm.pop("lesion_tpr"))
    assert false_alarm == {"lesion_f1": 0.0, "lesion_count_difference": 2.0, "lesion_ppv": 0.0,
                           "lesion_false_positives": 2.0}
    missed = microbleed_detection(empty, two, SPACING, VOXEL_RULE, if_both_empty=1.0)
    assert math.isnan(missed.pop("lesion_ppv"))
    assert missed == {"lesion_f1": 0.0, "lesion_count_difference": 2.0, "lesion_tpr": 0.0,
                      "lesion_false_positives": 0.0}


def test_rule_and_protocol_validation():
    with pytest.raises(ValueError, match="units"):
        CentreHitRule(units="cm")
    with pytest.raises(ValueError, match="max_distance"):
        CentreHitRule(max_distance=-1.0)
    with pytest.raises(ValueError, match="needs centre_hit"):
        Protocol(name="bad", metrics=("lesion_f1",), lesion_rule="centre-hit")
    with pytest.raises(ValueError, match="does not give"):
        Protocol(name="bad", metrics=("lesion_false_positives",), lesion_rule="isles22")
    for name in ("valdo-2021-task2", "dou-2016"):
        assert PROTOCOLS[name].centre_hit == CentreHitRule(max_distance=5.0, units="voxel")


# -- whole folders of NIfTI files: the VALDO protocol and the CLI ----------------------------------

VALDO_TABLE = {
    # case a: the scene. Dice: only P1 ∩ R1 = 4 voxels; 38 predicted, 26 reference voxels → 8/64.
    # |ΔV| = |38 − 26| voxels × 3 mm³ = 36 mm³.
    ("a", "dice"): 0.125,
    ("a", "volume_difference_mm3"): 36.0,
    ("a", "lesion_f1"): 6 / 9,
    ("a", "lesion_count_difference"): 1.0,
    ("a", "lesion_tpr"): 0.75,
    ("a", "lesion_false_positives"): 2.0,
    # case b: no CMB in the reference, one 8-voxel false positive: Dice 0 (one mask empty), 24 mm³,
    # F1 = 0 / (0 + 1 + 0) = 0, sensitivity undefined.
    ("b", "dice"): 0.0,
    ("b", "volume_difference_mm3"): 24.0,
    ("b", "lesion_f1"): 0.0,
    ("b", "lesion_count_difference"): 1.0,
    ("b", "lesion_tpr"): math.nan,
    ("b", "lesion_false_positives"): 1.0,
}


def write_cases(root: Path) -> None:
    """``root/pred`` and ``root/ref``: flat folders of ``<case_id>.nii.gz`` at 1×1×3 mm."""
    pred, ref = scene()
    write_nifti(root / "pred" / "a.nii.gz", pred, SPACING)
    write_nifti(root / "ref" / "a.nii.gz", ref, SPACING)
    fp_only = np.zeros((12, 12, 8), dtype=np.uint8)
    fp_only[4:6, 4:6, 4:6] = 1
    write_nifti(root / "pred" / "b.nii.gz", fp_only, SPACING)
    write_nifti(root / "ref" / "b.nii.gz", np.zeros_like(fp_only), SPACING)


def assert_valdo_table(metrics: pd.DataFrame) -> None:
    assert set(metrics["region"]) == {"cmb"}
    values = {(row.case, row.metric): row.value for row in metrics.itertuples()}
    assert values.keys() == VALDO_TABLE.keys()
    for key, expected in VALDO_TABLE.items():
        assert values[key] == pytest.approx(expected, nan_ok=True), key


def test_valdo_protocol_on_nifti_folders(tmp_path):
    write_cases(tmp_path)
    references = {case: tmp_path / "ref" / f"{case}.nii.gz" for case in ("a", "b")}
    result = evaluate_folders(tmp_path / "pred", references, {"cmb": (1,)}, PROTOCOLS["valdo-2021-task2"], {0, 1})
    assert result.problems == []
    assert_valdo_table(result.metrics)


def test_cli_evaluates_valdo2021(tmp_path):
    write_cases(tmp_path)
    result = run_cli("evaluate", "--challenge", "valdo2021", "--pred", "pred", "--ref", "ref", "--out",
                     "metrics.csv", "--quiet", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_valdo_table(pd.read_csv(tmp_path / "metrics.csv"))
