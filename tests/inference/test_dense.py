"""Tiled DeepMedic and DeepMedic+ inference equals one whole-volume pass, agrees with training pairs
and with a naive per-voxel evaluation, and sizes its tiles to a memory budget."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.dense import (
    auto_tile,
    predict_volume,
    predict_volume_whole,
    tile_grid,
    tile_peak_bytes,
)
from brainbench.inference.region import SCRATCH_HEADROOM
from brainbench.models.deepmedic import DeepMedic, DeepMedicPlus, extract_segment_pair, extract_training_pair
from tests.helpers import calibrated_deepmedic, resident_peak

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny() -> DeepMedic:
    torch.manual_seed(0)
    return calibrated_deepmedic(DeepMedic(feature_maps=(3,) * 8, fc_feature_maps=(4, 4)))


@pytest.fixture(scope="module")
def tiny_plus() -> DeepMedicPlus:
    torch.manual_seed(0)
    return calibrated_deepmedic(DeepMedicPlus(feature_maps=(2, 2, 3, 3, 3, 3, 4, 4), fc_feature_maps=(10, 10)))


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 23, 20, 17)).astype(np.float32)


@pytest.fixture(scope="module")
def whole(tiny, volume) -> np.ndarray:
    return predict_volume_whole(tiny, volume)


@pytest.fixture(scope="module")
def whole_plus(tiny_plus, volume) -> np.ndarray:
    return predict_volume_whole(tiny_plus, volume)


@pytest.mark.parametrize("name", ["tiny", "tiny_plus"])
@pytest.mark.parametrize(("tile", "batch_size"), [(6, 3), ((9, 3, 12), 1), (45, 2), (3, 8)])
def test_tiled_equals_whole_volume(request, volume, name, tile, batch_size):
    """DeepMedic+: a tile takes its FC1 context from its neighbours' features, the whole pass
    mirrors only at the volume border (tiles of 3 put every voxel next to a tile border)."""
    model, whole = request.getfixturevalue(name), request.getfixturevalue(name.replace("tiny", "whole"))
    tiled = predict_volume(model, volume, tile_output=tile, batch_size=batch_size)
    assert tiled.shape == whole.shape == (5, *volume.shape[1:]) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=TOL)
    assert np.abs(tiled - whole).max() <= TOL


@pytest.mark.parametrize("cls", [DeepMedic, DeepMedicPlus])
def test_tiled_equals_whole_volume_full_width(cls):
    torch.manual_seed(1)
    model = calibrated_deepmedic(cls(), seed=1)
    image = torch.randn(4, 26, 22, 20)
    whole = predict_volume_whole(model, image)
    tiled = predict_volume(model, image, tile_output=12, batch_size=4)
    assert tiled.shape == (5, 26, 22, 20)
    assert np.abs(tiled - whole).max() <= TOL


@pytest.mark.parametrize(("shape", "tile"), [((23, 20, 17), 6), ((160, 192, 160), 45),
                                             ((5, 3, 1), (9, 3, 3)), ((90, 108, 90), (45, 54, 90)),
                                             ((131, 160, 130), (132, 162, 132))])
def test_every_voxel_is_predicted_exactly_once(shape, tile):
    """Tiles are multiples of 3 no larger than asked, except along an axis one tile covers,
    where the tile is the axis (no rounding waste: 131 voxels, not 132)."""
    size, corners = tile_grid(shape, tile)
    limit = (tile,) * 3 if isinstance(tile, int) else tile
    assert all((s % 3 == 0 or s == e) and s <= t for s, t, e in zip(size, limit, shape))
    if shape == (131, 160, 130):
        assert size == shape
    count = np.zeros(shape, np.int32)
    for corner in corners:
        assert all(c % s == 0 for c, s in zip(corner, size))
        count[tuple(slice(c, c + s) for c, s in zip(corner, size))] += 1
    assert np.all(count == 1)


def test_tile_output_must_be_auto_or_multiples_of_the_factor(tiny, volume):
    with pytest.raises(BrainbenchConfigError, match="tile_output"):
        predict_volume(tiny, volume, tile_output=29)
    with pytest.raises(BrainbenchConfigError, match="tile_output"):
        predict_volume(tiny, volume, tile_output="whole")


FACTOR = 3
"""DeepMedic Original's subsampling factor (architectures.md §3.3)."""


def mirrored(p: int, extent: int) -> int:
    """The volume voxel whose features DeepMedic+'s FC1 sees at position p: p itself inside the
    volume, its mirror image with the edge repeated outside (-1 -> 0, extent -> extent - 1; spec
    §3.4, the reference's padImageWithMirroring)."""
    return -1 - p if p < 0 else 2 * extent - 1 - p if p >= extent else p


def naive_probabilities(model: DeepMedic, image: np.ndarray, voxels, normal_shift: int = 0,
                        lattice_shift: int = 0) -> np.ndarray:
    """Independent reference: each voxel's own inputs cut with numpy, in float64.

    The trunk (both conv pathways, upsampled and concatenated) at a single voxel q (O = 1) reads

    * the normal input ``x[q - 8 … q + 8]`` (17 voxels: the receptive field of 8 valid 3³ convs);
    * the subsampled input ``x[l - 24], x[l - 21], … x[l + 24]`` (every 3rd voxel, no averaging,
      17 samples: ceil(1/3) + 16), where ``l = 3·floor(q / 3)`` is the voxel leading q's coarse
      block on the volume-anchored lattice (deepmedic.py's "Segment geometry"; the every-3rd-voxel
      sampling is spec §3.3).

    Voxel v's logits are the FC pathway on the trunk features of its (2m+1)³ neighbourhood
    (m = ``fc_margin``: 0 for DeepMedic, 1 for DeepMedic+'s 3³ FC1), each neighbour q computed
    alone at :func:`mirrored` q. Everything outside the volume is zero. ``normal_shift`` /
    ``lattice_shift`` move the windows (for the guard test). Returns (n_classes, len(voxels)).
    """
    net = copy.deepcopy(model).double().eval()
    m, shape = net.fc_margin, image.shape[1:]
    pad = 9 * FACTOR + 1  # room for the guard test's shifted windows
    padded = np.pad(np.asarray(image, np.float64), [(0, 0)] + [(pad, pad)] * 3)
    offsets = list(itertools.product(range(-m, m + 1), repeat=3))
    positions = sorted({tuple(mirrored(c + d, e) for c, d, e in zip(v, offset, shape))
                        for v in map(tuple, voxels) for offset in offsets})
    highs, lows = [], []
    for q in positions:
        normal = tuple(slice(c + normal_shift + pad - 8, c + normal_shift + pad + 9) for c in q)
        lattice = [FACTOR * (c // FACTOR) + lattice_shift for c in q]
        sub = tuple(slice(l + pad - 8 * FACTOR, l + pad + 8 * FACTOR + 1, FACTOR) for l in lattice)
        highs.append(padded[(slice(None), *normal)])
        lows.append(padded[(slice(None), *sub)])
    assert highs[0].shape[1:] == lows[0].shape[1:] == (17, 17, 17)
    with torch.no_grad():
        features = torch.cat([net.trunk(torch.from_numpy(np.stack(highs[i:i + 8])),
                                        torch.from_numpy(np.stack(lows[i:i + 8])))
                              for i in range(0, len(positions), 8)])
        at = dict(zip(positions, features[:, :, 0, 0, 0]))
        side = 2 * m + 1
        blocks = torch.stack([
            torch.stack([at[tuple(mirrored(c + d, e) for c, d, e in zip(v, offset, shape))]
                         for offset in offsets], dim=-1).reshape(-1, side, side, side)
            for v in map(tuple, voxels)])
        logits = net.head(blocks).reshape(len(blocks), -1)
    return torch.softmax(logits, dim=1).numpy().T


@pytest.fixture(scope="module")
def small() -> DeepMedic:
    """The TINY_DEEPMEDIC widths of tests/helpers.py, randomised."""
    torch.manual_seed(2)
    return calibrated_deepmedic(DeepMedic(feature_maps=(4, 4, 4, 4, 4, 4, 6, 6), fc_feature_maps=(8, 8)),
                      seed=2)


@pytest.fixture(scope="module")
def small_plus() -> DeepMedicPlus:
    """The TINY_DEEPMEDIC widths as a DeepMedic+, randomised."""
    torch.manual_seed(2)
    return calibrated_deepmedic(DeepMedicPlus(feature_maps=(4, 4, 4, 4, 4, 4, 6, 6), fc_feature_maps=(8, 8)),
                      seed=2)


@pytest.mark.parametrize("name", ["small", "small_plus"])
def test_inference_equals_a_naive_per_voxel_evaluation(request, name):
    """Every voxel of a volume smaller than the receptive field (all three lattice phases per axis,
    every window reaching past the border, DeepMedic+'s FC1 mirrored at every face), against the
    tiled, auto-tiled and whole-volume paths."""
    model = request.getfixturevalue(name)
    image = np.random.default_rng(5).normal(size=(4, 8, 7, 5)).astype(np.float32)
    voxels = np.argwhere(np.ones(image.shape[1:], bool))
    reference = naive_probabilities(model, image, voxels)
    assert len(np.unique(reference.argmax(axis=0))) >= 2 and reference.std(axis=1).max() > 0.05
    for probs in (predict_volume(model, image, tile_output=3, batch_size=4),
                  predict_volume(model, image, tile_output=(6, 9, 3)),
                  predict_volume(model, image),
                  predict_volume_whole(model, image)):
        assert np.abs(probs[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]] - reference).max() <= TOL


def test_naive_reference_notices_a_border_without_mirror(small_plus):
    """Guards the test above for DeepMedic+: zero FC context beyond the volume, instead of the
    mirrored features, changes the border voxels' probabilities."""
    image = np.random.default_rng(5).normal(size=(4, 8, 7, 5)).astype(np.float32)
    voxels = np.array([[0, 3, 2], [7, 3, 2], [3, 0, 4], [3, 6, 0]])
    reference = naive_probabilities(small_plus, image, voxels)
    net = copy.deepcopy(small_plus).double().eval()
    normal, subsampled = extract_segment_pair(torch.from_numpy(image).double(), (0, 0, 0), (8, 7, 5))
    with torch.no_grad():
        features = net.trunk(normal[None], subsampled[None])
        zero_padded = torch.softmax(net.head(nn.functional.pad(features, (1,) * 6)), dim=1)[0].numpy()
    x, y, z = voxels.T
    assert np.abs(zero_padded[:, x, y, z] - reference).max(axis=0).min() > 1e-3


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


def test_plus_training_pair_mirrors_at_its_own_border(tiny_plus, volume, whole_plus):
    """A DeepMedic+ training pair mirror-pads FC1's input at the pair's border, as the reference
    trains: its inner 7³ reproduces inference on the lattice, its border voxels do not."""
    center = (10, 10, 7)
    pair, where = block_in_volume(pair_probabilities(tiny_plus, volume, center), center, volume.shape[1:])
    assert pair.shape[1:] == (9, 9, 9)
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    assert np.abs(pair[inner] - whole_plus[where][inner]).max() <= TOL
    assert np.abs(pair - whole_plus[where]).max() > 1e-3


def test_auto_tile_fits_the_budget_and_keeps_exactness(small_plus, volume):
    net = small_plus.folded_for_inference()
    shape = volume.shape[1:]
    fixed = (4 + 5) * int(np.prod(shape)) * 4  # the image and its probabilities, held by the caller
    whole = predict_volume_whole(small_plus, volume)
    one_tile = tile_peak_bytes(net, shape)
    assert auto_tile(net, shape, 10 * one_tile) == shape  # the whole volume, no rounding
    seen = []
    for budget in (SCRATCH_HEADROOM * one_tile - 1, one_tile / 2, one_tile / 3):
        tile = auto_tile(net, shape, budget)
        assert SCRATCH_HEADROOM * tile_peak_bytes(net, tile) <= budget and tile not in seen
        seen.append(tile)
        probs = predict_volume(small_plus, volume, memory_budget=int(budget) + fixed)
        assert np.abs(probs - whole).max() <= TOL
    assert seen[0] != shape and all(t % 3 == 0 or t == e for t, e in zip(seen[-1], shape))


TILED_RUN = """
from brainbench.models.deepmedic import DeepMedicPlus
from brainbench.inference.dense import auto_tile, predict_volume, predict_volume_whole

model = DeepMedicPlus(feature_maps=(4, 4, 4, 4, 4, 4, 6, 6), fc_feature_maps=(8, 8)).eval()
volume = np.random.default_rng(0).normal(size=(4, 60, 60, 60)).astype(np.float32)

def run():
    return predict_volume(model, volume, memory_budget=budget, batch_size=2)

def report(probs):
    fixed = (4 + 5) * 60 ** 3 * 4
    tile = auto_tile(model.folded_for_inference(), (60, 60, 60), budget - fixed, 2)
    return {"tile": tile, "error": float(np.abs(probs - predict_volume_whole(model, volume)).max())}
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_auto_tile_keeps_the_resident_memory_within_the_budget():
    """Measured, not estimated: the resident-size peak of a tiled run (a fresh process in which
    glibc returns every freed block of 64 KiB or more at once) stays within the budget, which the
    whole volume in one tile would exceed."""
    budget = 40 * 2 ** 20
    net = DeepMedicPlus(feature_maps=(4, 4, 4, 4, 4, 4, 6, 6), fc_feature_maps=(8, 8)).folded_for_inference()
    assert tile_peak_bytes(net, (60, 60, 60), 2) > budget
    result = resident_peak(TILED_RUN, budget)
    assert tuple(result["tile"]) != (60, 60, 60) and result["error"] <= TOL
    assert 0 < result["peak"] <= budget


def test_caller_state_is_restored(tiny, volume):
    model = DeepMedic(feature_maps=(2,) * 8, fc_feature_maps=(3, 3)).train()
    as_tensor = predict_volume(model, torch.from_numpy(volume), tile_output=9)
    np.testing.assert_array_equal(as_tensor, predict_volume(model, volume, tile_output=9))
    assert model.training
    assert all(p.is_contiguous() and not p.is_inference() for p in model.parameters())
    normal, subsampled = extract_training_pair(volume, (10, 10, 8))
    model(torch.from_numpy(normal)[None], torch.from_numpy(subsampled)[None]).sum().backward()
