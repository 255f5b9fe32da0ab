"""BraTS 2017–2021 ("legacy") evaluation on files, checked against medpy and plain numpy.

medpy is the implementation nnU-Net's BraTS reimplementation calls, so agreement with it (plus the
empty-mask rules written out here by hand) is the independent check of our faster HD95.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from medpy.metric import binary as medpy_binary
from scipy.ndimage import gaussian_filter

from brainbench.io import Grid, save_volume
from brainbench.challenges import EDITIONS
from brainbench.evaluation.evaluate import evaluate_case, evaluate_folders, write_metrics_csv
from brainbench.evaluation.overlap import Confusion, dice, sensitivity, specificity
from brainbench.evaluation.protocols import BRATS_LEGACY
from brainbench.evaluation.surface import hausdorff_distance, hd95, surface_distances

BRATS2020 = EDITIONS["brats2020"]

REAL_CASE = Path("/work/shared/data/real/brats_toolkit_TCGA-DU-7294/TCGA-DU-7294_brainles")
TEAMS = ("hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20")
TEAMS_PREDICTING_ET = {"hnfnetv1-20", "sanet0-20"}
CASE_ID = "TCGA-DU-7294"
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
LABELS = {0, 1, 2, 4}
DIAGONAL = 373.12866
ANISOTROPIC = (0.958, 0.958, 3.0)
medpy_surface_distances = getattr(medpy_binary, "__surface_distances")


def reference_metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[tuple[str, str], float]:
    """The BraTS legacy rules written out independently: medpy for Dice/HD95, numpy for the rest."""
    expected = {}
    for region, labels in REGIONS.items():
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        tp, fp = np.count_nonzero(p & r), np.count_nonzero(p & ~r)
        fn, tn = np.count_nonzero(~p & r), np.count_nonzero(~p & ~r)
        if not p.any() and not r.any():
            expected[region, "dice"], expected[region, "hd95"] = 1.0, 0.0
            expected[region, "sensitivity"] = 1.0
        elif not p.any() or not r.any():
            expected[region, "dice"], expected[region, "hd95"] = 0.0, DIAGONAL
            expected[region, "sensitivity"] = 0.0 if not r.any() else tp / (tp + fn)
        else:
            expected[region, "dice"] = medpy_binary.dc(p, r)
            expected[region, "hd95"] = medpy_binary.hd95(p, r, voxelspacing=spacing)
            expected[region, "sensitivity"] = tp / (tp + fn)
        expected[region, "specificity"] = tn / (tn + fp)
    return expected


def as_dict(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
    return {(row.region, row.metric): row.value for row in frame.itertuples()}


def blob(shape, seed: int, threshold: float) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=shape)
    return gaussian_filter(noise, sigma=2.0) > threshold


# -- 1. the real BraTS-space case ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    (root / "ref").mkdir()
    shutil.copy(REAL_CASE / "fusion" / "mav.nii.gz", root / "ref" / f"{CASE_ID}.nii.gz")
    for team in TEAMS:
        (root / "pred" / team).mkdir(parents=True)
        shutil.copy(REAL_CASE / "segmentation" / f"{team}.nii.gz", root / "pred" / team / f"{CASE_ID}.nii.gz")
    return root


@pytest.fixture(scope="module")
def real_results(real_folders) -> dict:
    return {
        team: evaluate_folders(real_folders / "pred" / team, BRATS2020.find_references(real_folders / "ref"), REGIONS, BRATS_LEGACY, LABELS)
        for team in TEAMS
    }


@pytest.mark.parametrize("team", TEAMS)
def test_real_case_matches_medpy_and_numpy(real_folders, real_results, team):
    result = real_results[team]
    assert result.problems == []
    assert list(result.metrics.columns) == ["case", "region", "metric", "value"]
    assert set(result.metrics["case"]) == {CASE_ID}
    assert len(result.metrics) == len(REGIONS) * len(BRATS_LEGACY.metrics)
    ref_image = nib.load(real_folders / "ref" / f"{CASE_ID}.nii.gz")
    ref = np.asanyarray(ref_image.dataobj)
    pred = np.asanyarray(nib.load(real_folders / "pred" / team / f"{CASE_ID}.nii.gz").dataobj)
    expected = reference_metrics(pred, ref, ref_image.header.get_zooms()[:3])
    assert as_dict(result.metrics) == pytest.approx(expected, abs=1e-6)


def test_real_case_empty_enhancing_tumour_follows_protocol(real_folders, real_results):
    ref = np.asanyarray(nib.load(real_folders / "ref" / f"{CASE_ID}.nii.gz").dataobj)
    assert not np.any(ref == 4), "the fused reference has no ET: both empty-mask rules are exercised"
    for team, result in real_results.items():
        et = {m: v for (r, m), v in as_dict(result.metrics).items() if r == "ET"}
        if team in TEAMS_PREDICTING_ET:
            assert (et["dice"], et["hd95"], et["sensitivity"]) == (0.0, DIAGONAL, 0.0)
            assert 0.0 < et["specificity"] < 1.0
        else:
            assert et == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}


def test_brats_legacy_protocol_values():
    assert BRATS_LEGACY.metrics == ("dice", "hd95", "sensitivity", "specificity")
    assert BRATS_LEGACY.dice_both_empty == 1.0
    assert (BRATS_LEGACY.hd_both_empty, BRATS_LEGACY.hd_one_empty) == (0.0, DIAGONAL)
    assert (BRATS_LEGACY.sensitivity_both_empty, BRATS_LEGACY.sensitivity_ref_empty) == (1.0, 0.0)
    assert BRATS_LEGACY.specificity_no_negatives == 1.0
    assert math.hypot(240, 240, 155) == pytest.approx(DIAGONAL, abs=1e-5)


# -- 2. hand-made masks ----------------------------------------------------------------------------


def test_both_empty_scores_perfect():
    empty = np.zeros((6, 6, 4), dtype=np.int16)
    rows = evaluate_case(empty, empty, ANISOTROPIC, {"ET": (4,)}, BRATS_LEGACY)
    assert {r["metric"]: r["value"] for r in rows} == {
        "dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0
    }


@pytest.mark.parametrize("empty_side", ["pred", "ref"])
def test_exactly_one_empty(empty_side):
    full = np.zeros((6, 6, 4), dtype=np.int16)
    full[1:3, 1:3, 1:3] = 4
    empty = np.zeros_like(full)
    pred, ref = (empty, full) if empty_side == "pred" else (full, empty)
    values = {r["metric"]: r["value"] for r in evaluate_case(pred, ref, ANISOTROPIC, {"ET": (4,)}, BRATS_LEGACY)}
    negatives = full.size - (8 if empty_side == "pred" else 0)
    false_positives = 8 if empty_side == "ref" else 0
    assert values == {
        "dice": 0.0,
        "hd95": DIAGONAL,
        "sensitivity": 0.0,
        "specificity": (negatives - false_positives) / negatives,
    }


def test_single_voxels_distance_in_mm():
    a = np.zeros((5, 5, 7), dtype=bool)
    b = np.zeros_like(a)
    a[2, 2, 2] = True
    b[2, 3, 4] = True
    expected = math.hypot(0.958, 2 * 3.0)
    assert hd95(a, b, ANISOTROPIC, if_both_empty=0.0, if_one_empty=DIAGONAL) == pytest.approx(expected, abs=1e-12)
    assert hd95(a, a, ANISOTROPIC, if_both_empty=0.0, if_one_empty=DIAGONAL) == 0.0
    assert dice(Confusion.from_masks(a, a), if_both_empty=1.0) == 1.0
    assert medpy_binary.hd95(a, b, voxelspacing=ANISOTROPIC) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_blobs_match_medpy_with_anisotropic_spacing(seed):
    shape = (40, 36, 18)
    a = blob(shape, seed, threshold=0.06)
    b = blob(shape, seed + 100, threshold=0.08)
    if seed % 2:  # off the array edge too, so that the crop is smaller than the volume
        interior = np.zeros(shape, dtype=bool)
        interior[3:-3, 3:-3, 3:-3] = True
        a, b = a & interior, b & interior
    assert a.any() and b.any()
    ours = hd95(a, b, ANISOTROPIC, if_both_empty=0.0, if_one_empty=DIAGONAL)
    assert ours == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=ANISOTROPIC), abs=1e-6)
    ours_max = hausdorff_distance(a, b, ANISOTROPIC, if_both_empty=0.0, if_one_empty=DIAGONAL)
    assert ours_max == pytest.approx(medpy_binary.hd(a, b, voxelspacing=ANISOTROPIC), abs=1e-6)


@pytest.mark.parametrize("seed", [5, 6])
def test_cropping_leaves_every_distance_unchanged(seed):
    small = (16, 14, 8)
    a = blob(small, seed, threshold=0.05)
    b = blob(small, seed + 100, threshold=0.05)
    big_a = np.zeros((60, 50, 30), dtype=bool)
    big_b = np.zeros_like(big_a)
    big_a[20:36, 9:23, 11:19] = a
    big_b[20:36, 9:23, 11:19] = b
    d_ab, d_ba = surface_distances(big_a, big_b, ANISOTROPIC)
    np.testing.assert_allclose(np.sort(d_ab), np.sort(medpy_surface_distances(big_a, big_b, ANISOTROPIC)), atol=1e-9)
    np.testing.assert_allclose(np.sort(d_ba), np.sort(medpy_surface_distances(big_b, big_a, ANISOTROPIC)), atol=1e-9)
    # touching the array edge: the crop edge is the array edge, where erosion marks boundary in both
    edge_ab, edge_ba = surface_distances(a, b, ANISOTROPIC)
    np.testing.assert_allclose(np.sort(edge_ab), np.sort(medpy_surface_distances(a, b, ANISOTROPIC)), atol=1e-9)
    np.testing.assert_allclose(np.sort(edge_ba), np.sort(medpy_surface_distances(b, a, ANISOTROPIC)), atol=1e-9)


def test_overlap_metrics_use_the_given_empty_policy():
    empty = np.zeros((3, 3, 3), dtype=bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert dice(Confusion.from_masks(empty, empty), if_both_empty=0.25) == 0.25
    assert sensitivity(Confusion.from_masks(empty, empty), if_both_empty=0.5, if_ref_empty=0.75) == 0.5
    assert sensitivity(Confusion.from_masks(some, empty), if_both_empty=0.5, if_ref_empty=0.75) == 0.75
    assert specificity(Confusion.from_masks(empty, ~empty), if_no_negatives=0.125) == 0.125
    assert hausdorff_distance(some, empty, (1, 1, 1), if_both_empty=0.0, if_one_empty=9.0) == 9.0


# -- 3. a faulty prediction folder -----------------------------------------------------------------


def test_faulty_prediction_folder_is_reported_not_raised(tmp_path):
    grid = Grid(shape=(12, 12, 8), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    ref_dir, pred_dir, outside = tmp_path / "ref", tmp_path / "pred", tmp_path / "outside"
    pred_dir.mkdir()
    outside.mkdir()
    rng = np.random.default_rng(0)
    refs = {}
    cases = ("good_flat", "good_brats", "bad_grid", "bad_affine", "bad_label", "corrupt", "missing", "escapes")
    for index, case in enumerate(cases):
        ref = np.zeros(grid.shape, dtype=np.uint8)
        ref[2:8, 3:9, 2:6] = 2
        ref[4:6, 4:7, 3:5] = 1 if index % 2 else 4
        refs[case] = ref
        save_volume(ref, grid, ref_dir / f"{case}.nii.gz")  # flat; release layouts: tests/challenges/test_editions.py
    noisy = {case: np.where(rng.random(grid.shape) < 0.05, 0, ref) for case, ref in refs.items()}
    save_volume(noisy["good_flat"], grid, pred_dir / "good_flat.nii.gz")
    save_volume(noisy["good_brats"], grid, pred_dir / "good_brats.nii")
    save_volume(np.zeros((12, 12, 9), np.uint8), Grid((12, 12, 9), grid.affine), pred_dir / "bad_grid.nii.gz")
    shifted = grid.affine.copy()
    shifted[:3, 3] += 0.5
    save_volume(noisy["bad_affine"], Grid(grid.shape, shifted), pred_dir / "bad_affine.nii.gz")
    with_label_3 = noisy["bad_label"].copy()
    with_label_3[0, 0, 0] = 3
    save_volume(with_label_3, grid, pred_dir / "bad_label.nii.gz")
    (pred_dir / "corrupt.nii.gz").write_bytes(rng.bytes(2048))
    save_volume(noisy["escapes"], grid, outside / "escapes.nii.gz")
    os.symlink(outside / "escapes.nii.gz", pred_dir / "escapes.nii.gz")
    save_volume(noisy["good_flat"], grid, pred_dir / "stranger.nii.gz")

    result = evaluate_folders(pred_dir, BRATS2020.find_references(ref_dir), REGIONS, BRATS_LEGACY, LABELS)

    faulty = ("bad_grid", "bad_affine", "bad_label", "corrupt", "missing", "escapes", "stranger")
    assert len(result.problems) == len(faulty)
    named = sorted(result.problems, key=lambda line: Path(line.split(":")[0]).name)
    for name, line in zip(sorted(faulty), named):
        assert Path(line.split(":")[0]).name.startswith(name), line
        assert "\n" not in line
    assert sorted(result.metrics["case"].unique()) == sorted(cases)
    for case in cases:
        pred = noisy[case] if case.startswith("good") else np.zeros(grid.shape, np.uint8)
        expected = evaluate_case(pred, refs[case], (1.0, 1.0, 2.0), REGIONS, BRATS_LEGACY)
        scored = result.metrics[result.metrics["case"] == case].drop(columns="case").to_dict("records")
        assert scored == expected, case
    written = pd.read_csv(write_metrics_csv(result.metrics, tmp_path / "out" / "metrics.csv"))
    assert list(written.columns) == ["case", "region", "metric", "value"]
    assert len(written) == len(cases) * len(REGIONS) * len(BRATS_LEGACY.metrics)
