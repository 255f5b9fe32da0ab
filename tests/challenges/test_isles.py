"""ISLES adapters: synthetic trees in each edition's official layout, the known defects, and the real ISLES'22 case."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from brainbench.challenges import EDITIONS, adapter_for
from brainbench.io import load_label, read_grid
from brainbench.data.synth.isles import case_files, synthesize_isles
from brainbench.errors import BrainbenchDataError
from brainbench.evaluation.protocols import PROTOCOLS
from tests.helpers import REAL_DATA, write_nifti

SPACING = 4.0
N_CASES = 3
ISLES_EDITIONS = ["isles2015_siss", "isles2015_spes", "isles2016", "isles2017", "isles2022"]
EXPECTED_IDS = {
    "isles2015_siss": ["1", "2", "3"],
    "isles2015_spes": ["1", "2", "3"],
    "isles2016": ["training_1", "training_2", "training_3"],
    "isles2017": ["training_1", "training_2", "training_4"],
    "isles2022": ["sub-strokecase0001", "sub-strokecase0002", "sub-strokecase0003"],
}
REAL_ISLES22 = REAL_DATA / "isles22_sub-strokecase0009"


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("isles")
    for edition in ISLES_EDITIONS:
        synthesize_isles(base / edition, edition=edition, n_cases=N_CASES, spacing_mm=SPACING, seed=5)
    return base


@pytest.mark.slow
@pytest.mark.parametrize("edition", ISLES_EDITIONS)
def test_adapter_reads_every_synthetic_case(trees, edition):
    adapter = adapter_for(edition)
    cases = adapter.discover(trees / edition)

    assert [c.case_id for c in cases] == EXPECTED_IDS[edition]
    values = set()
    for case in cases:
        assert tuple(case.images) == EDITIONS[edition].modalities
        labels, label_grid = load_label(case.label, allowed=set(EDITIONS[edition].label_values))
        values |= set(np.unique(labels).tolist())
        assert label_grid.spacing == pytest.approx((SPACING,) * 3)
        reference = case.images[EDITIONS[edition].reference_grid or next(iter(case.images))]
        assert read_grid(reference).matches(label_grid)
    assert values == set(EDITIONS[edition].label_values)
    assert EDITIONS[edition].protocol in PROTOCOLS
    suffix = ".gz" if edition == "isles2022" else ".nii"  # ISLES 2015–2017 ship uncompressed NIfTI
    assert {path.suffix for case in cases for path in case.files} == {suffix}


def test_siss_copy_with_an_extra_nesting_level(trees, tmp_path):
    shutil.copytree(trees / "isles2015_siss", tmp_path / "SISS2015_Training" / "SISS2015" / "Training")

    cases = adapter_for("isles2015_siss").discover(tmp_path / "SISS2015_Training")

    assert [c.case_id for c in cases] == ["1", "2", "3"]
    assert cases[0].label.parent.name.startswith("VSD.Brain.XX.O.OT.")


def test_spes_channels_and_penumbra_region(trees):
    case = adapter_for("isles2015_spes").discover(trees / "isles2015_spes")[0]

    assert {k: p.parent.name.split(".")[4] for k, p in case.images.items()} == {
        "cbf": "MR_CBF", "cbv": "MR_CBV", "dwi": "MR_DWI", "t1c": "MR_T1c",
        "t2": "MR_T2", "tmax": "MR_Tmax", "ttp": "MR_TTP",
    }
    assert EDITIONS["isles2015_spes"].regions == {"penumbra": (2,)}


def test_isles2017_gaps_and_ignored_4d_pwi(trees, tmp_path):
    root = tmp_path / "ISLES2017_Training"
    shutil.copytree(trees / "isles2017", root)
    pwi = root / "training_4" / "VSD.Brain.XX.O.MR_4DPWI.999" / "VSD.Brain.XX.O.MR_4DPWI.999.nii"
    write_nifti(pwi, np.zeros((4, 4, 3, 5), np.float32))

    cases = adapter_for("isles2017").discover(root)

    assert [c.case_id for c in cases] == ["training_1", "training_2", "training_4"]
    assert pwi not in cases[2].files and "mtt" in cases[2].images


def test_missing_perfusion_map_is_reported(trees, tmp_path):
    shutil.copytree(trees / "isles2016", tmp_path / "root")
    shutil.rmtree(next((tmp_path / "root" / "training_2").glob("VSD.Brain.XX.O.MR_rCBV.*")))

    with pytest.raises(BrainbenchDataError, match="expected one MR_rCBV object for channel rcbv of case training_2"):
        adapter_for("isles2016").discover(tmp_path / "root")


def test_isles2022_flair_on_its_own_grid(trees):
    adapter = adapter_for("isles2022")
    case = adapter.discover(trees / "isles2022")[0]

    assert adapter.edition.reference_grid == "dwi"
    assert case.images["flair"].name == "sub-strokecase0001_ses-0001_FLAIR.nii.gz"
    assert case.label.parts[-4] == "derivatives"
    dwi, flair = read_grid(case.images["dwi"]), read_grid(case.images["flair"])
    assert not flair.matches(dwi)
    assert flair.spacing == pytest.approx((SPACING / 2, SPACING / 2, SPACING * 2.5))


def test_isles2022_rawdata_and_lower_case_flair_variant(trees, tmp_path):
    root = tmp_path / "ISLES-2022"
    shutil.copytree(trees / "isles2022" / "derivatives", root / "derivatives")
    for subject in ("sub-strokecase0001", "sub-strokecase0002"):
        for path in (trees / "isles2022" / subject).rglob("*.nii.gz"):
            target = root / "rawdata" / subject / "ses-0001" / path.name.replace("_FLAIR", "_flair")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)

    cases = adapter_for("isles2022").discover(root)

    assert [c.case_id for c in cases] == ["sub-strokecase0001", "sub-strokecase0002"]
    assert cases[1].images["flair"].name == "sub-strokecase0002_ses-0001_flair.nii.gz"


def test_isles2022_missing_mask_and_duplicate_flair(trees, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trees / "isles2022", root)
    case_files(root, 0, "isles2022")["seg"].unlink()
    with pytest.raises(BrainbenchDataError, match="missing mask of case sub-strokecase0001"):
        adapter_for("isles2022").discover(root)
    assert adapter_for("isles2022", require_labels=False).discover(root)[0].label is None
    flair = case_files(root, 1, "isles2022")["flair"]
    shutil.copy(flair, flair.parent / flair.name.replace("_FLAIR", "_flair").replace(".nii.gz", ".nii"))
    with pytest.raises(BrainbenchDataError, match="expected one sub-strokecase0002_ses-0001_flair"):
        adapter_for("isles2022", require_labels=False).discover(root)


def _real_case_grids(case):
    dwi, adc, flair = (read_grid(case.images[c]) for c in ("dwi", "adc", "flair"))
    labels, mask_grid = load_label(case.label, allowed={0, 1})
    assert dwi.shape == (112, 112, 73) and dwi.spacing == pytest.approx((2.0, 2.0, 2.0), abs=1e-3)
    assert adc.matches(dwi) and mask_grid.matches(dwi)
    assert flair.shape == (512, 512, 29) and flair.spacing == pytest.approx((0.449, 0.449, 5.0), abs=1e-3)
    assert not flair.matches(dwi)
    assert int(labels.sum()) == 523


def test_real_isles22_case_as_copied_rawdata_lower_case_flair(tmp_path):
    root = tmp_path / "ISLES-2022"
    root.mkdir()
    for folder in ("rawdata", "derivatives"):
        (root / folder).symlink_to(REAL_ISLES22 / folder, target_is_directory=True)

    cases = adapter_for("isles2022").discover(root)

    assert [c.case_id for c in cases] == ["sub-strokecase0009"]
    assert cases[0].images["flair"].name == "sub-strokecase0009_ses-0001_flair.nii.gz"
    _real_case_grids(cases[0])


def test_real_isles22_case_in_the_released_bids_layout(tmp_path):
    root = tmp_path / "ISLES-2022"
    source = REAL_ISLES22 / "rawdata" / "sub-strokecase0009" / "ses-0001"
    stem = "sub-strokecase0009_ses-0001"
    session = root / "sub-strokecase0009" / "ses-0001"
    for folder, name, target in (("anat", "flair", "FLAIR"), ("dwi", "dwi", "dwi"), ("dwi", "adc", "adc")):
        (session / folder).mkdir(parents=True, exist_ok=True)
        (session / folder / f"{stem}_{target}.nii.gz").symlink_to(source / f"{stem}_{name}.nii.gz")
    (root / "derivatives").mkdir()
    (root / "derivatives" / "sub-strokecase0009").symlink_to(
        REAL_ISLES22 / "derivatives" / "sub-strokecase0009", target_is_directory=True
    )

    cases = adapter_for("isles2022").discover(root)

    assert cases[0].images["flair"].parent.name == "anat" and cases[0].images["flair"].name.endswith("_FLAIR.nii.gz")
    _real_case_grids(cases[0])
