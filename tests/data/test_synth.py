"""Synthetic BraTS generator: real files written under tmp_path and read back with nibabel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from brainbench.io import Grid
from brainbench.data.synth.anatomy import template_tissues
from brainbench.data.synth.brats import (
    SynthBratsConfig,
    case_files,
    synthesize_brats,
    synthesize_case,
)
from brainbench.data.synth.subject import METADATA_FILE
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

SEED = 7
N_CASES = 3
SPACING = 2.0
KEYS = ("flair", "t1", "t1ce", "t2", "seg")


def _read(path):
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "MICCAI_BraTS2020_TrainingData"
    folders = synthesize_brats(root, n_cases=N_CASES, spacing_mm=SPACING, seed=SEED)
    return root, folders


@pytest.fixture(scope="module")
def cases():
    return [synthesize_case(SEED, i, SPACING) for i in range(N_CASES)]


def test_layout_names_and_metadata(written):
    root, folders = written
    names = [f"BraTS20_Training_{i:03d}" for i in range(1, N_CASES + 1)]
    assert folders == [root / name for name in names]
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, METADATA_FILE])
    for name in names:
        expected = {f"{name}_{key}.nii.gz" for key in KEYS}
        assert {p.name for p in (root / name).iterdir()} == expected
    assert json.loads((root / METADATA_FILE).read_text()) == {
        "generator": "brainbench.synth.brats",
        "seed": SEED,
        "spacing_mm": SPACING,
        "n_cases": N_CASES,
        "data_source": "synthetic",
    }


def test_labels_dtypes_and_geometry(written):
    root, _ = written
    affines = []
    for index in range(N_CASES):
        files = case_files(root, index)
        seg, seg_image = _read(files["seg"])
        assert seg_image.get_data_dtype() == np.uint8
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
        for key in KEYS:
            data, image = _read(files[key])
            grid = Grid(shape=image.shape, affine=image.affine)
            assert image.shape == seg.shape
            np.testing.assert_array_equal(image.affine, seg_image.affine)
            assert grid.spacing == (SPACING, SPACING, SPACING)
            np.testing.assert_array_equal(image.affine[:3, :3], np.diag([SPACING] * 3))
            assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
            if key != "seg":
                assert image.get_data_dtype() == np.float32
                assert np.isfinite(data).all() and data.min() >= 0.0
                assert (data[seg > 0] > 0).all()
                assert data[0, 0, 0] == 0.0
        affines.append(seg_image.affine)
    assert all(np.array_equal(affines[0], a) for a in affines)


def test_files_hold_the_in_memory_cases(written, cases):
    root, _ = written
    for index, case in enumerate(cases):
        files = case_files(root, index)
        np.testing.assert_array_equal(_read(files["seg"])[0], case.seg)
        for modality, image in case.images.items():
            np.testing.assert_array_equal(_read(files[modality])[0], image)


def test_rerun_is_identical_and_a_shorter_run_is_a_prefix(written, tmp_path):
    root, _ = written
    synthesize_brats(tmp_path, n_cases=N_CASES - 1, spacing_mm=SPACING, seed=SEED)
    for index in range(N_CASES - 1):
        for key in KEYS:
            first = _read(case_files(root, index)[key])[0]
            second = _read(case_files(tmp_path, index)[key])[0]
            assert first.dtype == second.dtype and first.tobytes() == second.tobytes()


def test_seeds_and_cases_differ(cases):
    other = synthesize_case(SEED + 1, 0, SPACING)
    assert not np.array_equal(other.seg, cases[0].seg)
    assert not np.array_equal(other.images["t1"], cases[0].images["t1"])
    assert not np.array_equal(cases[0].seg, cases[1].seg)


def test_tumour_inside_brain_mostly_white_matter_and_sized_like_brats(cases):
    for case in cases:
        tumour = case.seg > 0
        assert not (tumour & ~case.brain_mask).any()
        for image in case.images.values():
            assert not image[~case.brain_mask].any()
        white = case.wm[tumour] >= np.maximum(case.gm[tumour], case.csf[tumour])
        assert white.mean() > 0.5
        volume_ml = tumour.sum() * case.grid.voxel_volume_mm3 / 1000.0
        assert 20.0 <= volume_ml <= 150.0


def test_contrasts(cases):
    for case in cases:
        img, seg = case.images, case.seg
        healthy = (seg == 0) & case.brain_mask
        wm, gm, csf = (healthy & (t > 0.9) for t in (case.wm, case.gm, case.csf))

        def mean(modality, mask):
            return float(img[modality][mask].mean())

        assert mean("flair", seg == 2) > mean("flair", wm)
        assert mean("t2", seg == 2) > mean("t2", wm)
        assert mean("t1ce", seg == 4) > mean("t1ce", wm)
        assert mean("t1ce", seg == 4) / mean("t1", seg == 4) > mean("t1ce", wm) / mean("t1", wm)
        assert mean("t1", seg == 1) < mean("t1", wm) and mean("t1ce", seg == 1) < mean("t1ce", wm)
        assert mean("t2", seg == 1) > mean("t2", wm)
        assert mean("t1", wm) > mean("t1", gm) > mean("t1", csf)
        assert mean("t2", csf) > mean("t2", gm) > mean("t2", wm)
        assert mean("flair", gm) > mean("flair", wm) > mean("flair", csf)


def test_existing_cases_are_skipped_and_missing_files_regenerated(tmp_path):
    synthesize_brats(tmp_path, n_cases=1, spacing_mm=SPACING, seed=SEED)
    files = case_files(tmp_path, 0)
    before = {key: path.stat().st_mtime_ns for key, path in files.items()}
    t2 = files["t2"].read_bytes()
    synthesize_brats(tmp_path, n_cases=1, spacing_mm=SPACING, seed=SEED)
    assert {key: path.stat().st_mtime_ns for key, path in files.items()} == before
    files["t2"].unlink()
    synthesize_brats(tmp_path, n_cases=1, spacing_mm=SPACING, seed=SEED)
    assert files["t2"].read_bytes() == t2
    assert not [p for p in files["t2"].parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_mix_with_other_data(tmp_path):
    marked = tmp_path / "marked"
    marked.mkdir()
    record = {"generator": "brainbench.synth.brats", "seed": 1, "spacing_mm": 2.0}
    (marked / METADATA_FILE).write_text(json.dumps(record))
    with pytest.raises(BrainbenchDataError, match="seed"):
        synthesize_brats(marked, n_cases=1, seed=2)
    real = tmp_path / "real"
    (real / "BraTS20_Training_001").mkdir(parents=True)
    with pytest.raises(BrainbenchDataError, match=METADATA_FILE):
        synthesize_brats(real, n_cases=1)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_cases": 0}, {"n_cases": 1000}, {"seed": -1}, {"seed": 1.5}, {"spacing_mm": 0.5}, {"spacing_mm": "1"}],
)
def test_invalid_config(kwargs):
    with pytest.raises(BrainbenchConfigError):
        SynthBratsConfig(**kwargs)


def test_template_tissues_are_cached_fractions():
    anatomy = template_tissues(SPACING)
    assert template_tissues(SPACING) is anatomy
    assert anatomy.grid.spacing == (SPACING, SPACING, SPACING)
    total = anatomy.gm + anatomy.wm + anatomy.csf
    assert total.max() <= 1.0 + 1e-5 and min(t.min() for t in (anatomy.gm, anatomy.wm, anatomy.csf)) >= 0.0
    assert not total[~anatomy.brain_mask].any()
    assert 1.4 <= anatomy.brain_mask.sum() * anatomy.grid.voxel_volume_mm3 / 1e6 <= 2.1
    assert not anatomy.wm.flags.writeable


@pytest.mark.slow
def test_one_millimetre_case(tmp_path):
    (folder,) = synthesize_brats(tmp_path, n_cases=1, spacing_mm=1.0, seed=SEED)
    seg, image = _read(folder / f"{folder.name}_seg.nii.gz")
    assert Grid(shape=seg.shape, affine=image.affine).spacing == (1.0, 1.0, 1.0)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
