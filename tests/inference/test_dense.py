"""Tiled DeepMedic inference equals one whole-volume pass and agrees with training pairs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.dense import predict_volume, predict_volume_whole, tile_grid
from brainbench.models.deepmedic import DeepMedic, extract_training_pair

TOL = 1e-5


def randomised(model: DeepMedic, seed: int = 0) -> DeepMedic:
    """Random BN affine, PReLU slopes and biases, with BN running statistics measured in train mode.

    Measured statistics keep activations at the scale of a trained network (logits of a few units);
    arbitrary ones let them grow layer by layer until float32 round-off alone exceeds the tolerance.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.momentum = None  # running statistics = mean over the calibration batches
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.25 * torch.rand(m.num_parameters, generator=gen))
        for block in (model.normal_pathway[0], model.subsampled_pathway[0]):
            block.norm.bias.copy_(0.2 * torch.randn(model.in_channels, generator=gen))
        model.class_bias.copy_(torch.randn(model.n_classes, generator=gen))
        model.train()(torch.randn(4, model.in_channels, 25, 25, 25, generator=gen),
                      torch.randn(4, model.in_channels, 19, 19, 19, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> DeepMedic:
    torch.manual_seed(0)
    return randomised(DeepMedic(feature_maps=(3,) * 8, fc_feature_maps=(4, 4)))


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 23, 20, 17)).astype(np.float32)


@pytest.fixture(scope="module")
def whole(tiny, volume) -> np.ndarray:
    return predict_volume_whole(tiny, volume)


@pytest.mark.parametrize(("tile", "batch_size"), [(6, 3), ((9, 3, 12), 1), (45, 2)])
def test_tiled_equals_whole_volume(tiny, volume, whole, tile, batch_size):
    tiled = predict_volume(tiny, volume, tile_output=tile, batch_size=batch_size)
    assert tiled.shape == whole.shape == (5, *volume.shape[1:]) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=TOL)
    assert np.abs(tiled - whole).max() <= TOL


def test_tiled_equals_whole_volume_full_width():
    torch.manual_seed(1)
    model = randomised(DeepMedic(), seed=1)
    image = torch.randn(4, 26, 22, 20)
    whole = predict_volume_whole(model, image)
    tiled = predict_volume(model, image, tile_output=12, batch_size=4)
    assert tiled.shape == (5, 26, 22, 20)
    assert np.abs(tiled - whole).max() <= TOL


@pytest.mark.parametrize(("shape", "tile"), [((23, 20, 17), 6), ((160, 192, 160), 45),
                                             ((5, 3, 1), (9, 3, 3)), ((90, 108, 90), (45, 54, 90))])
def test_every_voxel_is_predicted_exactly_once(shape, tile):
    size, corners = tile_grid(shape, tile)
    limit = (tile,) * 3 if isinstance(tile, int) else tile
    assert all(s % 3 == 0 and s <= t for s, t in zip(size, limit))
    count = np.zeros(shape, np.int32)
    for corner in corners:
        assert all(c % s == 0 for c, s in zip(corner, size))
        count[tuple(slice(c, c + s) for c, s in zip(corner, size))] += 1
    assert np.all(count == 1)


def test_tile_output_must_be_a_multiple_of_the_factor(tiny, volume):
    with pytest.raises(BrainbenchConfigError, match="tile_output"):
        predict_volume(tiny, volume, tile_output=29)


FACTOR = 3
"""DeepMedic Original's subsampling factor (architectures.md §3.3)."""


def naive_probabilities(model: DeepMedic, image: np.ndarray, voxels, normal_shift: int = 0,
                        lattice_shift: int = 0) -> np.ndarray:
    """Independent reference: each voxel's own two inputs cut with numpy, one float64 pass each.

    For voxel v (per axis) the model predicts a single output voxel (O = 1) from

    * the normal input ``x[v - 8 … v + 8]`` (17 voxels: the receptive field of 8 valid 3³ convs);
    * the subsampled input ``x[l - 24], x[l - 21], … x[l + 24]`` (every 3rd voxel, no averaging,
      17 samples: ceil(1/3) + 16), where ``l = 3·floor(v / 3)`` is the voxel leading v's coarse
      block on the volume-anchored lattice (deepmedic.py's "Segment geometry"; the every-3rd-voxel
      sampling is spec §3.3).

    Everything outside the volume is zero. ``normal_shift`` / ``lattice_shift`` move the windows
    (for the guard test). Returns (n_classes, len(voxels)) probabilities.
    """
    net = copy.deepcopy(model).double().eval()
    pad = 9 * FACTOR + 1  # room for the guard test's shifted windows
    padded = np.pad(np.asarray(image, np.float64), [(0, 0)] + [(pad, pad)] * 3)
    out = []
    with torch.no_grad():
        for v in voxels:
            normal = tuple(slice(c + normal_shift + pad - 8, c + normal_shift + pad + 9)
                           for c in v)
            lattice = [FACTOR * (c // FACTOR) + lattice_shift for c in v]
            sub = tuple(slice(l + pad - 8 * FACTOR, l + pad + 8 * FACTOR + 1, FACTOR)
                        for l in lattice)
            high, low = padded[(slice(None), *normal)], padded[(slice(None), *sub)]
            assert high.shape[1:] == low.shape[1:] == (17, 17, 17)
            logits = net(torch.from_numpy(high)[None], torch.from_numpy(low)[None]).reshape(-1)
            out.append(torch.softmax(logits, dim=0).numpy())
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def small() -> DeepMedic:
    """The TINY_DEEPMEDIC widths of tests/helpers.py, randomised."""
    torch.manual_seed(2)
    return randomised(DeepMedic(feature_maps=(4, 4, 4, 4, 4, 4, 6, 6), fc_feature_maps=(8, 8)),
                      seed=2)


def test_inference_equals_a_naive_per_voxel_evaluation(small):
    """Every voxel of a volume smaller than the receptive field (all three lattice phases per axis,
    every window reaching past the border), against the tiled and whole-volume paths."""
    image = np.random.default_rng(5).normal(size=(4, 8, 7, 5)).astype(np.float32)
    voxels = np.argwhere(np.ones(image.shape[1:], bool))
    reference = naive_probabilities(small, image, voxels)
    assert len(np.unique(reference.argmax(axis=0))) >= 2 and reference.std(axis=1).max() > 0.05
    for probs in (predict_volume(small, image, tile_output=3, batch_size=4),
                  predict_volume(small, image, tile_output=(6, 9, 3)),
                  predict_volume_whole(small, image)):
        assert np.abs(probs[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]] - reference).max() <= TOL


@pytest.fixture(scope="module")
def sampled_voxels(volume) -> np.ndarray:
    """40 voxels of ``volume``: the 8 corners and 32 random ones (interior windows included)."""
    shape = np.array(volume.shape[1:])
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) * (shape - 1)
    return np.concatenate([corners, np.random.default_rng(6).integers(0, shape, (32, 3))])


@pytest.fixture(scope="module")
def sampled_reference(small, volume, sampled_voxels) -> np.ndarray:
    return naive_probabilities(small, volume, sampled_voxels)


def test_tiled_inference_equals_a_naive_evaluation_of_sampled_voxels(small, volume, sampled_voxels,
                                                                     sampled_reference):
    probs = predict_volume(small, volume, tile_output=6, batch_size=8)
    x, y, z = sampled_voxels.T
    assert np.abs(probs[:, x, y, z] - sampled_reference).max() <= TOL


@pytest.mark.parametrize(("normal_shift", "lattice_shift"), [(1, 0), (-1, 0), (0, 1), (0, -1), (0, 3)])
def test_naive_reference_notices_a_shifted_window(small, volume, sampled_voxels, sampled_reference,
                                                  normal_shift, lattice_shift):
    """Guards the two tests above: either pathway's window one voxel (or one coarse sample) off
    gives other probabilities, so an extraction offset error in inference cannot pass them."""
    moved = naive_probabilities(small, volume, sampled_voxels[:16], normal_shift, lattice_shift)
    assert np.abs(moved - sampled_reference[:, :16]).max() > 1e-2


def pair_probabilities(model: DeepMedic, volume: np.ndarray, center) -> np.ndarray:
    normal, subsampled = extract_training_pair(volume, center)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(normal)[None], torch.from_numpy(subsampled)[None])
    return torch.softmax(logits, dim=1)[0].numpy()


def block_in_volume(probs: np.ndarray, center, shape):
    """Pair-output and volume slices of the 9³ block around ``center`` that lie in the volume."""
    lo = [c - 4 for c in center]
    in_volume = tuple(slice(max(0, l), min(l + 9, n)) for l, n in zip(lo, shape))
    in_block = tuple(slice(s.start - l, s.stop - l) for s, l in zip(in_volume, lo))
    return probs[(slice(None), *in_block)], (slice(None), *in_volume)


@pytest.mark.parametrize("center", [(10, 10, 7), (1, 1, 1), (22, 19, 16), (13, 4, 1)])
def test_training_pair_reproduces_inference_on_the_lattice(tiny, volume, whole, center):
    # Block start c - 4 on a multiple of 3, i.e. c ≡ 1 (mod 3): the global inference lattice.
    assert all(c % 3 == 1 for c in center)
    pair, where = block_in_volume(pair_probabilities(tiny, volume, center), center, volume.shape[1:])
    assert np.abs(pair - whole[where]).max() <= TOL


def test_training_pair_off_the_lattice_samples_another_phase(tiny, volume, whole):
    # Guards the test above: the subsampled pathway does reach the output, and its phase matters.
    pair, where = block_in_volume(pair_probabilities(tiny, volume, (11, 10, 7)), (11, 10, 7),
                                  volume.shape[1:])
    assert np.abs(pair - whole[where]).max() > 1e-3


def test_caller_state_is_restored(tiny, volume):
    model = DeepMedic(feature_maps=(2,) * 8, fc_feature_maps=(3, 3)).train()
    as_tensor = predict_volume(model, torch.from_numpy(volume), tile_output=9)
    np.testing.assert_array_equal(as_tensor, predict_volume(model, volume, tile_output=9))
    assert model.training
    assert all(p.is_contiguous() and not p.is_inference() for p in model.parameters())
    normal, subsampled = extract_training_pair(volume, (10, 10, 8))
    model(torch.from_numpy(normal)[None], torch.from_numpy(subsampled)[None]).sum().backward()
