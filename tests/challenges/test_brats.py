from __future__ import annotations

import numpy as np
import pytest

from brainbench.challenges import EDITIONS, adapter_for
from brainbench.challenges import ChallengeAdapter
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from tests.helpers import write_brats_case, write_nifti


def test_discovers_cases_with_channels_in_order(brats_tree):
    cases = ChallengeAdapter("brats2020").discover(brats_tree)
    assert [c.case_id for c in cases] == [f"BraTS20_Training_00{i}" for i in (1, 2, 3)]
    assert list(cases[0].images) == ["flair", "t1", "t1ce", "t2"]
    assert cases[0].label.name == "BraTS20_Training_001_seg.nii.gz"


def test_uncompressed_nii_and_misnamed_mask_of_case_355(tmp_path):
    write_brats_case(tmp_path, "BraTS20_Training_355", suffix=".nii", seg_name="W39_1998.09.19_Segm")
    write_brats_case(tmp_path, "BraTS20_Training_356", suffix=".nii")
    cases = ChallengeAdapter("brats2020").discover(tmp_path)
    assert cases[0].label.name == "W39_1998.09.19_Segm.nii"
    assert cases[1].images["t1ce"].name == "BraTS20_Training_356_t1ce.nii"


def test_graded_editions_read_hgg_lgg_folders(tmp_path):
    write_brats_case(tmp_path / "HGG", "Brats18_2013_2_1")
    write_brats_case(tmp_path / "LGG", "Brats18_TCIA_101_1")
    cases = ChallengeAdapter("brats2018").discover(tmp_path)
    assert {c.case_id: c.meta["grade"] for c in cases} == {"Brats18_2013_2_1": "HGG", "Brats18_TCIA_101_1": "LGG"}


def test_missing_modality_names_the_file(tmp_path):
    write_brats_case(tmp_path, "BraTS20_Training_001", modalities=("flair", "t1", "t2"))
    with pytest.raises(BrainbenchDataError, match=r"BraTS20_Training_001_t1ce\.nii\.gz: missing t1ce channel"):
        ChallengeAdapter("brats2020").discover(tmp_path)


def test_validate_rejects_grid_mismatch_and_label_3(tmp_path):
    folder = write_brats_case(tmp_path, "BraTS20_Training_001")
    adapter = ChallengeAdapter("brats2020")
    case = adapter.discover(tmp_path)[0]
    assert adapter.validate(case).shape == (24, 24, 20)
    write_nifti(folder / "BraTS20_Training_001_t2.nii.gz", np.zeros((24, 24, 21), np.float32))
    with pytest.raises(BrainbenchDataError, match=r"_t2\.nii\.gz: grid \(24, 24, 21\)"):
        adapter.validate(case)
    write_brats_case(tmp_path, "BraTS20_Training_001")
    seg = np.zeros((24, 24, 20), np.uint8)
    seg[5, 5, 5] = 3
    write_nifti(folder / "BraTS20_Training_001_seg.nii.gz", seg)
    with pytest.raises(BrainbenchDataError, match=r"_seg\.nii\.gz: label values \[3\] are not allowed"):
        adapter.validate(case)


def test_unreadable_gzip_is_a_data_error(tmp_path):
    folder = write_brats_case(tmp_path, "BraTS20_Training_001")
    (folder / "BraTS20_Training_001_flair.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    adapter = ChallengeAdapter("brats2020")
    with pytest.raises(BrainbenchDataError, match="_flair.nii.gz: not a readable NIfTI"):
        adapter.validate(adapter.discover(tmp_path)[0])


def test_empty_folder_and_unknown_edition(tmp_path):
    with pytest.raises(BrainbenchDataError, match="no brats2020 cases found"):
        ChallengeAdapter("brats2020").discover(tmp_path)
    with pytest.raises(BrainbenchConfigError, match="unknown challenge edition 'brats1999'"):
        adapter_for("brats1999")


def test_label_encoding_and_regions_round_trip():
    edition = EDITIONS["brats2020"]
    labels = np.array([0, 1, 2, 4, 4, 2])
    classes = edition.encode_labels(labels)
    assert classes.tolist() == [0, 1, 2, 3, 3, 2]
    assert edition.decode_labels(classes).tolist() == labels.tolist()
    masks = edition.region_masks(labels)
    assert masks["WT"].tolist() == [False, True, True, True, True, True]
    assert masks["TC"].tolist() == [False, True, False, True, True, False]
    assert masks["ET"].tolist() == [False, False, False, True, True, False]
