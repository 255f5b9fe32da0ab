"""NeoBrainS12: the three image sets written in the (low-confidence) training layout, including the
``T2_1-1``/``T1_1-2`` file names and coronal slice axes, plus the test-scan layout; neonatal contrast."""

from __future__ import annotations

import numpy as np
import pytest
from brainbench.config import compose
from hydra.utils import instantiate

from brainbench.challenges import EDITIONS, adapter_for
from brainbench.challenges import ChallengeAdapter
from brainbench.challenges.neobrains import NEO_LABELS
from brainbench.io import load_label, load_volume
from brainbench.data.synth.tissue import synthesize_neobrains12
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

IN_PLANE = 4.0


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("neo") / "trainingDataNeoBrainS12"
    synthesize_neobrains12(root, n_cases=1, spacing_mm=IN_PLANE, seed=5)
    return root


@pytest.mark.parametrize(("edition", "example", "slice_world_axis", "t1_name"), [
    ("neobrains12_axial40", "example1", 2, "T1.nii.gz"),
    ("neobrains12_coronal30", "example2", 1, "T1_1-2.nii.gz"),
    ("neobrains12_coronal40", "example3", 1, "T1.nii.gz"),
])
def test_each_image_set_is_its_own_edition(tree, edition, example, slice_world_axis, t1_name):
    adapter = adapter_for(edition)
    (case,) = adapter.discover(tree)
    assert case.case_id == example and list(case.images) == ["t1", "t2"]
    assert case.images["t1"].name == t1_name and case.label.name == "manualSegm.nii.gz"
    grid = adapter.validate(case)
    assert grid.spacing == (IN_PLANE, IN_PLANE, 2.0)
    assert np.argmax(np.abs(grid.affine[:3, 2])) == slice_world_axis, "coronal sets slice along anterior–posterior"
    labels, _ = load_label(case.label)
    values = set(np.unique(labels).tolist())
    assert values <= set(range(9)) and values >= {0, 1, 2, 3, 5, 6, 7, 8}
    assert (labels == 3).sum() > (labels == 4).sum(), "unmyelinated white matter dominates"
    assert case.meta["weeks"] == (30 if "30" in edition else 40)


def test_neonatal_white_matter_contrast_is_inverted(tree):
    (case,) = ChallengeAdapter("neobrains12_axial40").discover(tree)
    labels, _ = load_label(case.label)
    t1, t2 = (load_volume(case.images[m])[0] for m in ("t1", "t2"))
    gm, uwm = labels == NEO_LABELS["cortical_gm"], labels == NEO_LABELS["unmyelinated_wm"]
    assert t1[uwm].mean() < t1[gm].mean()
    assert t2[uwm].mean() > t2[gm].mean()


def test_merged_classes_are_regions():
    edition = EDITIONS["neobrains12_coronal30"]
    masks = edition.region_masks(np.arange(9))
    assert masks["WM"].nonzero()[0].tolist() == [3, 4] and masks["CSF"].nonzero()[0].tolist() == [7, 8]
    assert edition.protocol == "neobrains12" and edition.n_classes == 9
    assert EDITIONS["neobrains12_coronal40"].spacing_mm is None


def test_test_scan_layout_without_labels(tree, tmp_path):
    scans = tmp_path / "scans_axial_40"
    scans.mkdir()
    example = tree / "40wAxial" / "example1"
    for token in ("t1", "t2"):
        (scans / f"set1_i2_{token}.nii.gz").symlink_to(example / f"{token.upper()}.nii.gz")
    (case,) = ChallengeAdapter("neobrains12_axial40", require_labels=False).discover(tmp_path)
    assert case.case_id == "set1_i2" and case.label is None
    with pytest.raises(BrainbenchDataError, match="missing label map of case set1_i2"):
        ChallengeAdapter("neobrains12_axial40").discover(scans)
    (scans / "set1_i2_t2.nii.gz").unlink()
    with pytest.raises(BrainbenchDataError, match=r"set1_i2_t2\.nii\.gz: missing t2 channel"):
        ChallengeAdapter("neobrains12_axial40", require_labels=False).discover(tmp_path)
    with pytest.raises(BrainbenchConfigError, match="sets must be among"):
        synthesize_neobrains12(tmp_path / "x", sets=["axial30"])


def test_hydra_config_synthesises_and_reads_back(tmp_path):
    cfg = compose([
        "challenge=neobrains12_coronal30", "data=synthetic", "data.synth.n_cases=1",
        f"data.synth.spacing_mm={IN_PLANE}", f"paths.data_dir={tmp_path}",
    ])
    instantiate(cfg.data.synth, root=tmp_path / "tree")
    (case,) = instantiate(cfg.challenge.adapter).discover(tmp_path / "tree")
    assert case.case_id == "example2", "examples keep their number whichever sets are written"
