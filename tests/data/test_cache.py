from __future__ import annotations

import numpy as np

from brainbench.challenges import ChallengeAdapter
from brainbench.data.cache import PreprocessedCache
from brainbench.io import load_volume
from brainbench.data.preprocess import ZScoreInBrain
from tests.helpers import write_brats_case


def test_second_pass_reads_no_nifti_and_returns_same_arrays(brats_tree, tmp_path, nifti_loads):
    adapter = ChallengeAdapter("brats2020")
    cache = PreprocessedCache(tmp_path / "cache", ZScoreInBrain())
    first = [cache.load(case, adapter) for case in adapter.discover(brats_tree)]
    assert len(nifti_loads) > 0
    nifti_loads.clear()
    second = [cache.load(case, adapter) for case in adapter.discover(brats_tree)]
    assert nifti_loads == []
    for a, b in zip(first, second):
        assert isinstance(b.image, np.memmap)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)


def test_zscore_inside_brain_and_label_classes(brats_tree, tmp_path):
    adapter = ChallengeAdapter("brats2020")
    case = adapter.discover(brats_tree)[0]
    entry = PreprocessedCache(tmp_path / "cache", ZScoreInBrain()).load(case, adapter)
    raw, grid = load_volume(case.images["flair"])
    assert entry.grid.matches(grid) and entry.array_grid.matches(grid)
    assert entry.image.shape == (4, *raw.shape) and entry.image.dtype == np.float32
    brain = raw != 0
    np.testing.assert_array_equal(entry.brain, brain)
    for channel in entry.image:
        assert abs(channel[brain].mean()) < 1e-5 and abs(channel[brain].std() - 1) < 1e-4
        assert (channel[~brain] == 0).all()
    assert set(np.unique(entry.label)) == {0, 1, 2, 3}


def test_key_changes_with_content_and_config_but_not_location(brats_tree, tmp_path):
    adapter = ChallengeAdapter("brats2020")
    case = adapter.discover(brats_tree)[0]
    plain = PreprocessedCache(tmp_path / "cache", ZScoreInBrain())
    clipped = PreprocessedCache(tmp_path / "cache", ZScoreInBrain(clip_sigma=3.0))
    assert plain.key(case, adapter) != clipped.key(case, adapter)
    copy_root = tmp_path / "copy"
    write_brats_case(copy_root, case.case_id, seed=1)
    copied = adapter.discover(copy_root)[0]
    assert plain.key(copied, adapter) == plain.key(case, adapter)
    write_brats_case(copy_root, case.case_id, seed=2)
    assert plain.key(copied, adapter) != plain.key(case, adapter)
