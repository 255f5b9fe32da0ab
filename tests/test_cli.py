"""Bad input through the real CLI: one line naming the file, exit status 2, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import write_brats_case, write_nifti
from tests.helpers import run_cli as brainbench


def _tree_with(tmp_path, fault: str):
    root = tmp_path / "BraTS2020"
    for i in (1, 2, 3):
        write_brats_case(root, f"BraTS20_Training_00{i}", seed=i)
    case = root / "BraTS20_Training_002"
    if fault == "missing modality":
        (case / "BraTS20_Training_002_t1ce.nii.gz").unlink()
        return root, "BraTS20_Training_002_t1ce.nii.gz: missing t1ce channel"
    if fault == "shape mismatch":
        write_nifti(case / "BraTS20_Training_002_t2.nii.gz", np.ones((24, 24, 19), np.float32))
        return root, "BraTS20_Training_002_t2.nii.gz: grid (24, 24, 19)"
    if fault == "label 3":
        seg = np.zeros((24, 24, 20), np.uint8)
        seg[10:12, 10:12, 10:12] = 3
        write_nifti(case / "BraTS20_Training_002_seg.nii.gz", seg)
        return root, "BraTS20_Training_002_seg.nii.gz: label values [3] are not allowed"
    (case / "BraTS20_Training_002_flair.nii.gz").write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    return root, "BraTS20_Training_002_flair.nii.gz: not a readable NIfTI file"


@pytest.mark.parametrize("fault", ["missing modality", "shape mismatch", "label 3", "unreadable gzip"])
def test_train_on_bad_data_gives_one_line_and_exit_2(tmp_path, fault):
    root, expected = _tree_with(tmp_path, fault)
    result = brainbench("train", "data=real", f"data.root={root}", cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("brainbench: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def test_evaluate_with_missing_reference_folder(tmp_path):
    (tmp_path / "pred").mkdir()
    result = brainbench("evaluate", "--challenge", "brats2020", "--pred", "pred", "--ref", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr
    assert not (tmp_path / "metrics.csv").exists()


def test_evaluate_writes_long_csv_and_reports_bad_files(tmp_path):
    ref = tmp_path / "ref"
    for i in (1, 2):
        write_brats_case(ref, f"BraTS20_Training_00{i}", seed=i)
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "BraTS20_Training_001.nii.gz").write_bytes((ref / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz").read_bytes())
    (pred / "BraTS20_Training_002.nii.gz").write_bytes(b"garbage")
    result = brainbench("evaluate", "--challenge", "brats2020", "--pred", "pred", "--ref", "ref", "--out", "m.csv",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "BraTS20_Training_002.nii.gz" in result.stderr and "Traceback" not in result.stderr
    import pandas as pd

    frame = pd.read_csv(tmp_path / "m.csv")
    assert list(frame.columns) == ["case", "region", "metric", "value", "input_policy"]
    assert set(frame["input_policy"]) == {"official"}
    perfect = frame[frame.case == "BraTS20_Training_001"].set_index(["region", "metric"])["value"]
    assert perfect[("WT", "dice")] == 1.0 and perfect[("WT", "hd95")] == 0.0
    missing = frame[frame.case == "BraTS20_Training_002"].set_index(["region", "metric"])["value"]
    assert missing[("WT", "dice")] == 0.0 and missing[("WT", "hd95")] == pytest.approx(373.12866)


def test_evaluate_exits_2_when_no_prediction_matches_a_reference(tmp_path):
    for i in (1, 2):
        write_brats_case(tmp_path / "ref", f"BraTS20_Training_00{i}", seed=i)
    write_nifti(tmp_path / "pred" / "BraTS20_Training_001_pred.nii.gz", np.zeros((24, 24, 20), np.uint8))
    result = brainbench("evaluate", "--challenge", "brats2020", "--pred", "pred", "--ref", "ref", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainbench: error: pred:"), result.stderr
    assert "BraTS20_Training_001.nii.gz" in lines[0]  # says what a matching file is called
    assert not (tmp_path / "metrics.csv").exists()


@pytest.mark.parametrize("uri", [None, "sqlite:///store/runs.db"])
def test_leaderboard_experiment_without_a_store_creates_none(tmp_path, uri):
    store = tmp_path / ("mlflow.db" if uri is None else "store/runs.db")
    (tmp_path / "store").mkdir()
    result = brainbench("leaderboard", "--experiment", "brats2020", *(["--tracking-uri", uri] if uri else []),
                        cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("brainbench: error:")]
    assert len(errors) == 1 and str(store) in errors[0], result.stderr[-2000:]
    assert not store.exists()


def test_data_synth_cli(tmp_path):
    result = brainbench("data", "synth", "--out", "s", "--cases", "2", "--seed", "5", "--spacing", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "s" / "BraTS20_Training_002").iterdir())
    assert names == [f"BraTS20_Training_002_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]
