"""MRBrainS13 and MRBrainS18: synthetic trees in the official layouts, read back by the adapter, with
the 0.958×0.958×3 mm geometry, both MRBrainS13 label maps, test ids restarting at 1 and MRBrainS18's ``070``."""

from __future__ import annotations

import numpy as np
import pytest
from brainbench.config import compose
from hydra.utils import instantiate

from brainbench.challenges import EDITIONS, adapter_for
from brainbench.challenges import ChallengeAdapter
from brainbench.challenges.mrbrains import MRBRAINS18_EXCLUDED, TISSUE_OF_STRUCTURE
from brainbench.io import load_label, load_volume, read_grid
from brainbench.data.synth.tissue import synthesize_mrbrains13, synthesize_mrbrains18
from brainbench.errors import BrainbenchDataError

COARSE = (4.0, 4.0, 3.0)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("mrbrains")
    synthesize_mrbrains13(base / "MRBrainS13DataNii", n_cases=2, n_test=2, spacing_mm=COARSE, seed=4)
    synthesize_mrbrains18(base / "MRBrainS18", n_cases=7, spacing_mm=COARSE, seed=4)
    return base


@pytest.mark.slow
def test_mrbrains13_official_geometry_and_both_label_maps(tmp_path):
    synthesize_mrbrains13(tmp_path, n_cases=1, seed=0)
    adapter = ChallengeAdapter("mrbrains13")
    (case,) = adapter.discover(tmp_path)
    assert case.case_id == "train_1" and list(case.images) == ["t1", "t1_ir", "t2_flair"]
    assert case.images["t2_flair"].name == "T2_FLAIR.nii" and case.label.name == "LabelsForTesting.nii"
    grid = adapter.validate(case)
    assert grid.shape == (240, 240, 48)
    assert np.allclose(grid.spacing, (0.958, 0.958, 3.0))
    structures, _ = load_label(case.meta["labels_8"])
    tissues, _ = load_label(case.label)
    assert set(np.unique(structures)) == set(range(9))
    merge = np.zeros(9, np.int16)
    merge[list(TISSUE_OF_STRUCTURE)] = list(TISSUE_OF_STRUCTURE.values())
    assert np.array_equal(tissues, merge[structures])
    t1, ir, flair = (load_volume(case.images[m])[0] for m in ("t1", "t1_ir", "t2_flair"))

    def mean(image, label):
        return image[structures == label].mean()

    for image in (t1, ir):  # WM > cortical GM > extracerebral CSF
        assert mean(image, 3) > mean(image, 1) > mean(image, 5)
    assert mean(flair, 4) > mean(flair, 3) > mean(flair, 6)  # lesions bright, ventricles dark


def test_mrbrains13_test_ids_restart_at_one_and_t1_1mm_has_its_own_grid(trees):
    root = trees / "MRBrainS13DataNii"
    assert (root / "TrainingData" / "1").is_dir() and (root / "TestData" / "1").is_dir()
    assert [c.case_id for c in ChallengeAdapter("mrbrains13").discover(root)] == ["train_1", "train_2"]
    everything = ChallengeAdapter("mrbrains13", require_labels=False).discover(root)
    assert [c.case_id for c in everything] == ["test_1", "test_2", "train_1", "train_2"]
    assert everything[0].label is None and everything[0].meta["release_id"] == "1"
    with pytest.raises(BrainbenchDataError, match="missing label map of case test_1"):
        ChallengeAdapter("mrbrains13").discover(root / "TestData")
    adapter = ChallengeAdapter("mrbrains13", modalities=["t1_1mm", "t2_flair"])
    assert adapter.edition.reference_grid == "t2_flair"
    case = adapter.discover(root)[0]
    own, reference = read_grid(case.images["t1_1mm"]), read_grid(case.images["t2_flair"])
    assert own.spacing == (4.0, 4.0, 4.0) and reference.spacing == COARSE and not own.matches(reference)


def test_mrbrains18_ids_with_zero_padded_070_and_excluded_labels(trees):
    adapter = adapter_for("mrbrains18")
    cases = adapter.discover(trees / "MRBrainS18")
    assert [c.case_id for c in cases] == ["1", "4", "5", "7", "14", "070", "148"]
    assert (trees / "MRBrainS18" / "training" / "070" / "pre" / "reg_IR.nii.gz").is_file()
    assert list(cases[5].images) == ["flair", "t1", "ir"]
    assert adapter.validate(cases[5]).spacing == COARSE
    values = set(np.unique(load_label(cases[5].label)[0]))
    assert values <= set(range(11)) and set(MRBRAINS18_EXCLUDED) <= values
    edition = EDITIONS["mrbrains18"]
    assert all(not set(v) & set(MRBRAINS18_EXCLUDED) for v in edition.regions.values())
    assert len(edition.regions) == 8 and edition.n_classes == 11


@pytest.mark.parametrize("edition", ["mrbrains13", "mrbrains18"])
def test_hydra_configs_synthesise_and_read_back(edition, tmp_path):
    cfg = compose([
        f"challenge={edition}", "data=synthetic", "data.synth.n_cases=1",
        "data.synth.spacing_mm=[4.0,4.0,3.0]", f"paths.data_dir={tmp_path}",
    ])
    assert cfg.data.root.endswith(f"{edition}_4.0x4.0x3.0mm_seed0")
    instantiate(cfg.data.synth, root=tmp_path / "tree")
    adapter = instantiate(cfg.challenge.adapter)
    assert adapter.edition.protocol == edition
    (case,) = adapter.discover(tmp_path / "tree")
    assert read_grid(case.label).spacing == COARSE
