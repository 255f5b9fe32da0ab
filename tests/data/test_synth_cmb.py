"""Synthetic microbleed look-alike: CMB contrast and blooming, unlabelled mimics (elongated vessels,
T1-bright calcifications), subjects without CMBs, and both release layouts holding the in-memory cases."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import scipy.io
from scipy import ndimage

from brainbench.data.synth.cmb import FOV_MM, synthesize_cmb_case, synthesize_dou2016, synthesize_valdo2021
from brainbench.data.synth.common import release_grid
from brainbench.data.synth.subject import METADATA_FILE
from brainbench.errors import BrainbenchDataError

SEED = 5
SPACING = 2.0
N_CASES = 4
GM, WM = 2, 3
LARGEST_CMB_DIAMETER_MM = 5.0
FULL = np.ones((3, 3, 3), dtype=bool)


@pytest.fixture(scope="module")
def cases():
    grid = release_grid(FOV_MM, (SPACING,) * 3)
    return [synthesize_cmb_case(SEED, index, grid) for index in range(N_CASES)]


def _mean(image, mask) -> float:
    assert mask.any()
    return float(image[mask].mean())


def _extents_mm(mask) -> list[float]:
    """Longest bounding-box side (mm) of each 26-connected component."""
    components, _ = ndimage.label(mask, FULL)
    return [max(s.stop - s.start for s in box) * SPACING for box in ndimage.find_objects(components)]


def test_counts_and_subjects_without_microbleeds(cases):
    counts = [len(case.centres) for case in cases]
    assert counts[3] == 0 and not cases[3].label.any()
    assert all(1 <= n <= 8 for n in counts[:3])
    for case in cases:
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) <= {0, 1}
        assert np.isin(case.tissue[case.label > 0], (GM, WM)).all(), "microbleeds lie in brain tissue"
        assert all(case.label[tuple(c)] == 1 for c in case.centres)
        assert ndimage.label(case.label, FULL)[1] == len(case.centres), "one component per microbleed"
        assert max(_extents_mm(case.label), default=0.0) <= LARGEST_CMB_DIAMETER_MM + SPACING


def test_microbleeds_dark_on_t2s_blooming_past_t2_and_invisible_on_t1(cases):
    cmb = np.concatenate([case.label.ravel() > 0 for case in cases[:3]])
    ring = np.concatenate([
        (ndimage.binary_dilation(case.label > 0, FULL, iterations=2) & (case.label == 0) & ~case.vessels
         & ~case.calcifications & np.isin(case.tissue, (GM, WM))).ravel()
        for case in cases[:3]])
    ratio = {channel: _mean(np.concatenate([c.images[channel].ravel() for c in cases[:3]]), cmb)
             / _mean(np.concatenate([c.images[channel].ravel() for c in cases[:3]]), ring)
             for channel in ("t2s", "t2", "t1")}
    assert ratio["t2s"] < 0.75
    assert ratio["t2s"] < ratio["t2"] < 0.95
    assert 0.9 < ratio["t1"] < 1.1


def test_mimics_are_present_unlabelled_and_tell_themselves_apart(cases):
    for case in cases:
        tissue = np.isin(case.tissue, (GM, WM)) & ~case.vessels & ~case.calcifications & (case.label == 0)
        assert case.vessels.any() and case.calcifications.any()
        assert not (case.label.astype(bool) & (case.vessels | case.calcifications)).any()
        assert _mean(case.images["t2s"], case.vessels) < 0.8 * _mean(case.images["t2s"], tissue)
        assert _mean(case.images["t2s"], case.calcifications) < 0.8 * _mean(case.images["t2s"], tissue)
        assert _mean(case.images["t1"], case.calcifications) > 1.2 * _mean(case.images["t1"], tissue)
        assert min(_extents_mm(case.vessels)) > LARGEST_CMB_DIAMETER_MM, "vessels are elongated in 3D"


def test_layouts_hold_the_in_memory_cases(cases, tmp_path):
    valdo = synthesize_valdo2021(tmp_path / "valdo", n_cases=2, spacing_mm=SPACING, seed=SEED)
    assert [f.name for f in valdo] == ["sub-001", "sub-002"]
    for index, folder in enumerate(valdo):
        label = nib.load(folder / f"{folder.name}_space-T2S_CMB.nii.gz")
        assert label.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(label.dataobj), cases[index].label)
        t1 = np.asanyarray(nib.load(folder / f"{folder.name}_space-T2S_desc-masked_T1.nii.gz").dataobj)
        assert np.array_equal(t1, cases[index].images["t1"])
    record = json.loads((tmp_path / "valdo" / METADATA_FILE).read_text())
    assert record["data_source"] == "synthetic" and record["generator"] == "brainbench.synth.cmb.valdo2021"

    dou = synthesize_dou2016(tmp_path / "dou", n_cases=1, spacing_mm=SPACING, seed=SEED)
    assert dou == [tmp_path / "dou" / "nii" / "01.nii"]
    swi = nib.load(dou[0])
    assert np.array_equal(np.asanyarray(swi.dataobj), cases[0].images["t2s"])
    content = scipy.io.loadmat(str(tmp_path / "dou" / "ground_truth" / "01.mat"))
    assert [k for k in content if not k.startswith("__")] == ["centroids"]
    assert np.array_equal(content["centroids"], cases[0].centres + 1), "1-based voxel indices"
    assert not list((tmp_path / "dou").rglob("*.nii.gz")), "the Dou release holds no mask"

    with pytest.raises(BrainbenchDataError, match="holds synthetic cases recorded as"):
        synthesize_dou2016(tmp_path / "dou", n_cases=1, spacing_mm=SPACING, seed=SEED + 1)
