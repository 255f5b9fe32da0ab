"""MS lesion editions: synthetic trees in the MSSEG 2016 (both layouts), ISBI 2015 and MICCAI 2008 layouts
are read back by their adapters, with raters, spacing and the known quirks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from brainbench.config import compose
from hydra.utils import instantiate

from brainbench.challenges import EDITIONS, adapter_for
from brainbench.challenges import ChallengeAdapter
from brainbench.io import load_label, load_volume, read_grid
from brainbench.data.synth.common import release_grid
from brainbench.data.synth.ms import (
    FOV_MM, synthesize_isbi2015, synthesize_miccai2008, synthesize_msseg2016,
)
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

SPACING = 4.0


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ms")
    synthesize_msseg2016(base / "original" / "Training", n_cases=2, spacing_mm=SPACING, seed=1)
    synthesize_msseg2016(base / "flat", n_cases=2, spacing_mm=SPACING, seed=1, layout="flat")
    synthesize_isbi2015(base / "isbi", n_cases=1, n_timepoints=2, spacing_mm=SPACING, seed=1)
    synthesize_miccai2008(base / "miccai2008", n_cases=2, spacing_mm=SPACING, seed=1)
    return base


def _values(path) -> set[int]:
    return set(np.unique(load_label(path)[0]).tolist())


def test_msseg2016_original_layout_consensus_is_majority_of_seven_raters(trees):
    adapter = ChallengeAdapter("msseg2016")
    cases = adapter.discover(trees / "original" / "Training")
    assert [c.case_id for c in cases] == ["Center_01_Patient_01", "Center_07_Patient_01"]
    case = cases[0]
    assert list(case.images) == ["flair", "t1", "gado", "dp", "t2"]
    assert case.images["gado"].name == "GADO_preprocessed.nii.gz"
    assert case.label.name == "Consensus.nii.gz" and case.label.parent.name == "Masks"
    assert case.meta["center"] == "01" and len(case.meta["raters"]) == 7
    grid = adapter.validate(case)
    assert grid.spacing == (SPACING,) * 3
    raters = np.stack([load_label(r)[0] for r in case.meta["raters"]])
    consensus = load_label(case.label)[0]
    assert set(np.unique(consensus)) == {0, 1}
    assert np.array_equal(consensus, (raters.sum(axis=0) >= 4).astype(consensus.dtype))
    assert len({int(r.sum()) for r in raters}) > 1, "raters must disagree"


def test_msseg2016_flat_rerelease_is_read_by_the_same_adapter(trees):
    cases = adapter_for("msseg2016").discover(trees / "flat")
    assert [c.case_id for c in cases] == ["01001SYNT", "07001SYNT"]
    assert cases[1].images["gado"].name == "3DT1GADO.nii" and cases[1].label.name == "Consensus.nii"
    assert [Path(r).name for r in cases[1].meta["raters"]] == [f"ManualSegmentation_{k}.nii" for k in range(1, 8)]
    assert cases[1].meta["center"] == "07"


def test_missing_dp_needs_an_explicit_channel_subset(trees, tmp_path):
    root = tmp_path / "Training"
    source = trees / "original" / "Training" / "Center_01" / "Patient_01"
    target = root / "Center_01" / "Patient_01"
    for sub in ("Preprocessed_Data", "Masks"):
        (target / sub).mkdir(parents=True)
        for path in (source / sub).iterdir():
            if path.name != "DP_preprocessed.nii.gz":
                (target / sub / path.name).symlink_to(path)
    with pytest.raises(BrainbenchDataError, match=r"DP_preprocessed\.nii\.gz: missing dp channel of case Center_01"):
        ChallengeAdapter("msseg2016").discover(root)
    adapter = ChallengeAdapter("msseg2016", modalities=["flair", "t1", "gado", "t2"])
    assert adapter.edition.modalities == ("flair", "t1", "gado", "t2") and adapter.edition.name == "msseg2016"
    assert list(adapter.discover(root)[0].images) == ["flair", "t1", "gado", "t2"]
    with pytest.raises(BrainbenchConfigError, match="modalities of msseg2016 must be distinct names"):
        ChallengeAdapter("msseg2016", modalities=["flair", "pd"])


def test_isbi2015_one_case_per_time_point_with_two_raters(trees):
    adapter = ChallengeAdapter("isbi2015")
    cases = adapter.discover(trees / "isbi")
    assert [c.case_id for c in cases] == ["training01_01", "training01_02"]
    case = cases[1]
    assert list(case.images) == ["flair", "mprage", "pd", "t2"]
    assert case.images["mprage"].name == "training01_02_mprage_pp.nii"
    assert case.label.name == "training01_02_mask1.nii"
    assert [Path(r).name for r in case.meta["raters"]] == ["training01_02_mask1.nii", "training01_02_mask2.nii"]
    assert case.meta["subject"] == "training01" and case.meta["timepoint"] == 2
    assert adapter.validate(case).spacing == (SPACING,) * 3
    assert _values(case.label) <= {0, 1}
    assert all(load_label(c.label)[0].sum() > 0 for c in cases), "every visit shows lesions"


def test_miccai2008_nrrd_detached_header_and_second_rater(trees):
    adapter = ChallengeAdapter("miccai2008")
    root = trees / "miccai2008"
    cases = adapter.discover(root)
    assert [c.case_id for c in cases] == ["CHB_train_Case01", "UNC_train_Case01"]
    chb, unc = cases
    header = chb.images["t1"]
    assert header.suffix == ".nhdr" and header.with_suffix(".raw").is_file()
    assert "data file: CHB_train_Case01_T1.raw" in header.read_text()
    assert len(chb.meta["raters"]) == 1
    second = root / "UNC_train_lesion_byCHB" / "UNC_train_Case01" / "UNC_train_Case01_lesion_byCHB.nhdr"
    assert Path(unc.meta["raters"][1]) == second
    expected = release_grid(FOV_MM["miccai2008"], (SPACING,) * 3)
    grid = adapter.validate(unc)
    assert grid.matches(expected), (grid.affine, expected.affine)
    flair, _ = load_volume(unc.images["flair"])
    assert flair.shape == expected.shape and flair.max() > 0
    assert _values(unc.label) == {0, 1}


def test_generation_is_deterministic_and_refuses_another_seed(trees, tmp_path):
    synthesize_msseg2016(tmp_path / "again", n_cases=1, spacing_mm=SPACING, seed=1)
    name = Path("Center_01/Patient_01/Preprocessed_Data/FLAIR_preprocessed.nii.gz")

    def digest(path):
        return hashlib.sha256(load_volume(path)[0].tobytes()).hexdigest()

    assert digest(tmp_path / "again" / name) == digest(trees / "original" / "Training" / name)
    with pytest.raises(BrainbenchDataError, match="holds synthetic cases recorded as"):
        synthesize_msseg2016(tmp_path / "again", n_cases=1, spacing_mm=SPACING, seed=2)
    with pytest.raises(BrainbenchConfigError, match="layout must be"):
        synthesize_msseg2016(tmp_path / "x", layout="nested")


@pytest.mark.parametrize("edition", ["msseg2016", "isbi2015", "miccai2008"])
def test_hydra_configs_synthesise_and_read_back(edition, tmp_path):
    cfg = compose([
        f"challenge={edition}", "data=synthetic", "data.synth.n_cases=1",
        f"data.synth.spacing_mm={SPACING}", f"paths.data_dir={tmp_path}",
    ])
    assert str(SPACING) in cfg.data.root
    instantiate(cfg.data.synth, root=tmp_path / "tree")
    adapter = instantiate(cfg.challenge.adapter)
    assert adapter.edition == EDITIONS[edition] and adapter.edition.protocol == {
        "msseg2016": "msseg-2016", "isbi2015": "isbi-2015", "miccai2008": "miccai-2008"}[edition]
    case = adapter.discover(tmp_path / "tree")[0]
    assert read_grid(case.label).spacing == (SPACING,) * 3
