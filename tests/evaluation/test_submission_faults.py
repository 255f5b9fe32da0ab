"""A submission folder with ten planted faults: every sound case scored, every fault one line, no crash.

Submissions are untrusted input (issue 3, item 6): headers are checked before voxels are read, and no
path outside the submission folder is ever followed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainbench.challenges import EDITIONS
from brainbench.evaluation.evaluate import evaluate_folders
from brainbench.evaluation.protocols import BRATS_LEGACY
from tests.helpers import write_nifti
from tests.helpers import run_cli as brainbench

BRATS2020 = EDITIONS["brats2020"]

SHAPE = (12, 12, 10)
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
LABELS = {0, 1, 2, 4}
SOUND = ("case10", "case11")


def label_map(seed: int) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    c = 4 + seed % 3
    seg[c : c + 4, 3:8, 3:7] = 2
    seg[c + 1 : c + 3, 4:7, 4:6] = 4
    seg[c + 1, 5, 5] = 1
    return seg


def plant(root: Path) -> dict[str, str]:
    """Reference and submission folders with the faults; returns fault → text its problem line must hold."""
    ref, pred, outside = root / "ref", root / "pred", root / "outside"
    for i in range(1, 12):
        write_nifti(ref / f"case{i}.nii.gz", label_map(i))
    for case in SOUND:
        (pred / f"{case}.nii.gz").parent.mkdir(parents=True, exist_ok=True)
        (pred / f"{case}.nii.gz").write_bytes((ref / f"{case}.nii.gz").read_bytes())
    write_nifti(pred / "case1.nii.gz", label_map(1), spacing=(1.0, 1.0, 1.2))  # wrong grid (affine)
    (pred / "case2.nii.gz").write_bytes(gzip.compress(b"\x5c\x01" + bytes(400))[:30] + b"corrupt")
    write_nifti(pred / "case3.nii.gz", np.stack([label_map(3)] * 2, axis=-1))  # 4D
    absurd = write_nifti(pred / "case4.nii", label_map(4))  # header edited below: dims 30000³
    header = bytearray(absurd.read_bytes())
    struct.pack_into("<4h", header, 40, 3, 30000, 30000, 30000)
    absurd.write_bytes(bytes(header))
    nans = label_map(5).astype(np.float32)
    nans[0, 0, 0] = np.nan
    write_nifti(pred / "case5.nii.gz", nans)
    bad_labels = label_map(6)
    bad_labels[1, 1, 1] = 3
    write_nifti(pred / "case6.nii.gz", bad_labels)
    # case7: no prediction at all
    secret = write_nifti(outside / "secret.nii.gz", label_map(8))  # would score perfectly if followed
    (pred / "case8.nii.gz").symlink_to(secret)
    write_nifti(pred / "case9.nii", label_map(9))
    write_nifti(pred / "case9.nii.gz", label_map(9))
    (pred / "notes.txt").write_text("extra file")
    return {
        "wrong grid": "case1.nii.gz: affine differs from the reference",
        "corrupt gzip": "case2.nii.gz: not a readable NIfTI file",
        "4D": "case3.nii.gz: expected a 3D volume, found shape (12, 12, 10, 2)",
        "absurd dims": "case4.nii: implausible dimensions (30000, 30000, 30000) in header",
        "NaN": "case5.nii.gz: contains NaN or infinite values",
        "labels": "case6.nii.gz: label values [3] are not allowed",
        "missing": "case7.nii.gz: no prediction for case case7",
        "symlink": "case8.nii.gz: link resolves outside",
        "duplicate": "several predictions for case case9",
        "extra file": "notes.txt: not a NIfTI prediction file; ignored",
    }


def assert_every_fault_once(lines: list[str], expected: dict[str, str]) -> None:
    assert len(lines) == len(expected), "\n".join(lines)
    for fault, text in expected.items():
        assert sum(text in line for line in lines) == 1, f"{fault}: {text!r} not in exactly one of\n" + "\n".join(lines)
    assert all("\n" not in line for line in lines)


def check_scores(metrics: pd.DataFrame) -> None:
    values = metrics.set_index(["case", "region", "metric"])["value"]
    assert sorted(metrics["case"].unique()) == sorted(f"case{i}" for i in range(1, 12))
    for case in SOUND:
        assert values[(case, "WT", "dice")] == 1.0 and values[(case, "WT", "hd95")] == 0.0
    for i in range(1, 10):  # every faulty case is scored as an empty prediction
        assert values[(f"case{i}", "WT", "dice")] == 0.0
        assert values[(f"case{i}", "WT", "hd95")] == pytest.approx(373.12866)


def test_planted_faults_through_the_api(tmp_path):
    expected = plant(tmp_path)
    nib_header = nib.load(tmp_path / "pred" / "case4.nii").header  # the edit really claims 30000³ voxels
    assert tuple(nib_header.get_data_shape()) == (30000, 30000, 30000)
    result = evaluate_folders(tmp_path / "pred", BRATS2020.find_references(tmp_path / "ref"), REGIONS, BRATS_LEGACY, LABELS)
    assert_every_fault_once(result.problems, expected)
    check_scores(result.metrics)


def test_planted_faults_through_the_cli(tmp_path):
    expected = plant(tmp_path)
    result = brainbench("evaluate", "--challenge", "brats2020", "--pred", "pred", "--ref", "ref", "--team", "t1",
                        "--out", "m.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    problems = [line.removeprefix("problem: ") for line in result.stderr.splitlines() if line.startswith("problem: ")]
    assert_every_fault_once(problems, expected)
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert list(metrics.columns) == ["team", "case", "region", "metric", "value", "input_policy"]
    assert set(metrics["team"]) == {"t1"}
    check_scores(metrics)


def test_header_voxel_type_is_checked_before_the_voxels(tmp_path):
    write_nifti(tmp_path / "ref" / "c.nii.gz", label_map(1))
    write_nifti(tmp_path / "pred" / "c.nii.gz", label_map(1).astype(np.complex64))
    result = evaluate_folders(tmp_path / "pred", BRATS2020.find_references(tmp_path / "ref"), REGIONS, BRATS_LEGACY, LABELS)
    assert len(result.problems) == 1 and "voxel type complex64 in header" in result.problems[0]
