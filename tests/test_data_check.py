"""`brainbench data check` and `data list` through the real CLI on real NIfTI trees."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

from tests.helpers import write_brats_case, write_nifti
from tests.helpers import run_cli as brainbench

SHAPE = (24, 24, 20)


def case_file(root, index: int, key: str, suffix: str = ".nii.gz"):
    name = f"BraTS20_Training_{index:03d}"
    return root / name / f"{name}_{key}{suffix}"


def plant_faults(root) -> dict[str, tuple[str, str]]:
    """Cases 1 and 15 are clean; every other case carries one fault. Returns fault → (file name, words)."""
    for index in range(1, 16):
        write_brats_case(root, f"BraTS20_Training_{index:03d}", shape=SHAPE, seed=index)
    rng = np.random.default_rng(0)
    case_file(root, 2, "t2").unlink()
    whole = case_file(root, 3, "flair").read_bytes()
    raw = gzip.decompress(whole)
    case_file(root, 3, "flair").write_bytes(gzip.compress(raw)[: len(whole) // 2])
    seg = np.asarray(nib.load(str(case_file(root, 4, "seg"))).dataobj)
    write_nifti(case_file(root, 4, "seg"), np.where(seg == 2, 3, seg).astype(np.uint8))
    write_nifti(case_file(root, 5, "t1"), rng.normal(size=SHAPE).astype(np.float32), spacing=(2.0, 2.0, 2.0))
    write_nifti(case_file(root, 6, "t1ce"), rng.normal(size=(*SHAPE, 2)).astype(np.float32))
    write_nifti(case_file(root, 7, "seg"), np.zeros(SHAPE, np.uint8))
    nan = rng.normal(size=SHAPE).astype(np.float32)
    nan[5, 5, 5] = np.nan
    write_nifti(case_file(root, 8, "t2"), nan)
    write_nifti(case_file(root, 9, "seg"), np.zeros((20, 24, 20), np.uint8) + 1)
    case_file(root, 10, "flair").write_bytes(b"")
    case_file(root, 11, "t1").write_text("this is not an image, just a file named like a channel\n")
    write_nifti(case_file(root, 12, "t2", ".nii"), rng.normal(size=SHAPE).astype(np.float32))
    case_file(root, 13, "seg").unlink()
    write_nifti(case_file(root, 14, "seg"), np.full(SHAPE, 1.5, np.float32))
    return {
        "missing channel": ("BraTS20_Training_002_t2", "missing t2 channel"),
        "truncated gzip": ("BraTS20_Training_003_flair", "cannot read voxel data"),
        "unknown label value": ("BraTS20_Training_004_seg", "label values [3] are not allowed"),
        "grid mismatch": ("BraTS20_Training_005_t1", "does not match"),
        "4D file": ("BraTS20_Training_006_t1ce", "expected a 3D volume"),
        "empty label map": ("BraTS20_Training_007_seg", "label map is empty"),
        "NaN": ("BraTS20_Training_008_t2", "NaN"),
        "seg shape": ("BraTS20_Training_009_seg", "does not match"),
        "zero-byte file": ("BraTS20_Training_010_flair", "not a readable NIfTI"),
        "junk named like a channel": ("BraTS20_Training_011_t1", "not a readable NIfTI"),
        "duplicate .nii/.nii.gz": ("BraTS20_Training_012_t2", "also stored as BraTS20_Training_012_t2.nii"),
        "missing label map": ("BraTS20_Training_013_seg", "missing label map"),
        "non-integer labels": ("BraTS20_Training_014_seg", "non-integer"),
    }


def test_data_check_reports_every_planted_fault_one_line_each(tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    faults = plant_faults(root)
    result = brainbench("data", "check", "--challenge", "brats2020", "--root", str(root), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    for fault, (name, words) in faults.items():
        assert any(name in line and words in line for line in problems), f"{fault} not reported:\n{result.stdout}"
    assert len(problems) == len(faults)
    assert not any("Training_001" in line or "Training_015" in line for line in problems)
    assert "BraTS20_Training_015" in result.stdout and "0 1 2 4" in result.stdout  # the case table
    assert result.stdout.rstrip().endswith(f"13 cases, {len(faults)} problems")


def test_data_check_clean_tree_exits_zero_and_list_names_every_edition(tmp_path):
    root = tmp_path / "clean"
    for index in (1, 2):
        write_brats_case(root, f"BraTS20_Training_{index:03d}", shape=SHAPE, seed=index)
    result = brainbench("data", "check", "--challenge", "brats2020", "--root", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24×24×20" in result.stdout and "2 cases, 0 problems" in result.stdout
    missing = brainbench("data", "check", "--challenge", "brats2020", "--root", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "data folder not found" in missing.stdout
    assert "Traceback" not in missing.stderr
    listed = brainbench("data", "list", cwd=tmp_path)
    assert listed.returncode == 0
    from brainbench.challenges import EDITIONS

    for name, edition in EDITIONS.items():
        assert name in listed.stdout and edition.protocol in listed.stdout
