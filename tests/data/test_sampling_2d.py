"""2D patch sampling from real cached cases: class proportions, determinism, windows, targets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from brainbench.challenges import ChallengeAdapter
from brainbench.data.cache import PreprocessedCache
from brainbench.data.preprocess import ZScoreInBrain
from brainbench.data.sampling import BrainUniformSampler, ClassFrequencySampler, label_frequencies
from brainbench.models.patches import AxialPatches

DRAWS = 4000


@pytest.fixture
def cases(brats_tree, tmp_path):
    adapter = ChallengeAdapter("brats2020")
    cache = PreprocessedCache(tmp_path / "cache", ZScoreInBrain())
    return [cache.load(case, adapter) for case in adapter.discover(brats_tree)]


def _classes_of(sampler, case, seed: int, draws: int = DRAWS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.asarray(case.label)
    return np.array([label[sampler.centre(case, rng)] for _ in range(draws)])


def _natural(case) -> np.ndarray:
    label = np.asarray(case.label)[np.asarray(case.brain) | (np.asarray(case.label) > 0)]
    return np.bincount(label, minlength=4) / label.size


def test_equiprobable_sampler_draws_every_class_equally(cases):
    classes = _classes_of(ClassFrequencySampler(exponent=0.0), cases[0], seed=1)
    proportions = np.bincount(classes, minlength=4) / classes.size
    assert proportions == pytest.approx([0.25] * 4, abs=0.03)
    assert _natural(cases[0])[1] < 0.002  # necrosis is rare in the case, frequent in the patches


def test_natural_sampler_follows_brain_label_distribution(cases):
    classes = _classes_of(ClassFrequencySampler(exponent=1.0), cases[0], seed=2)
    proportions = np.bincount(classes, minlength=4) / classes.size
    assert proportions == pytest.approx(_natural(cases[0]), abs=0.02)


def test_brain_uniform_sampler_stays_in_brain_and_is_uniform(cases):
    case, rng = cases[0], np.random.default_rng(3)
    centres = np.array([BrainUniformSampler().centre(case, rng) for _ in range(DRAWS)])
    brain = np.asarray(case.brain)
    assert brain[tuple(centres.T)].all()
    x_counts = np.bincount(centres[:, 0], minlength=brain.shape[0])[brain.any(axis=(1, 2))]
    assert x_counts.min() > 0.6 * x_counts.mean()  # every brain column is drawn about as often


@pytest.mark.parametrize("sampler_type", [lambda: ClassFrequencySampler(0.0), lambda: ClassFrequencySampler(1.0),
                                          BrainUniformSampler])
def test_samplers_are_deterministic_per_seed(cases, sampler_type):
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sampler_type().centre(cases[1], rng) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_label_frequencies_pool_brain_voxels_with_one_extra_count(cases):
    frequencies = label_frequencies(cases, 4)
    counts = 1 + sum(np.bincount(np.asarray(c.label)[np.asarray(c.brain) | (np.asarray(c.label) > 0)], minlength=4)
                     for c in cases)
    assert frequencies == pytest.approx(counts / counts.sum())
    assert frequencies.sum() == pytest.approx(1.0)


def test_axial_patch_matches_slice_and_zero_pads_borders(cases):
    case = cases[0]
    image, label = np.asarray(case.image), np.asarray(case.label)
    patches = AxialPatches(margin=(16, 16), output_size=1)
    (window,), target = patches(case.image, case.label, (12, 12, 10), np.random.default_rng(0))
    assert window.shape == (4, 33, 33) and target.shape == (1, 1) and target.dtype == np.int64
    assert target[0, 0] == label[12, 12, 10]
    np.testing.assert_array_equal(window[:, 4:28, 4:28], image[:, :, :, 10])  # the 24×24 slice at offset 16 - 12
    assert not window[:, :4].any() and not window[:, :, 28:].any()
    (corner,), _ = patches(case.image, case.label, (0, 0, 10), np.random.default_rng(0))
    np.testing.assert_array_equal(corner[:, 16:, 16:], image[:, :17, :17, 10])
    assert not corner[:, :16].any()


def test_cascade_windows_put_the_centre_where_the_models_expect_it(cases):
    case = cases[0]
    image = np.asarray(case.image)
    for margin in [(32, 32), (28, 27), (26, 26)]:
        (window,), _ = AxialPatches(margin=margin)(case.image, case.label, (12, 11, 9), np.random.default_rng(0))
        assert window.shape == (4, sum(margin) + 1, sum(margin) + 1)
        np.testing.assert_array_equal(window[:, margin[0], margin[0]], image[:, 12, 11, 9])


def test_scalar_target_and_map_target(cases):
    case = cases[0]
    centre = (12, 12, 10)
    _, scalar = AxialPatches(output_size=None)(case.image, case.label, centre, np.random.default_rng(0))
    _, block = AxialPatches(margin=(18, 18), output_size=5)(case.image, case.label, centre, np.random.default_rng(0))
    assert scalar.shape == () and scalar == np.asarray(case.label)[centre]
    np.testing.assert_array_equal(block, np.asarray(case.label)[10:15, 10:15, 10])


def test_rotation_turns_window_and_target_together(cases):
    case = cases[0]
    centre = (11, 13, 10)
    (plain,), plain_target = AxialPatches(margin=(18, 18), output_size=5)(case.image, case.label, centre,
                                                                          np.random.default_rng(0))
    seen = set()
    for seed in range(24):
        (window,), target = AxialPatches(margin=(18, 18), output_size=5, rotate_90=True)(
            case.image, case.label, centre, np.random.default_rng(seed))
        turns = [k for k in range(4) if np.array_equal(window, np.rot90(plain, k, axes=(-2, -1)))]
        assert len(turns) == 1
        np.testing.assert_array_equal(target, np.rot90(plain_target, turns[0]))
        seen.add(turns[0])
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("margin", [(28, 27), (16, 16)])
def test_rotated_patch_is_the_patch_of_the_rotated_volume(cases, margin):
    """Rotation turns the volume about the centre voxel: asymmetric windows (LocalCascade's 56×56) and
    even targets keep the predicted pixel where the model expects it."""
    case = cases[0]
    image, label = np.asarray(case.image), np.asarray(case.label)
    centre = (11, 13, 10)
    marker = np.zeros(label.shape, bool)
    marker[centre] = True
    plain = AxialPatches(margin=margin, output_size=4)
    candidates = []
    for k in range(4):
        rotated_centre = tuple(int(i) for i in np.argwhere(np.rot90(marker, k, axes=(0, 1)))[0])
        candidates.append(plain(np.rot90(image, k, axes=(1, 2)), np.rot90(label, k, axes=(0, 1)), rotated_centre,
                                np.random.default_rng(0)))
    seen = set()
    for seed in range(24):
        (window,), target = AxialPatches(margin=margin, output_size=4, rotate_90=True)(
            image, label, centre, np.random.default_rng(seed))
        turns = [k for k, ((w,), t) in enumerate(candidates) if np.array_equal(window, w) and np.array_equal(target, t)]
        assert len(turns) == 1
        seen.add(turns[0])
    assert seen == {0, 1, 2, 3}


def _unequal_cases(cases):
    """Three cases whose class counts differ: the tumour as written, a large oedema block (classes 1
    and 3 absent), and a small enhancing block only."""
    first, second, third = cases
    oedema = np.asarray(second.label).copy()
    oedema[4:16, 4:16, 4:12] = 2
    enhancing = np.zeros_like(np.asarray(third.label))
    enhancing[10:12, 10:12, 9:11] = 3
    return [first, replace(second, label=oedema), replace(third, label=enhancing)]


@pytest.mark.parametrize("exponent", [0.0, 1.0])
def test_dataset_scope_weighs_classes_over_the_pooled_training_set(cases, exponent):
    cases = _unequal_cases(cases)
    # Naive: list every brain voxel of every case with its class; voxel v of class c has probability
    # N_c ** exponent / sum_k N_k ** exponent / N_c, N_c its class's voxels over all cases together.
    case_of, class_of = [], []
    for i, case in enumerate(cases):
        label = np.asarray(case.label)
        in_brain = np.asarray(case.brain) | (label > 0)
        case_of += [i] * int(in_brain.sum())
        class_of += list(label[in_brain])
    case_of, class_of = np.array(case_of), np.array(class_of, dtype=np.int64)
    totals = np.bincount(class_of, minlength=4).astype(float)
    class_mass = totals ** exponent / (totals ** exponent).sum()
    voxel_p = class_mass[class_of] / totals[class_of]
    expected = np.zeros((3, 4))
    np.add.at(expected, (case_of, class_of), voxel_p)

    sampler, rng = ClassFrequencySampler(exponent=exponent, scope="dataset"), np.random.default_rng(4)
    observed = np.zeros((3, 4))
    for _ in range(DRAWS):
        case, centre = sampler.draw(cases, rng)
        index = next(i for i, c in enumerate(cases) if c is case)
        assert np.asarray(case.brain)[centre] or np.asarray(case.label)[centre] > 0
        observed[index, np.asarray(case.label)[centre]] += 1
    assert observed / DRAWS == pytest.approx(expected, abs=0.025)
    if exponent == 0.0:  # per case, necrosis (in one case of three) would get 1/3 · 1/4
        assert observed[:, 1].sum() / DRAWS == pytest.approx(0.25, abs=0.025)


def test_case_scope_weighs_classes_within_each_uniformly_drawn_case(cases):
    cases = _unequal_cases(cases)
    sampler, rng = ClassFrequencySampler(exponent=0.0), np.random.default_rng(6)
    observed = np.zeros((3, 4))
    for _ in range(DRAWS):
        case, centre = sampler.draw(cases, rng)
        observed[next(i for i, c in enumerate(cases) if c is case), np.asarray(case.label)[centre]] += 1
    present = [np.unique(np.asarray(c.label)[np.asarray(c.brain) | (np.asarray(c.label) > 0)]) for c in cases]
    expected = np.zeros((3, 4))
    for i, classes in enumerate(present):
        expected[i, classes] = 1 / 3 / len(classes)
    assert observed / DRAWS == pytest.approx(expected, abs=0.025)
