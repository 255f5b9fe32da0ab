"""Dou et al. 2016 CMB cascade: parameter counts from the released weight shapes (spec §5.2-5.3),
the score-volume geometry (§5.4), dense-vs-patch equivalence, the training extractors' centre
convention against the score volume, candidate extraction and CMB centres."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainbench.errors import BrainbenchConfigError
from brainbench.models.dou import (
    CandidatePatches,
    DouCascade,
    DouDiscriminator,
    DouScreeningFCN,
    ScreeningPatches,
    find_candidates,
    lesion_centres,
    screening_scores,
)

TINY_SCREEN = (3, 4, 4, 5)


def n_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_screening_parameters_match_the_spec_table():
    layers = [5 * 5 * 3 * 1 * 64 + 64, 27 * 64 * 64 + 64, 9 * 64 * 64 + 64, 512 * 150 + 150, 150 * 2 + 2]
    assert layers == [4_864, 110_656, 36_928, 76_950, 302]  # spec §5.2, typed in
    assert n_parameters(DouScreeningFCN()) == sum(layers) == 229_700
    assert n_parameters(DouScreeningFCN(in_channels=3)) == 229_700 + 5 * 5 * 3 * 2 * 64


def test_discriminator_parameters_match_the_released_weight_shapes():
    # W_L0 (32, 5, 1, 7, 7), W_L1 (64, 3, 32, 5, 5), W_L2 (2304, 500), W_L3 (500, 100), W_L4 (100, 2), plus biases
    layers = [32 * 5 * 7 * 7 + 32, 64 * 3 * 32 * 5 * 5 + 64, 2304 * 500 + 500, 500 * 100 + 100, 100 * 2 + 2]
    assert layers == [7_872, 153_664, 1_152_500, 50_100, 202]  # spec §5.3, typed in
    net = DouDiscriminator()
    assert n_parameters(net) == sum(layers) == 1_364_338
    assert net.features[0].weight.shape == (32, 1, 7, 7, 5)  # x, y, z: Theano's (5, 7, 7) is z first
    assert net.classifier[1].in_features == 64 * 3 * 3 * 4
    assert net(torch.zeros(3, 1, 20, 20, 16)).shape == (3, 2)


@pytest.mark.parametrize("size", [(16, 16, 10), (17, 21, 11), (64, 48, 20), (512, 512, 150)])
def test_output_size_follows_the_spec_formula(size):
    x, y, z = size
    assert DouScreeningFCN.output_size(size) == ((x - 4) // 2 - 5, (y - 4) // 2 - 5, (z - 2) // 2 - 3)


def test_output_size_hand_values_and_real_forwards():
    assert DouScreeningFCN.output_size((16, 16, 10)) == (1, 1, 1)
    assert DouScreeningFCN.output_size((512, 512, 150)) == (249, 249, 71)  # 249 seen in andreaccioly/3DCNN-MRI
    assert DouScreeningFCN()(torch.zeros(2, 1, 16, 16, 10)).shape == (2, 2, 1, 1, 1)
    tiny = DouScreeningFCN(maps=(1, 1, 1, 1))
    assert tiny(torch.zeros(1, 1, 64, 64, 20)).shape[2:] == (25, 25, 6)
    assert tiny(torch.zeros(1, 1, 512, 512, 10)).shape[2:] == (249, 249, 1)
    with pytest.raises(BrainbenchConfigError, match="input_size"):
        DouScreeningFCN.output_size((15, 16, 10))


def test_dense_scores_equal_patchwise_scores():
    """Score voxel (i, j, k) of a volume is the net on the 16×16×10 patch starting at (2i, 2j, 2k)."""
    torch.manual_seed(0)
    net = DouScreeningFCN(maps=TINY_SCREEN).eval()
    volume = torch.randn(1, 1, 27, 24, 17)
    with torch.no_grad():
        dense = net(volume)[0]
        nx, ny, nz = dense.shape[1:]
        patches = torch.cat([volume[..., 2 * i:2 * i + 16, 2 * j:2 * j + 16, 2 * k:2 * k + 10]
                             for i in range(nx) for j in range(ny) for k in range(nz)])
        patchwise = net(patches)[:, :, 0, 0, 0].T.reshape(2, nx, ny, nz)
    assert (nx, ny, nz) == (6, 5, 4)
    torch.testing.assert_close(dense, patchwise, rtol=1e-5, atol=1e-5)


def test_screening_scores_score_the_training_windows_of_even_voxels():
    """Score voxel v of the whole-image helper (tiled, zero-padded) is the net on the ScreeningPatches
    window of image voxel 2v, whose target is that voxel's label: training and inference agree."""
    torch.manual_seed(1)
    net = DouScreeningFCN(maps=TINY_SCREEN)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 21, 18, 11)).astype(np.float32)
    label = rng.integers(0, 2, size=(21, 18, 11)).astype(np.int8)
    scores = screening_scores(net, image, tile=(4, 3, 2))
    assert scores.shape == (11, 9, 6)
    assert net.training  # restored
    extract = ScreeningPatches(flip_probability=0.0)
    windows, targets = [], []
    for v in np.ndindex(*scores.shape):
        (patch,), target = extract(image, label, tuple(2 * np.array(v)), rng, augment=False)
        windows.append(patch)
        targets.append(target)
    assert windows[0].shape == (1, 16, 16, 10) and targets[0].shape == (1, 1, 1) and targets[0].dtype == np.int64
    np.testing.assert_array_equal(np.array(targets).reshape(scores.shape), label[::2, ::2, ::2])
    with torch.no_grad():
        logits = net.eval()(torch.from_numpy(np.stack(windows)))[:, :, 0, 0, 0]
    expected = torch.softmax(logits.double(), dim=1)[:, 1].numpy().reshape(scores.shape)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_screening_window_position_by_hand():
    image = np.arange(30 * 30 * 20, dtype=np.float32).reshape(1, 30, 30, 20)
    label = np.zeros((30, 30, 20), np.int8)
    label[12, 13, 9] = 1
    (patch,), target = ScreeningPatches(flip_probability=0.0)(image, label, (12, 13, 9), np.random.default_rng(0))
    np.testing.assert_array_equal(patch, image[:, 5:21, 6:22, 5:15])  # c - (7, 7, 4) … c + (8, 8, 5)
    assert target.tolist() == [[[1]]]


def test_candidate_patches_mean_subtracted_window_and_scalar_target():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 30, 30, 24)).astype(np.float32)
    label = np.zeros((30, 30, 24), np.int8)
    label[14, 15, 11] = 1
    extract = CandidatePatches(jitter=1, flip_probability=0.0)
    (patch,), target = extract(image, label, (14, 15, 11), rng, augment=False)
    window = image[:, 5:25, 6:26, 4:20]  # c - (9, 9, 7) … c + (10, 10, 8)
    np.testing.assert_allclose(patch, window - window.mean(), atol=1e-5)
    assert patch.shape == (2, 20, 20, 16) and target.shape == () and target.dtype == np.int64 and target == 1
    shifted = {(dx, dy, dz): image[:, 5 + dx:25 + dx, 6 + dy:26 + dy, 4 + dz:20 + dz]
               for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)}
    for _ in range(5):
        (patch,), target = extract(image, label, (14, 15, 11), rng)
        assert target == 1  # the target is the candidate's, not the moved window's
        assert any(np.allclose(patch, w - w.mean(), atol=1e-5) for w in shifted.values())
    (plain,), _ = CandidatePatches(subtract_mean=False)(image, label, (14, 15, 11), rng, augment=False)
    np.testing.assert_array_equal(plain, window)
    # reflected along every axis: the window of the reflected volume at the mirrored centre (15, 14, 12)
    (flipped,), target = CandidatePatches(jitter=0, flip_probability=1.0, subtract_mean=False)(
        image, label, (14, 15, 11), rng)
    np.testing.assert_array_equal(flipped, image[:, ::-1, ::-1, ::-1][:, 6:26, 5:25, 5:21])
    assert target == 1


def test_find_candidates_on_a_hand_built_score_volume():
    scores = np.zeros((10, 10, 10), np.float32)
    scores[2, 2, 2] = 0.9
    scores[2, 3, 2] = 0.8  # beside a higher score: not a local maximum
    scores[7, 7, 7] = 0.95
    scores[7, 7, 9] = 0.7  # a local maximum 4 image voxels from (14, 14, 14)
    scores[5, 0, 0] = 0.3  # below the threshold
    scores[0, 8, 0] = scores[0, 9, 0] = 0.6  # a plateau
    centres, values = find_candidates(scores, threshold=0.5, nms_radius=5)
    assert centres.tolist() == [[14, 14, 14], [4, 4, 4], [0, 16, 0]]
    np.testing.assert_allclose(values, [0.95, 0.9, 0.6])
    centres, _ = find_candidates(scores, threshold=0.5, nms_radius=3)
    assert centres.tolist() == [[14, 14, 14], [4, 4, 4], [14, 14, 18], [0, 16, 0]]
    centres, _ = find_candidates(scores, threshold=0.5, nms_radius=0)
    assert centres.tolist() == [[14, 14, 14], [4, 4, 4], [14, 14, 18], [0, 16, 0], [0, 18, 0]]
    assert find_candidates(scores, threshold=0.99, nms_radius=5)[0].shape == (0, 3)


def test_lesion_centres_one_per_component_on_the_component():
    label = np.zeros((20, 20, 12), np.int8)
    grid = np.indices(label.shape)
    label[((grid - np.array([5, 5, 4])[:, None, None, None]) ** 2).sum(0) <= 4] = 1  # sphere
    label[14:17, 3:6, 8:11] = 1  # cube
    label[10:19, 12, 2] = 1  # an L-shaped curve: its centre of mass is off it
    label[10, 12:19, 2] = 1
    centres = {tuple(c) for c in lesion_centres(label).tolist()}
    l_voxels = np.argwhere(label[:, :, 2] > 0)
    mass = l_voxels[l_voxels[:, 1] >= 12].mean(axis=0)
    assert (5, 5, 4) in centres and (15, 4, 9) in centres and len(centres) == 3
    (bent,) = centres - {(5, 5, 4), (15, 4, 9)}
    assert label[bent] == 1 and np.linalg.norm(np.array(bent[:2]) - mass) < 2.5


def test_cascade_holds_both_stages_and_checks_its_settings():
    net = DouCascade(2, screening={"maps": TINY_SCREEN}, discrimination={"maps": (2, 3), "hidden": (4, 5)})
    assert net(torch.zeros(1, 2, 18, 16, 12)).shape == (1, 2, 2, 1, 2)  # forward: the screening logits
    assert net.discrimination(torch.zeros(1, 2, 20, 20, 16)).shape == (1, 2)
    assert (net.screening_threshold, net.nms_radius, net.stage2_threshold) == (0.5, 10.0, 0.5)
    with pytest.raises(BrainbenchConfigError, match="screening_threshold"):
        DouCascade(screening_threshold=1.5)
    with pytest.raises(BrainbenchConfigError, match="nms_radius"):
        DouCascade(nms_radius=-1)
    with pytest.raises(BrainbenchConfigError, match="screening maps"):
        DouScreeningFCN(maps=(64, 64, 150))
