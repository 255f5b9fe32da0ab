"""Input policy: under ``official`` a prediction is read as the edition's scorer read it, under ``strict``
anything off the reference grid or the edition's labels is scored as empty (issue 9, item 12).

Expected values restate each scorer's own code on the same NIfTI files: BraTS-2023-Metrics ``eval.py``
(nibabel, ``np.place``, DeepMind surface-distance at the prediction's ``get_zooms``), ISLES'22
``eval_metrics_isles.py`` (``astype(bool)``, voxel volume of the prediction), MRBrainS18
``evaluation.py`` (SimpleITK ``CopyInformation``, ``Mask``, ``Cast`` to UInt8, ``BinaryThreshold``).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import scipy.spatial
import SimpleITK as sitk
import surface_distance

from brainbench.challenges import EDITIONS
from brainbench.evaluation.evaluate import evaluate_folders
from brainbench.evaluation.protocols import BRATS_2023, ISLES_2022, MRBRAINS18
from tests.helpers import run_cli

GLI = EDITIONS["brats2023_gli"]
SHAPE = (20, 20, 16)


def brats_labels() -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[4:15, 5:14, 3:12] = 2
    seg[6:12, 7:12, 5:10] = 3
    seg[8:10, 8:10, 6:8] = 1
    return seg


def shifted(spacing=(1.0, 1.0, 1.0), shift_mm=0.5) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[0, 3] = shift_mm
    return affine


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def brats2023_script(pred_path: Path, gt_path: Path, region: str) -> dict[str, float]:
    """Dice and HD95 of ``get_LesionWiseScores`` for one region, as written in eval.py."""
    pred_nii, gt_nii = nib.load(pred_path), nib.load(gt_path)
    pred, gt = pred_nii.get_fdata(), gt_nii.get_fdata()
    keep = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}[region]
    for matrix in (pred, gt):
        np.place(matrix, ~np.isin(matrix, keep), 0)
        np.place(matrix, matrix > 0, 1)
    if not pred.any() and not gt.any():
        return {"dice": 1.0, "hd95": 0.0}
    dice = 2.0 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum())
    if not pred.any() or not gt.any():
        return {"dice": dice, "hd95": 374.0}  # the package's ∞, replaced by 374 (its np.Inf fails on NumPy 2)
    distances = surface_distance.compute_surface_distances(gt.astype(bool), pred.astype(bool),  # eval.py: int
                                                           pred_nii.header.get_zooms())
    return {"dice": dice, "hd95": surface_distance.compute_robust_hausdorff(distances, 95)}


def values_of(frame: pd.DataFrame) -> pd.Series:
    return frame.set_index(["case", "region", "metric"])["value"]


@pytest.fixture
def brats2023_folders(tmp_path) -> Path:
    """Reference cases and predictions: a clean copy, label 4 for ET, a header 0.5 mm off, and both."""
    seg = brats_labels()
    relabelled = np.where(seg == 3, 4, seg).astype(np.uint8)
    for case in ("clean", "label4", "shifted", "both"):
        save(tmp_path / "ref" / f"{case}.nii.gz", seg, np.eye(4))
    save(tmp_path / "pred" / "clean.nii.gz", seg, np.eye(4))
    save(tmp_path / "pred" / "label4.nii.gz", relabelled, np.eye(4))
    save(tmp_path / "pred" / "shifted.nii.gz", seg, shifted())
    save(tmp_path / "pred" / "both.nii.gz", relabelled, shifted())
    return tmp_path


def test_brats2023_label_4_and_a_half_millimetre_shift_read_as_the_scorer_does(brats2023_folders):
    root = brats2023_folders
    result = evaluate_folders(root / "pred", GLI.find_references(root / "ref"), GLI.regions, BRATS_2023["GLI"],
                              set(GLI.label_values), input_policy="official")
    assert result.input_policy == "official"
    lines = {case: [line for line in result.problems if f"{case}.nii.gz" in line] for case in ("label4", "shifted",
                                                                                               "both")}
    assert len(result.problems) == 3 and all(len(found) == 1 for found in lines.values()), result.problems
    assert all("BraTS-2023-Metrics eval.py" in found[0] for found in lines.values())
    assert "label values [4]" in lines["label4"][0] and "0.5 mm" not in lines["label4"][0]
    assert "0.5 mm" in lines["shifted"][0] and "label values" not in lines["shifted"][0]
    assert "label values [4]" in lines["both"][0] and "0.5 mm" in lines["both"][0]
    values = values_of(result.metrics)
    for case in ("clean", "label4", "shifted", "both"):
        for region in ("WT", "TC", "ET"):
            expected = brats2023_script(root / "pred" / f"{case}.nii.gz", root / "ref" / f"{case}.nii.gz", region)
            assert values[(case, region, "dice")] == pytest.approx(expected["dice"], abs=1e-12), (case, region)
            assert values[(case, region, "hd95")] == pytest.approx(expected["hd95"], abs=1e-12), (case, region)
    assert values[("label4", "ET", "dice")] == 0.0 and values[("shifted", "ET", "dice")] == 1.0


def test_brats2023_strict_scores_those_predictions_as_empty(brats2023_folders):
    root = brats2023_folders
    result = evaluate_folders(root / "pred", GLI.find_references(root / "ref"), GLI.regions, BRATS_2023["GLI"],
                              set(GLI.label_values), input_policy="strict")
    assert result.input_policy == "strict" and len(result.problems) == 3
    assert all(line.endswith("scored as an empty prediction") for line in result.problems)
    values = values_of(result.metrics)
    assert values[("clean", "WT", "dice")] == 1.0
    assert all(values[(case, "WT", "dice")] == 0.0 for case in ("label4", "shifted", "both"))


def isles22_script(gt_path: Path, pred_path: Path) -> dict[str, float]:
    """``score_case`` of the ISLES'22 evaluation on two files (Dice, volume difference, lesion count)."""
    gt_image, pred_image = sitk.ReadImage(str(gt_path)), sitk.ReadImage(str(pred_path))
    voxel_ml = np.prod(pred_image.GetSpacing()) / 1000  # |det| of the direction · spacing matrix
    gt = sitk.GetArrayFromImage(gt_image).astype(bool)
    pred = sitk.GetArrayFromImage(pred_image).astype(bool)
    count = lambda mask: scipy.ndimage.label(mask, np.ones((3, 3, 3)))[1]  # noqa: E731
    return {
        "dice": 2.0 * np.logical_and(gt, pred).sum() / (gt.sum() + pred.sum()),
        "volume_difference_ml": abs(gt.sum() * voxel_ml - pred.sum() * voxel_ml),
        "lesion_count_difference": abs(count(pred) - count(gt)),
    }


def test_isles2022_probability_map_and_label_2_are_lesion(tmp_path):
    isles = EDITIONS["isles2022"]
    gt = np.zeros((16, 16, 10), np.uint8)
    gt[3:9, 4:10, 2:7] = 1
    gt[12:14, 12:14, 6:8] = 1
    probabilities = np.zeros(gt.shape, np.float32)
    probabilities[4:10, 4:10, 2:7] = np.linspace(0.05, 0.95, 6 * 6 * 5, dtype=np.float32).reshape(6, 6, 5)
    label2 = np.where(np.roll(gt, 1, axis=2) > 0, 2, 0).astype(np.uint8)
    label2[12:14, 12:14, :] = 0  # the small lesion missed
    for case in ("probabilities", "label2"):
        save(tmp_path / "ref" / f"{case}.nii.gz", gt, np.diag([2.0, 2.0, 2.0, 1.0]))
    save(tmp_path / "pred" / "probabilities.nii.gz", probabilities, np.diag([2.0, 2.0, 2.0, 1.0]))
    save(tmp_path / "pred" / "label2.nii.gz", label2, np.diag([2.0, 2.0, 2.2, 1.0]))  # its own voxel size
    references = isles.find_references(tmp_path / "ref")
    result = evaluate_folders(tmp_path / "pred", references, isles.regions, ISLES_2022, set(isles.label_values))
    assert len(result.problems) == 2 and all("ISLES'22 evaluation.py" in line for line in result.problems)
    assert "non-integer values" in result.problems[1] and "label values [2]" in result.problems[0]
    assert "affine differs" in result.problems[0]
    values = values_of(result.metrics)
    for case in ("probabilities", "label2"):
        expected = isles22_script(tmp_path / "ref" / f"{case}.nii.gz", tmp_path / "pred" / f"{case}.nii.gz")
        for metric, value in expected.items():
            assert values[(case, "lesion", metric)] == pytest.approx(value, abs=1e-9), (case, metric)
    assert values[("label2", "lesion", "volume_difference_ml")] == pytest.approx(8 * 2 * 2 * 2.2 / 1000)
    strict = evaluate_folders(tmp_path / "pred", references, isles.regions, ISLES_2022, set(isles.label_values),
                              input_policy="strict")
    assert (values_of(strict.metrics).xs("dice", level="metric") == 0.0).all()


def mrbrains18_script(test_path: Path, result_path: Path) -> dict[tuple[int, str], float]:
    """``getImages`` then ``getDSC`` and ``getVS`` of the MRBrainS18 evaluation, for labels 1–8."""
    test_image, result_image = sitk.ReadImage(str(test_path)), sitk.ReadImage(str(result_path))
    assert test_image.GetSize() == result_image.GetSize()
    result_image.CopyInformation(test_image)
    pathology = sitk.BinaryThreshold(test_image, 9, 11, 0, 1)
    masked_test, masked_result = sitk.Mask(test_image, pathology), sitk.Mask(result_image, pathology)
    if "integer" not in masked_result.GetPixelIDTypeAsString():
        masked_result = sitk.Cast(masked_result, sitk.sitkUInt8)
    scores = {}
    for k in range(1, 9):
        t = sitk.GetArrayFromImage(sitk.BinaryThreshold(masked_test, k, k, 1, 0)).flatten()
        r = sitk.GetArrayFromImage(sitk.BinaryThreshold(masked_result, k, k, 1, 0)).flatten()
        scores[k, "dice"] = 1.0 - scipy.spatial.distance.dice(t, r)
        scores[k, "volumetric_similarity"] = 1 - abs(int(t.sum()) - int(r.sum())) / (t.sum() + r.sum())
    return scores


def test_mrbrains18_float_image_is_cast_to_uint8(tmp_path):
    mrbrains = EDITIONS["mrbrains18"]
    ref = np.zeros((18, 12, 6), np.uint8)
    for label in range(1, 9):
        ref[2 * label - 1 : 2 * label + 1, 2:10, 1:5] = label
    ref[1:17, 10:12, 1:5] = 9  # infarction: masked out of both images
    pred = ref.astype(np.float32) + 0.6  # 1.6 → 1 ... 8.6 → 8, background 0.6 → 0
    pred[7:9, 2:4, 1:5] = 3.99  # label 4 voxels predicted as 3.99 → 3
    save(tmp_path / "ref" / "070.nii.gz", ref, np.diag([0.958, 0.958, 3.0, 1.0]))
    save(tmp_path / "pred" / "070.nii.gz", pred, shifted((0.958, 0.958, 3.0)))  # and 0.5 mm off
    result = evaluate_folders(tmp_path / "pred", mrbrains.find_references(tmp_path / "ref"), mrbrains.regions,
                              MRBRAINS18, set(mrbrains.label_values))
    assert len(result.problems) == 1 and "MRBrainS18 evaluation.py" in result.problems[0]
    assert "non-integer values" in result.problems[0] and "0.5 mm" in result.problems[0]
    values = values_of(result.metrics)
    expected = mrbrains18_script(tmp_path / "ref" / "070.nii.gz", tmp_path / "pred" / "070.nii.gz")
    names = {value: name for name, (value,) in mrbrains.regions.items()}
    for (label, metric), value in expected.items():
        assert values[("070", names[label], metric)] == pytest.approx(value, abs=1e-12), (label, metric)
    assert values[("070", names[4], "dice")] < 1.0  # the 3.99 voxels count for label 3


def test_oblique_files_are_measured_in_the_header_voxel_size(tmp_path):
    rotation = np.deg2rad(17)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(rotation), -np.sin(rotation), 0], [np.sin(rotation), np.cos(rotation), 0],
                               [0, 0, 1]]) @ np.diag([0.958, 0.958, 3.0])
    affine[:3, 3] = (-10.3, 20.7, 5.1)
    seg = brats_labels()
    pred = np.roll(seg, (2, -1), axis=(0, 1))  # in-plane: distances scale with the in-plane voxel size
    save(tmp_path / "ref" / "oblique.nii.gz", seg, affine)
    save(tmp_path / "pred" / "oblique.nii.gz", pred, affine)
    column_norms = np.sqrt((nib.load(tmp_path / "pred" / "oblique.nii.gz").affine[:3, :3] ** 2).sum(axis=0))
    assert not np.array_equal(column_norms, np.float64(nib.load(tmp_path / "pred" / "oblique.nii.gz").header
                                                      .get_zooms()))  # float32 pixdim ≠ the affine's norms
    result = evaluate_folders(tmp_path / "pred", GLI.find_references(tmp_path / "ref"), GLI.regions,
                              BRATS_2023["GLI"], set(GLI.label_values))
    assert result.problems == []
    values = values_of(result.metrics)
    for region in ("WT", "TC", "ET"):
        expected = brats2023_script(tmp_path / "pred" / "oblique.nii.gz", tmp_path / "ref" / "oblique.nii.gz", region)
        assert values[("oblique", region, "hd95")] == pytest.approx(expected["hd95"], abs=1e-12), region


def test_cli_records_the_input_policy(brats2023_folders):
    root = brats2023_folders
    for policy in ("official", "strict"):
        result = run_cli("evaluate", "--challenge", "brats2023_gli", "--pred", "pred", "--ref", "ref", "--quiet",
                         "--workers", "1", "--input-policy", policy, "--out", f"{policy}.csv", cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"Input policy: {policy}" in result.stdout
        assert len([line for line in result.stderr.splitlines() if line.startswith("problem: ")]) == 3
        metrics = pd.read_csv(root / f"{policy}.csv")
        assert set(metrics["input_policy"]) == {policy}
        assert values_of(metrics)[("label4", "WT", "dice")] == (0.0 if policy == "strict" else pytest.approx(
            brats2023_script(root / "pred" / "label4.nii.gz", root / "ref" / "label4.nii.gz", "WT")["dice"]))
    (root / "teams" / "a").mkdir(parents=True)
    (root / "teams" / "b").mkdir()
    for case in ("clean", "label4", "shifted", "both"):
        (root / "teams" / "a" / f"{case}.nii.gz").write_bytes((root / "pred" / f"{case}.nii.gz").read_bytes())
        (root / "teams" / "b" / f"{case}.nii.gz").write_bytes((root / "ref" / f"{case}.nii.gz").read_bytes())
    board = run_cli("leaderboard", "--submissions", "teams/a", "teams/b", "--ref", "ref", "--challenge",
                    "brats2023_gli", "--bootstrap", "0", "--quiet", "--workers", "1", "--out-dir", "board", cwd=root)
    assert board.returncode == 0, board.stderr[-2000:]
    assert "Input policy: official" in board.stdout
    assert "Input policy: official" in (root / "board" / "leaderboard.md").read_text()
