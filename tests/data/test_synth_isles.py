"""Synthetic ISLES generator: stroke contrasts, determinism, the ISLES'22 FLAIR grid, and Hydra instantiation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from brainbench.config import compose
from hydra.utils import instantiate

from brainbench.challenges import adapter_for
from brainbench.io import read_grid
from brainbench.data.synth.isles import case_files, flair_grid, synthesize_isles, synthesize_stroke_case
from brainbench.data.synth.subject import METADATA_FILE
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

SPACING = 4.0
ALL_CHANNELS = ("dwi", "adc", "flair", "t1", "t2", "tmax", "ttp", "mtt", "cbf", "rcbv")


@pytest.fixture(scope="module")
def cases():
    return [synthesize_stroke_case(11, index, SPACING, ALL_CHANNELS) for index in range(3)]


def test_core_and_penumbra_lie_in_brain_tissue_of_one_hemisphere(cases):
    for case in cases:
        lesion = case.seg > 0
        assert (case.seg == 1).any() and (case.seg == 2).any()
        assert not (lesion & ~case.brain_mask).any()
        x = np.nonzero(lesion)[0] * case.grid.spacing[0] + case.grid.affine[0, 3]
        assert (x > 0).all() or (x < 0).all()
        core_ml = (case.seg == 1).sum() * case.grid.voxel_volume_mm3 / 1000.0
        assert 2.0 <= core_ml <= 80.0


def test_stroke_contrasts(cases):
    for case in cases:
        core, penumbra = case.seg == 1, case.seg == 2
        healthy = case.brain_mask & (case.seg == 0)

        def mean(channel, mask):
            return float(case.images[channel][mask].mean())

        assert mean("dwi", core) > 1.5 * mean("dwi", healthy)
        assert mean("adc", core) < mean("adc", healthy)
        assert mean("flair", core) > mean("flair", healthy)
        assert mean("tmax", core) > mean("tmax", penumbra) > 2.0 * mean("tmax", healthy)
        assert mean("cbf", core) < mean("cbf", penumbra) < mean("cbf", healthy)
        assert mean("rcbv", core) < mean("rcbv", penumbra)
        for image in case.images.values():
            assert image.dtype == np.float32 and not image[~case.brain_mask].any()


def test_runs_are_deterministic_and_prefixes(tmp_path):
    synthesize_isles(tmp_path / "a", edition="isles2015_spes", n_cases=2, spacing_mm=SPACING, seed=4)
    synthesize_isles(tmp_path / "b", edition="isles2015_spes", n_cases=1, spacing_mm=SPACING, seed=4)
    synthesize_isles(tmp_path / "c", edition="isles2015_spes", n_cases=1, spacing_mm=SPACING, seed=5)
    for key, path in case_files(tmp_path / "a", 0, "isles2015_spes").items():
        same = case_files(tmp_path / "b", 0, "isles2015_spes")[key]
        assert path.read_bytes() == same.read_bytes()
    first = case_files(tmp_path / "a", 0, "isles2015_spes")["seg"]
    other_seed = case_files(tmp_path / "c", 0, "isles2015_spes")["seg"]
    assert not np.array_equal(np.asanyarray(nib.load(first).dataobj), np.asanyarray(nib.load(other_seed).dataobj))
    record = json.loads((tmp_path / "a" / METADATA_FILE).read_text())
    assert record["generator"] == "brainbench.synth.isles.isles2015_spes"


def test_isles2022_flair_grid_covers_the_dwi_field_of_view(tmp_path):
    synthesize_isles(tmp_path, edition="isles2022", n_cases=1, spacing_mm=SPACING, seed=0)
    files = case_files(tmp_path, 0, "isles2022")
    dwi, flair = read_grid(files["dwi"]), read_grid(files["flair"])

    assert flair.matches(flair_grid(dwi))
    assert flair.spacing == pytest.approx((2.0, 2.0, 10.0))
    extent = np.array(dwi.shape) * dwi.spacing
    assert np.all(np.abs(np.array(flair.shape) * flair.spacing - extent) <= np.array(flair.spacing))
    flair_data = np.asanyarray(nib.load(files["flair"]).dataobj)
    assert flair_data.max() > 0 and np.isfinite(flair_data).all()
    assert (tmp_path / "dataset_description.json").is_file()


def test_refuses_real_looking_folders_and_bad_arguments(tmp_path):
    (tmp_path / "training_1").mkdir()
    with pytest.raises(BrainbenchDataError, match="no brainbench_synthetic.json"):
        synthesize_isles(tmp_path, edition="isles2017", n_cases=1, spacing_mm=SPACING)
    with pytest.raises(BrainbenchConfigError, match="unknown ISLES edition 'isles2018'"):
        synthesize_isles(tmp_path / "x", edition="isles2018")
    with pytest.raises(BrainbenchConfigError, match="spacing_mm must be within 1–4 mm"):
        synthesize_isles(tmp_path / "y", edition="isles2022", spacing_mm=8.0)


@pytest.mark.parametrize(
    ("challenge", "data"), [("isles2017", "synthetic"), ("brats2015", "synthetic")]
)
def test_hydra_data_config_instantiates_the_generator_for_its_adapter(tmp_path, challenge, data):
    cfg = compose([
            f"challenge={challenge}", f"data={data}", "data.synth.n_cases=1", f"data.synth.spacing_mm={SPACING}"
        ],
    )
    instantiate(cfg.data.synth, root=tmp_path)

    cases = instantiate(cfg.challenge.adapter).discover(tmp_path)
    assert len(cases) == 1 and cfg.challenge.edition == challenge
    assert cases[0].case_id == ("training_1" if challenge == "isles2017" else "brats_2013_pat0001_1")
    assert adapter_for(challenge).edition.name == challenge
