"""Tiled DeepMedic inference equals one whole-volume pass and agrees with training pairs."""

from __future__ import annotations

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
