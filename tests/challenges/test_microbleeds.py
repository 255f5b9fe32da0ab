"""Microbleed editions: VALDO 2021 Task 2 and Dou 2016 releases read back from synthetic trees, and the
Dou label map grown from hand-placed centroids checked against a naive voxel loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainbench.challenges import EDITIONS, Unranked, adapter_for
from brainbench.challenges.microbleeds import DouLayout
from brainbench.data.synth import synthesize
from brainbench.errors import BrainbenchDataError
from brainbench.io import load_label, read_grid
from tests.helpers import run_cli, write_nifti

SPACING = 2.0
TINY_SPACING = (1.0, 1.5, 2.0)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BRAINBENCH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cmb")
    synthesize("valdo2021", base / "valdo", n_cases=4, spacing_mm=SPACING, seed=3)  # sub-004: no CMB
    synthesize("dou2016", base / "dou", n_cases=2, spacing_mm=SPACING, seed=3)
    return base


def tiny_dou(root: Path, studies: dict[str, np.ndarray], shape=(12, 10, 8)) -> Path:
    """A Dou-layout release: a random image per study and its centroids under an arbitrary variable name."""
    affine = np.diag([*TINY_SPACING, 1.0])
    affine[:3, 3] = (-7.0, 3.0, 11.0)
    for study, points in studies.items():
        (root / "nii").mkdir(parents=True, exist_ok=True)
        image = np.random.default_rng(0).random(shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), str(root / "nii" / f"{study}.nii"))
        (root / "ground_truth").mkdir(exist_ok=True)
        scipy.io.savemat(str(root / "ground_truth" / f"{study}.mat"), {"cen": np.asarray(points, dtype=np.float64)})
    return root


def naive_spheres(shape, points_one_based, radius_mm) -> np.ndarray:
    """Voxels within ``radius_mm`` of any point, by a loop over every voxel and point."""
    mask = np.zeros(shape, dtype=np.uint8)
    for index in np.ndindex(*shape):
        for point in points_one_based:
            offset = [(index[a] - (point[a] - 1)) * TINY_SPACING[a] for a in range(3)]
            if sum(o * o for o in offset) <= radius_mm**2:
                mask[index] = 1
    return mask


def test_declarations():
    valdo, dou = EDITIONS["valdo2021"], EDITIONS["dou2016"]
    assert valdo.challenge == dou.challenge == "microbleeds"
    assert valdo.modalities == ("t2s", "t1", "t2") and valdo.reference_grid == "t2s"
    assert dou.modalities == ("swi",) and dou.layout.radius_mm == 2.5 and dou.layout.index_base == 1
    assert (valdo.protocol, dou.protocol) == ("valdo-2021-task2", "dou-2016")
    for edition in (valdo, dou):
        assert edition.label_values == (0, 1) and dict(edition.regions) == {"cmb": (1,)}
        assert isinstance(edition.ranking, Unranked)
        assert edition.synthetic.n_cases == 8


def test_valdo_cases_are_found_and_clean(trees):
    root = trees / "valdo"
    cases = adapter_for("valdo2021").discover(root)
    assert [c.case_id for c in cases] == ["sub-001", "sub-002", "sub-003", "sub-004"]
    assert {m: p.name for m, p in cases[1].images.items()} == {
        "t2s": "sub-002_space-T2S_desc-masked_T2S.nii.gz",
        "t1": "sub-002_space-T2S_desc-masked_T1.nii.gz",
        "t2": "sub-002_space-T2S_desc-masked_T2.nii.gz",
    }
    assert cases[1].label == root / "sub-002" / "sub-002_space-T2S_CMB.nii.gz"
    result = run_cli("data", "check", "--challenge", "valdo2021", "--root", str(root), cwd=trees)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not nib.load(cases[3].label).get_fdata().any()  # a subject without microbleeds is data, not a problem
    assert "4 cases, 0 problems" in result.stdout


def test_dou_cases_are_found_with_masks_grown_in_the_cache(trees, cache):
    root = trees / "dou"
    cases = adapter_for("dou2016").discover(root)
    assert [c.case_id for c in cases] == ["01", "02"]
    for case in cases:
        assert case.images == {"swi": root / "nii" / f"{case.case_id}.nii"}
        assert case.label.parent == cache / "masks_from_points" and case.label.name.endswith(".nii.gz")
        assert case.meta["points"] == str(root / "ground_truth" / f"{case.case_id}.mat")
        assert case.meta["radius_mm"] == 2.5
        labels, grid = load_label(case.label, allowed={0, 1})
        assert grid.matches(read_grid(case.images["swi"]))
        centres = scipy.io.loadmat(str(case.meta["points"]))["centroids"].astype(int) - 1
        assert len(centres) and all(labels[tuple(c)] == 1 for c in centres)
    assert not any(p.suffix == ".gz" for p in root.rglob("*")), "nothing is written into the release"


def test_dou_mask_is_a_sphere_of_the_radius_around_each_one_based_centroid(tmp_path):
    points = np.array([[1, 1, 1], [7, 5, 4], [12, 10, 8]])  # 1-based: both corners and an inner voxel
    root = tiny_dou(tmp_path / "release", {"s1": points})
    (case,) = adapter_for("dou2016").discover(root)
    labels, _ = load_label(case.label)
    expected = naive_spheres((12, 10, 8), points, 2.5)
    assert np.array_equal(labels, expected)
    assert labels[0, 0, 0] == 1 and labels[11, 9, 7] == 1 and labels[6, 4, 3] == 1
    assert labels[1, 0, 0] == 1 and labels[3, 0, 0] == 0  # x spacing 1 mm: 2 mm in, 3 mm out
    assert labels[0, 0, 1] == 1 and labels[0, 0, 2] == 0  # z spacing 2 mm: 2 mm in, 4 mm out


def test_dou_index_base_and_radius_are_layout_fields(tmp_path):
    zero_based = np.array([[0, 0, 0], [5, 5, 3]])
    root = tiny_dou(tmp_path / "release", {"s1": zero_based})
    with pytest.raises(BrainbenchDataError, match="indices taken as 1-based"):
        adapter_for("dou2016").discover(root)
    edition = dataclasses.replace(EDITIONS["dou2016"], layout=DouLayout(radius_mm=4.0, index_base=0))
    (case,) = adapter_for(edition).discover(root)
    assert case.meta["radius_mm"] == 4.0
    assert np.array_equal(load_label(case.label)[0], naive_spheres((12, 10, 8), zero_based + 1, 4.0))


def test_dou_mask_is_reused_not_rewritten(tmp_path):
    root = tiny_dou(tmp_path / "release", {"s1": [[3, 3, 3]]})
    (first,) = adapter_for("dou2016").discover(root)
    before = first.label.stat()
    (second,) = adapter_for("dou2016").discover(root)
    after = second.label.stat()
    assert second.label == first.label
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(list(first.label.parent.iterdir())) == 1


def test_dou_centroid_outside_the_image_is_one_error_line_naming_the_mat(tmp_path):
    root = tiny_dou(tmp_path / "release", {"s1": [[2, 2, 2]], "s2": [[2, 2, 2], [13, 1, 1]]})
    cases, problems = adapter_for("dou2016").scan(root)
    assert [c.case_id for c in cases] == ["s1"]
    (line,) = problems
    assert line.startswith(f"{root / 'ground_truth' / 's2.mat'}: 1 CMB centroid(s) outside the 12×10×8 image s2.nii")
    assert "\n" not in line and "row 2" in line


@pytest.mark.parametrize("content, message", [
    ({"cen": np.ones((3, 4))}, r"variable 'cen' has shape \(3, 4\); expected N×3"),
    ({"a": np.ones((2, 3)), "b": np.ones((1, 3))}, r"expected one numeric N×3 array .* found variables \['a', 'b'\]"),
])
def test_dou_mat_without_one_n_by_3_array_is_refused(tmp_path, content, message):
    root = tiny_dou(tmp_path / "release", {"s1": [[2, 2, 2]]})
    scipy.io.savemat(str(root / "ground_truth" / "s1.mat"), content)
    with pytest.raises(BrainbenchDataError, match=message):
        adapter_for("dou2016").discover(root)


def test_dou_scan_without_centroids(tmp_path):
    root = tiny_dou(tmp_path / "release", {"s1": [[2, 2, 2]], "s2": np.zeros((0, 0))})
    (root / "ground_truth" / "s1.mat").unlink()
    with pytest.raises(BrainbenchDataError, match=r"ground_truth/s1\.mat: missing CMB centroids of case s1"):
        adapter_for("dou2016").discover(root)
    cases = adapter_for("dou2016", require_labels=False).discover(root)
    assert cases[0].label is None
    assert not load_label(cases[1].label)[0].any(), "an empty matrix is a scan without microbleeds"


def test_valdo_missing_channel_or_label_names_the_file(tmp_path):
    folder = tmp_path / "sub-007"
    for token in ("T2S", "T1"):
        write_nifti(folder / f"sub-007_space-T2S_desc-masked_{token}.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(BrainbenchDataError, match=r"sub-007_space-T2S_desc-masked_T2\.nii\.gz: missing t2 channel"):
        adapter_for("valdo2021").discover(tmp_path)
    write_nifti(folder / "sub-007_space-T2S_desc-masked_T2.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(BrainbenchDataError, match=r"sub-007_space-T2S_CMB\.nii\.gz: missing CMB label map of case"):
        adapter_for("valdo2021").discover(tmp_path)
    (case,) = adapter_for("valdo2021", require_labels=False).discover(tmp_path)
    assert case.label is None and list(case.images) == ["t2s", "t1", "t2"]
