"""2D whole-volume strategies: dense equals patch-wise, brain-box restriction, the approximate FCN."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.patchwise import (
    brain_region,
    dense,
    fcn_approximate,
    measure_disagreement,
    patchwise,
)
from brainbench.models.havaei import InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN, TwoPathCNN
from brainbench.models.pereira import PereiraCNN

TOL = 1e-5
TINY_HAVAEI = dict(local_maps=(3, 4), global_maps=5)
TINY_PEREIRA = dict(block_maps=(6, 8), fc_units=(8, 8))


def randomised(model: nn.Module, seed: int = 0, gain: float = 1.0, bias: float = 0.5) -> nn.Module:
    """Weights of std gain/sqrt(fan-in), biases of std ``bias``: logits of a few units.

    The models' own U(±0.005) initialisation gives near-uniform probabilities, which would make
    any strategy look equal to the reference.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(gain * torch.randn(m.weight.shape, generator=gen)
                               / m.weight[0].numel() ** 0.5)
                m.bias.copy_(bias * torch.randn(m.bias.shape, generator=gen))
    return model


def pereira(seed: int = 0) -> PereiraCNN:
    """Tiny Pereira; the LReLU halves the signal per layer, which the gain makes up for."""
    return randomised(PereiraCNN(**TINY_PEREIRA), seed=seed, gain=1.4, bias=0.1)


def assert_informative(probs: np.ndarray) -> None:
    """Labels and probabilities vary over the brain: an equality test on them can fail."""
    brain = probs.max(axis=0) < 1
    assert len(np.unique(probs.argmax(axis=0)[brain])) >= 2
    assert probs[:, brain].std(axis=1).max() > 0.05


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """(4, 21, 18, 4), zero background in the first three x rows and the last y column."""
    image = np.random.default_rng(0).normal(size=(4, 21, 18, 4)).astype(np.float32)
    image[:, :3] = 0
    image[:, :, -1] = 0
    return image


@pytest.mark.parametrize("cls", [TwoPathCNN, InputCascadeCNN, LocalCascadeCNN, MFCascadeCNN])
def test_havaei_dense_equals_patchwise(cls, volume):
    model = randomised(cls(**TINY_HAVAEI))
    reference = patchwise(model, volume, batch_size=50)
    fast = dense(model, volume, batch_size=3)
    assert fast.shape == reference.shape == (5, 21, 18, 4) and fast.dtype == np.float32
    np.testing.assert_allclose(fast.sum(axis=0), 1.0, atol=TOL)
    assert_informative(reference)
    assert np.abs(fast - reference).max() <= TOL


def test_havaei_dense_equals_patchwise_full_width():
    torch.manual_seed(1)
    model = randomised(TwoPathCNN(), seed=1)
    image = np.random.default_rng(1).normal(size=(4, 9, 7, 2)).astype(np.float32)
    reference = patchwise(model, image)
    assert_informative(reference)
    assert np.abs(dense(model, image) - reference).max() <= TOL


def test_pereira_dense_equals_patchwise(volume):
    model = pereira()
    reference = patchwise(model, volume, batch_size=64)
    assert_informative(reference)
    assert np.abs(dense(model, volume, batch_size=17) - reference).max() <= TOL


WINDOW_MARGINS = {PereiraCNN: (16, 16), TwoPathCNN: (16, 16), InputCascadeCNN: (32, 32),
                  LocalCascadeCNN: (28, 27), MFCascadeCNN: (26, 26)}
"""Window pixels (before, after) the classified pixel per axis, as the papers and the model docstrings
define the input: 33×33 (Pereira, TwoPathCNN), 65×65, 56×56 (pixel at index 28) and 53×53."""


def naive_probabilities(model: nn.Module, image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Independent reference: one window per brain voxel, cut by hand, one forward pass each.

    The axial slice is zero-padded with numpy, the window around (x, y) is sliced out of it and
    the model classifies that single window; voxels outside ``brain`` are background.
    """
    before, after = WINDOW_MARGINS[type(model)]
    padded = np.pad(image, ((0, 0), (before, after), (before, after), (0, 0)))
    size = before + after + 1
    probs = np.zeros((model.n_classes, *image.shape[1:]), np.float32)
    probs[0] = 1
    model.eval()
    with torch.no_grad():
        for x, y, z in np.argwhere(brain):
            # padded[:, x + before, y + before] is image[:, x, y]: the window starts `before` earlier
            window = np.ascontiguousarray(padded[:, x:x + size, y:y + size, z])
            assert window.shape == (image.shape[0], size, size)
            logits = model(torch.from_numpy(window)[None]).reshape(model.n_classes)
            probs[:, x, y, z] = torch.softmax(logits, dim=0).numpy()
    return probs


@pytest.fixture(scope="module")
def masked_volume() -> tuple[np.ndarray, np.ndarray]:
    """(4, 12, 10, 3) with data everywhere and a brain mask touching the x = 0 and y = 9 borders.

    Windows of brain voxels see real data outside the brain's bounding box (x >= 7, y < 4, z = 2:
    the strategies must crop it from the volume) and zeros beyond the volume's border.
    """
    image = np.random.default_rng(4).normal(size=(4, 12, 10, 3)).astype(np.float32)
    brain = np.zeros(image.shape[1:], bool)
    brain[0:7, 4:10, 0:2] = True
    brain[3, 6, 0] = brain[0, 9, 1] = False
    return image, brain


@pytest.mark.parametrize("cls", [PereiraCNN, TwoPathCNN, InputCascadeCNN, LocalCascadeCNN,
                                 MFCascadeCNN])
def test_strategies_equal_a_naive_per_voxel_evaluation(cls, masked_volume):
    """dense and patchwise share ``_windows``/``_padded_slab``; this reference shares neither."""
    image, brain = masked_volume
    model = pereira(seed=3) if cls is PereiraCNN else randomised(cls(**TINY_HAVAEI), seed=3)
    assert model.margin == WINDOW_MARGINS[cls]
    reference = naive_probabilities(model, image, brain)
    assert_informative(reference)
    difference = {strategy.__name__: float(np.abs(strategy(model, image, brain, batch_size=batch)
                                                  - reference).max())
                  for strategy, batch in ((patchwise, 7), (dense, 2))}
    assert max(difference.values()) <= TOL, difference


def test_naive_reference_notices_a_one_pixel_shift(masked_volume):
    """Guards the test above: windows one pixel off in x or y give other probabilities."""
    image, brain = masked_volume
    model = randomised(TwoPathCNN(**TINY_HAVAEI), seed=3)
    reference = naive_probabilities(model, image, brain)
    for axis in (1, 2):
        for shift in (-1, 1):
            moved = np.roll(image, shift, axis=axis)  # each brain voxel sees its neighbour's window
            assert np.abs(naive_probabilities(model, moved, brain) - reference).max() > 1e-2


@pytest.mark.parametrize("strategy", [patchwise, dense])
@pytest.mark.parametrize("cls", [TwoPathCNN, PereiraCNN])
def test_only_the_brain_is_predicted_and_its_box_is_all_the_work(strategy, cls):
    model = (randomised(TwoPathCNN(**TINY_HAVAEI)) if cls is TwoPathCNN else pereira()).train()
    image = np.random.default_rng(2).normal(size=(4, 30, 26, 12)).astype(np.float32)
    brain = np.zeros(image.shape[1:], bool)
    brain[5:12, 8:20, 3:7] = True
    brain[6, 9, 3] = False
    evaluated = []
    model.register_forward_hook(lambda m, args, out: evaluated.append(args[0].shape))
    probs = strategy(model, image, brain, batch_size=1000)
    assert model.training, "the caller's training flag is restored"
    background = np.zeros(5, np.float32)
    background[0] = 1
    assert np.all(probs[:, ~brain] == background[:, None])
    assert np.all(probs[:, brain].max(axis=0) < 1)
    if strategy is dense and cls is TwoPathCNN:  # whole slices of the box, with 16-pixel margins
        assert [s[0] for s in evaluated] == [4] and evaluated[0][2:] == (7 + 32, 12 + 32)
    else:  # one window per box voxel; Pereira's dense evaluates brain voxels only
        box_voxels = 7 * 12 * 4 - (strategy is dense)
        assert sum(s[0] for s in evaluated) == box_voxels


def test_brain_defaults_to_nonzero_voxels_and_empty_brain_is_background(volume):
    brain, box = brain_region(volume)
    assert box == (slice(3, 21), slice(0, 17), slice(0, 4)) and brain.sum() == 18 * 17 * 4
    model = TwoPathCNN(**TINY_HAVAEI)
    probs = dense(model, np.zeros((4, 5, 6, 2), np.float32))
    assert np.all(probs[0] == 1) and np.all(probs[1:] == 0)
    with pytest.raises(ValueError, match="brain_mask"):
        dense(model, volume, np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="image"):
        dense(model, volume[:3])


def test_strategies_are_selected_by_hydra_target(volume):
    model = randomised(TwoPathCNN(**TINY_HAVAEI))
    chosen = instantiate(OmegaConf.create({"_target_": "brainbench.inference.patchwise.dense",
                                           "_partial_": True, "batch_size": 2}))
    np.testing.assert_array_equal(chosen(model, volume), dense(model, volume, batch_size=2))


def test_fcn_approximate_is_aligned_with_patchwise_where_the_patch_border_sees_nothing():
    """Bias-free, an isolated blob: every feature at a patch border is 0, so FCN == patch-wise.

    Off by one pixel anywhere in the dilated chain, the blob would move and the test would fail.
    """
    model = randomised(PereiraCNN(**TINY_PEREIRA))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    image = np.zeros((4, 40, 40, 1), np.float32)
    image[:, 18:21, 19:23] = np.random.default_rng(3).normal(size=(4, 3, 4, 1)) * 3
    mask = np.zeros(image.shape[1:], bool)
    mask[14:26, 14:26] = True  # patches centred here have the blob well inside them
    fast = fcn_approximate(model, image, mask)
    reference = patchwise(model, image, mask)
    assert reference[:, mask].std(axis=1).max() > 1e-3
    assert np.abs(fast - reference).max() <= TOL
    mask[5:35, 5:35] = True  # the blob near the patch border: its zero padding matters
    assert np.abs(fcn_approximate(model, image, mask) - patchwise(model, image, mask)).max() > 1e-3


def test_fcn_approximate_differs_warns_and_is_for_pereira_only(volume, caplog):
    model = pereira()
    with caplog.at_level(logging.WARNING, logger="brainbench.inference.patchwise"):
        report = measure_disagreement(model, volume, batch_size=8)
    assert "differ from patch-wise" in caplog.text
    assert report["brain_voxels"] == 18 * 17 * 4
    assert report["max_abs_difference"] > 1e-3 and 0 < report["label_disagreement"] < 1
    exact = measure_disagreement(model, volume, strategy=dense)
    assert exact["max_abs_difference"] <= TOL and exact["label_disagreement"] == 0
    with pytest.raises(BrainbenchConfigError, match="fcn_approximate"):
        fcn_approximate(TwoPathCNN(**TINY_HAVAEI), volume)


def test_havaei_dense_equals_patchwise_after_training(volume):
    """Equality holds for trained weights too, not only for random ones (issue 5)."""
    torch.manual_seed(2)
    model = TwoPathCNN(**TINY_HAVAEI)
    labels = np.digitize(volume[0], [-1.0, -0.3, 0.3, 1.0])  # classes 0-4 from channel 0
    padded = np.pad(volume, ((0, 0), (16, 16), (16, 16), (0, 0)))
    rng = np.random.default_rng(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(80):
        xs, ys, zs = (rng.integers(0, n, 32) for n in volume.shape[1:])
        patches = np.stack([padded[:, x : x + 33, y : y + 33, z] for x, y, z in zip(xs, ys, zs)])
        logits = model(torch.from_numpy(patches))[:, :, 0, 0]
        loss = nn.functional.cross_entropy(logits, torch.from_numpy(labels[xs, ys, zs]).long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])  # it learned something
    reference = patchwise(model, volume, batch_size=50)
    assert_informative(reference)
    assert np.abs(dense(model, volume, batch_size=3) - reference).max() <= TOL
