"""Real volumes (../shared/data/real) read through the MSSEG 2016 and MRBrainS13 adapters.

The folder structure each adapter expects is built in tmp_path with symlinks (nothing is copied into
the repository). Geometry is checked against what ../shared/data/real/README.md states.
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from brainbench.challenges import ChallengeAdapter
from brainbench.io import load_label, load_volume, save_volume
from brainbench.errors import BrainbenchDataError
from tests.helpers import REAL_DATA

MS_CASE = REAL_DATA / "ms_lesion_ljubljana_patient19"
MALF_CASE = REAL_DATA / "miccai2012_malf_oasis_1000"
MS_FILES = {
    "FLAIR": "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T1": "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "GADO": "T1POST_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
    "T2": "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
}
TISSUE_CLASSES = {"CSF": 1, "GM": 2, "WM": 3}
"""MRBrainS13 ``LabelsForTesting`` values of the label table's "Class" column (others → 0)."""



def _axcodes(path) -> tuple[str, ...]:
    return nib.aff2axcodes(nib.load(str(path)).affine)


def test_ljubljana_ms_case_loads_through_msseg2016_without_dp(tmp_path):
    root = tmp_path / "Training"
    patient = root / "Center_01" / "Patient_01"
    (patient / "Preprocessed_Data").mkdir(parents=True)
    (patient / "Masks").mkdir()
    for channel, name in MS_FILES.items():
        (patient / "Preprocessed_Data" / f"{channel}_preprocessed.nii.gz").symlink_to(MS_CASE / name)
    gold = MS_CASE / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
    (patient / "Masks" / "Consensus.nii.gz").symlink_to(gold)

    with pytest.raises(BrainbenchDataError, match="missing dp channel of case Center_01_Patient_01"):
        ChallengeAdapter("msseg2016").discover(root)
    adapter = ChallengeAdapter("msseg2016", modalities=["flair", "t1", "gado", "t2"])
    (case,) = adapter.discover(root)
    assert case.case_id == "Center_01_Patient_01" and case.meta["raters"] == []
    grid = adapter.validate(case)
    assert grid.shape == (182, 218, 182) and grid.spacing == (1.0, 1.0, 1.0)
    assert _axcodes(case.images["flair"]) == ("L", "A", "S")
    assert np.allclose(grid.affine, nib.load(str(gold)).affine)
    label, _ = load_label(case.label, allowed=set(adapter.edition.label_values))
    assert int(label.sum()) == 49_769
    flair, _ = load_volume(case.images["flair"])
    assert flair[label == 1].mean() > flair[(label == 0) & (flair > 0)].mean(), "lesions are FLAIR-bright"

    written = save_volume(label.astype(np.uint8), grid, tmp_path / "roundtrip.nii.gz")
    again = nib.load(str(written))
    assert again.shape == grid.shape and np.allclose(again.affine, nib.load(str(gold)).affine)


def test_malf_tissue_case_loads_through_mrbrains13(tmp_path):
    structures, grid = load_label(MALF_CASE / "1000_glm.nii.gz")
    with (MALF_CASE / "MICCAI-Challenge-2012-Label-Information.csv").open(newline="") as handle:
        classes = {int(row["Label Number"]): row["Class"] for row in csv.DictReader(handle)}
    lookup = np.zeros(structures.max() + 1, dtype=np.uint8)
    for value, name in classes.items():
        if value < lookup.size:
            lookup[value] = TISSUE_CLASSES.get(name, 0)
    subject = tmp_path / "TrainingData" / "1"
    save_volume(lookup[structures], grid, subject / "LabelsForTesting.nii")
    (subject / "T1.nii.gz").symlink_to(MALF_CASE / "1000_SS.nii.gz")

    adapter = ChallengeAdapter("mrbrains13", modalities=["t1"])
    (case,) = adapter.discover(tmp_path)
    assert case.case_id == "train_1" and list(case.images) == ["t1"] and "labels_8" not in case.meta
    grid = adapter.validate(case)
    source = nib.load(str(MALF_CASE / "1000_SS.nii.gz"))
    assert grid.shape == (162, 214, 167) == source.shape and grid.spacing == (1.0, 1.0, 1.0)
    assert np.allclose(grid.affine, source.affine) and _axcodes(case.images["t1"]) == ("L", "A", "S")
    tissues, _ = load_label(case.label, allowed=set(adapter.edition.label_values))
    counts = {name: int((tissues == value).sum()) for name, value in TISSUE_CLASSES.items()}
    assert counts["GM"] > counts["WM"] > counts["CSF"] > 0, counts
    t1, _ = load_volume(case.images["t1"])
    assert t1[tissues == 3].mean() > t1[tissues == 2].mean() > t1[tissues == 1].mean(), "T1: WM > GM > CSF"
