"""Every BRATS edition: a synthetic tree in the official layout is read back by the edition's adapter."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from brainbench.challenges import EDITIONS, adapter_for
from brainbench.io import load_label
from brainbench.data.synth.brats import case_files, case_id, era_labels, synthesize_brats
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.evaluation.protocols import PROTOCOLS

SPACING = 4.0
N_CASES = 4
BRATS_EDITIONS = ["brats2012", "brats2013", "brats2015", "brats2016", "brats2017", "brats2023_gli"]
"""The VSD eras, 2023 GLI and one graded NIfTI edition (2018–2021 naming is covered in test_brats.py)."""


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("brats_editions")
    for edition in BRATS_EDITIONS:
        synthesize_brats(base / edition, n_cases=N_CASES, spacing_mm=SPACING, seed=3, edition=edition)
    return base


@pytest.mark.slow
@pytest.mark.parametrize("edition", BRATS_EDITIONS)
def test_adapter_reads_every_synthetic_case(trees, edition):
    adapter = adapter_for(edition)
    cases = adapter.discover(trees / edition)

    assert sorted(c.case_id for c in cases) == sorted(case_id(i, edition) for i in range(N_CASES))
    values = set()
    for case in cases:
        assert tuple(case.images) == EDITIONS[edition].modalities
        grid = adapter.validate(case)
        assert grid.spacing == pytest.approx((SPACING,) * 3)
        labels, _ = load_label(case.label, allowed=set(EDITIONS[edition].label_values))
        values |= set(np.unique(labels).tolist())
    assert values == set(EDITIONS[edition].label_values)
    assert EDITIONS[edition].protocol in PROTOCOLS
    expected_suffix = ".mha" if edition in ("brats2012", "brats2013", "brats2015", "brats2016") else ".nii.gz"
    assert all(path.name.endswith(expected_suffix) for case in cases for path in case.files)


def test_brats2013_groups_grades_and_synthetic_tissue_map(trees):
    cases = {c.case_id: c for c in adapter_for("brats2013").discover(trees / "brats2013")}

    assert set(cases) == {"Image_Data_HG_0001", "Image_Data_HG_0002", "Image_Data_LG_0001", "Synthetic_Data_HG_0001"}
    assert cases["Image_Data_LG_0001"].meta["grade"] == "LG"
    assert cases["Image_Data_HG_0001"].label.parent.name == "VSD.Brain_3more.XX.XX.OT"
    assert cases["Image_Data_LG_0001"].label.parent.name == "VSD.Brain_2more.XX.XX.OT"
    synthetic = cases["Synthetic_Data_HG_0001"]
    assert synthetic.label.parent.name == "VSD.Brain_1more.XX.O.OT"
    assert any(p.name.startswith("VSD.Gray_matter_of_neuraxis_5more") for p in synthetic.label.parents[1].iterdir())
    assert synthetic.meta["part"] == "Synthetic_Data"
    assert cases["Image_Data_HG_0001"].images["t1"].parent.name == "VSD.Brain.XX.O.MR_T1"


def test_brats2015_lgg_2more_smir_prefix_and_t1_vs_t1c(trees):
    cases = {c.case_id: c for c in adapter_for("brats2015").discover(trees / "brats2015")}

    lgg = cases[case_id(1, "brats2015")]
    assert lgg.meta["grade"] == "LGG" and ".Brain_2more.XX.O.OT." in lgg.label.name
    smir = cases[case_id(3, "brats2015")]
    assert all(path.name.startswith("SMIR.") for path in smir.files)
    for case in cases.values():
        assert ".MR_T1." in case.images["t1"].name and ".MR_T1c." in case.images["t1c"].name


def test_mr_t1c_never_stands_in_for_a_missing_mr_t1(trees, tmp_path):
    case_folder = tmp_path / "HGG" / "brats_2013_pat0001_1"
    shutil.copytree(trees / "brats2015" / "HGG" / "brats_2013_pat0001_1", case_folder)
    shutil.rmtree(next(case_folder.glob("VSD.Brain.XX.O.MR_T1.*")))

    with pytest.raises(BrainbenchDataError, match="expected one MR_T1 object for channel t1 .* found none"):
        adapter_for("brats2015").discover(tmp_path)


def test_two_ground_truths_or_none_are_reported(trees, tmp_path):
    case_folder = tmp_path / "HGG" / "brats_2013_pat0001_1"
    shutil.copytree(trees / "brats2015" / "HGG" / "brats_2013_pat0001_1", case_folder)
    truth = next(case_folder.glob("VSD.Brain_3more.XX.O.OT.*"))
    shutil.copytree(truth, case_folder / "VSD.Brain_2more.XX.O.OT.1")
    with pytest.raises(BrainbenchDataError, match="several ground-truth objects"):
        adapter_for("brats2015").discover(tmp_path)
    shutil.rmtree(truth)
    shutil.rmtree(case_folder / "VSD.Brain_2more.XX.O.OT.1")
    with pytest.raises(BrainbenchDataError, match="missing ground truth of case brats_2013_pat0001_1"):
        adapter_for("brats2015").discover(tmp_path)
    assert adapter_for("brats2015", require_labels=False).discover(tmp_path)[0].label is None


def test_brats2020_uncompressed_nii_mirror(tmp_path):
    synthesize_brats(tmp_path, n_cases=2, spacing_mm=4.0, seed=0)
    for path in case_files(tmp_path, 1).values():
        nib.save(nib.load(str(path)), str(path).removesuffix(".gz"))
        path.unlink()

    cases = adapter_for("brats2020").discover(tmp_path)

    assert cases[0].images["t1ce"].name.endswith(".nii.gz")
    assert cases[1].images["t1ce"].name == "BraTS20_Training_002_t1ce.nii"
    assert cases[1].label.name == "BraTS20_Training_002_seg.nii"
    assert adapter_for("brats2020").validate(cases[1]).spacing == (4.0, 4.0, 4.0)


def test_era_labels_and_region_maps():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:18, 2:18, 2:18] = 2
    seg[4:16, 4:16, 4:16] = 4
    seg[8:12, 8:12, 8:12] = 1

    assert set(np.unique(era_labels(seg, "brats2023_gli", 0, 0, 1.0)).tolist()) == {0, 1, 2, 3}
    assert set(np.unique(era_labels(seg, "brats2013", 0, 0, 1.0)).tolist()) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(era_labels(seg, "brats2019", 0, 0, 1.0), seg)
    gli = EDITIONS["brats2023_gli"].region_masks(np.array([0, 1, 2, 3]))
    assert gli["WT"].tolist() == [False, True, True, True]
    assert gli["TC"].tolist() == [False, True, False, True]
    assert gli["ET"].tolist() == [False, False, False, True]
    vsd = EDITIONS["brats2013"].region_masks(np.array([0, 1, 2, 3, 4]))
    assert vsd["core"].tolist() == [False, True, False, True, True]
    assert vsd["enhancing"].tolist() == [False, False, False, False, True]
    assert EDITIONS["brats2013"].protocol == "brats-vsd-2012-2016"
    assert EDITIONS["brats2023_gli"].protocol == "brats-2023-gli"


def test_unknown_synthetic_edition_is_a_config_error(tmp_path):
    with pytest.raises(BrainbenchConfigError, match="unknown BraTS edition 'brats2014'"):
        synthesize_brats(tmp_path, n_cases=1, edition="brats2014")
