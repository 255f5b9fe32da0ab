"""Gaussian sliding-window inference against a naive loop over hand-placed windows, a pointwise net
(where any tiling must give the plain pass), and the memory budget of the automatic window."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import brainbench.inference.sliding as sliding
from brainbench.errors import BrainbenchConfigError
from brainbench.inference.region import SCRATCH_HEADROOM
from brainbench.inference.sliding import (
    auto_patch_size,
    gaussian_importance,
    predict_sliding_window,
    window_peak_bytes,
    window_starts,
)
from brainbench.models.unet3d import UNet3D
from tests.helpers import resident_peak


def numpy_gaussian(size, sigma_scale=0.125):
    """exp(-d²/2σ²) around size // 2 per axis, max 1, float32 zeros raised to the smallest non-zero."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in size], indexing="ij")
    d2 = sum((g - n // 2) ** 2 / (sigma_scale * n) ** 2 for g, n in zip(grids, size))
    g = np.exp(-d2 / 2).astype(np.float32)
    g /= g.max()
    g[g == 0] = g[g > 0].min()
    return g


def naive(net, image, patch, margin, corners, frame, offset, sigma_scale=0.125):
    """One window at a time, explicit corners, on an explicitly zero-padded frame."""
    out = [p - 2 * margin for p in patch]
    padded = np.zeros((image.shape[0], *[f + 2 * margin for f in frame]), dtype=np.float32)
    inside = tuple(slice(margin + o, margin + o + e) for o, e in zip(offset, image.shape[1:]))
    padded[(slice(None), *inside)] = image
    g = numpy_gaussian(out, sigma_scale)
    acc = np.zeros((net.n_classes, *frame))
    wsum = np.zeros(frame)
    for x, y, z in corners:
        with torch.no_grad():
            logits = net(torch.from_numpy(padded[None, :, x:x + patch[0], y:y + patch[1], z:z + patch[2]]))
        acc[:, x:x + out[0], y:y + out[1], z:z + out[2]] += torch.softmax(logits, 1)[0].numpy() * g
        wsum[x:x + out[0], y:y + out[1], z:z + out[2]] += g
    probs = acc / wsum
    return probs[:, offset[0]:offset[0] + image.shape[1], offset[1]:offset[1] + image.shape[2],
                 offset[2]:offset[2] + image.shape[3]]


def tiny_net(padding: str, seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(2, 3, widths=(3, 4), padding=padding).eval()


def record_real_windows(net: nn.Module, shapes: list) -> None:
    """Appends the window size of each forward that computes (the window sizing runs the net's
    copy, hooks included, on the meta device)."""
    net.register_forward_hook(
        lambda module, args, out: None if args[0].is_meta else shapes.append(tuple(args[0].shape[2:])))


def test_window_starts_nnunet_placement():
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(21, 8, 0.5) == [0, 3, 6, 10, 13]  # 13/4 apart, rounded
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(10, 8, 0.0) == [0, 2]
    assert window_starts(11, 6, 0.5) == [0, 2, 5]  # 2.5 rounds to even, as np.round


@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.5, 0.9])
def test_every_voxel_is_covered_and_the_last_window_is_flush(overlap):
    for extent in range(1, 40):
        for size in range(1, extent + 1):
            starts = window_starts(extent, size, overlap)
            covered = np.zeros(extent, bool)
            for s in starts:
                covered[s:s + size] = True
            assert covered.all() and starts[0] == 0 and starts[-1] == extent - size
            steps = np.diff(starts)
            assert (steps >= 1).all() and (steps <= math.ceil(max(1.0, (1 - overlap) * size))).all()


def test_gaussian_is_nnunets_filtered_delta():
    size = (8, 12, 16)
    delta = np.zeros(size)
    delta[4, 6, 8] = 1
    reference = ndimage.gaussian_filter(delta, [s / 8 for s in size], 0, mode="constant", cval=0)
    np.testing.assert_allclose(gaussian_importance(size).numpy(), reference / reference.max(), rtol=1e-5)


def test_gaussian_zeros_are_raised_to_the_smallest_value():
    g = gaussian_importance((64, 8, 8), sigma_scale=0.02)
    expected = numpy_gaussian((64, 8, 8), sigma_scale=0.02)
    assert (expected > 0).all() and np.unique(expected).size < expected.size  # underflow happened
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-6)


def test_same_padding_equals_the_naive_loop():
    net = tiny_net("same")
    image = np.random.default_rng(0).normal(size=(2, 20, 21, 6)).astype(np.float32)
    # frame 20 × 21 × 8 (z padded to the window, the volume at z offset 1); corners by hand
    corners = [(x, y, 0) for x in (0, 4, 8, 12) for y in (0, 3, 6, 10, 13)]
    expected = naive(net, image, (8, 8, 8), 0, corners, (20, 21, 8), (0, 0, 1))
    got = predict_sliding_window(net, image, patch_size=8, overlap=0.5, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (3, 20, 21, 6)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_valid_padding_equals_the_naive_loop():
    net = tiny_net("valid")
    assert (net.margin, net.output_size(22)) == (8, (6, 6, 6))
    image = np.random.default_rng(1).normal(size=(2, 10, 11, 4)).astype(np.float32)
    corners = [(x, y, 0) for x in (0, 2, 4) for y in (0, 2, 5)]
    expected = naive(net, image, (22, 22, 22), 8, corners, (10, 11, 6), (0, 0, 1))
    got = predict_sliding_window(net, image, patch_size=22, overlap=0.5, batch_size=2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_single_window_is_one_plain_pass_and_state_is_restored():
    net = tiny_net("same").train()
    image = np.random.default_rng(2).normal(size=(2, 16, 8, 12)).astype(np.float32)
    got = predict_sliding_window(net, image, patch_size=(16, 8, 12))
    assert net.training and all(p.is_contiguous() for p in net.parameters())
    with torch.no_grad():
        plain = torch.softmax(net.eval()(torch.from_numpy(image)[None]), 1)[0].numpy()
    np.testing.assert_allclose(got, plain, atol=1e-6)


class Pointwise(nn.Module):
    """A 1³ conv: translation-equivariant, so any tiling must give the plain pass everywhere."""

    in_channels, n_classes, margin = 2, 3, 0

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(2, 3, 1)

    def output_size(self, size):
        return (size,) * 3 if isinstance(size, int) else tuple(size)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize(("patch", "overlap"), [(4, 0.0), (4, 0.5), ((6, 4, 10), 0.25), (8, 0.8)])
def test_pointwise_net_equals_the_plain_pass_for_any_tiling(patch, overlap):
    net = Pointwise()
    image = np.random.default_rng(3).normal(size=(2, 13, 7, 9)).astype(np.float32)
    with torch.no_grad():
        plain = torch.softmax(net(torch.from_numpy(image)[None]), 1)[0].numpy()
    got = predict_sliding_window(net, image, patch_size=patch, overlap=overlap, batch_size=4)
    np.testing.assert_allclose(got, plain, atol=1e-6)


def test_auto_window_is_the_padded_volume_when_memory_allows(monkeypatch):
    net = tiny_net("same")
    monkeypatch.setattr(sliding, "memory_budget_bytes", lambda device: 2 ** 40)
    shapes = []
    record_real_windows(net, shapes)
    image = np.random.default_rng(4).normal(size=(2, 13, 7, 9)).astype(np.float32)
    got = predict_sliding_window(net, image)
    assert shapes == [(14, 8, 10)]  # one window: the volume rounded up to even sizes (2 levels)
    assert auto_patch_size(UNet3D(3, 4), (140, 170, 140), 2 ** 40) == (144, 176, 144)
    assert auto_patch_size(UNet3D(3, 4, padding="valid"), (140, 170, 140), 2 ** 40) == (228, 260, 228)
    np.testing.assert_allclose(got.sum(0), 1, atol=1e-6)


TINY_PEAK_VALUES = 2 + 6 + 1 + 8 + 14
"""Float32 values per input voxel alive at once in :func:`tiny_net`'s forward, at its top synthesis
level's concatenation: 2 (input) + 6 (skip) + 8/8 (bottom output) + 8 (up-conv) + 14 (concatenation);
the logits and probabilities come after the skip and the concatenation are freed (at most 2 + 6 + 3 + 3)."""


def test_window_peak_bytes_hand_worked():
    net = tiny_net("same").train()
    assert window_peak_bytes(net, (26, 28, 20)) == 4 * TINY_PEAK_VALUES * 26 * 28 * 20
    assert window_peak_bytes(net, (26, 28, 20), batch_size=2) == 2 * 4 * TINY_PEAK_VALUES * 26 * 28 * 20
    assert net.training and next(net.parameters()).device.type == "cpu"  # measured on a meta copy


def test_auto_window_respects_a_small_budget(monkeypatch):
    net = tiny_net("same")
    stitching = 4 * (4 + 2) * 40 * 30 * 20  # probabilities and weights (4 values per voxel), image (2)

    def need(patch):
        return math.ceil(SCRATCH_HEADROOM * 4 * TINY_PEAK_VALUES * math.prod(patch) + stitching)

    # the longest axis shrinks by 2 (the first of equals): (40, 30, 20) … (30, 30, 20), (28, 30, 20),
    # (28, 28, 20), (26, 28, 20), (26, 26, 20)
    budget = need((26, 28, 20))
    assert need((28, 28, 20)) > budget
    assert auto_patch_size(net, (40, 30, 20), budget) == (26, 28, 20)
    assert auto_patch_size(net, (40, 30, 20), budget - 1) == (26, 26, 20)
    monkeypatch.setattr(sliding, "memory_budget_bytes", lambda device: budget)
    shapes = []
    record_real_windows(net, shapes)
    image = np.random.default_rng(5).normal(size=(2, 40, 30, 20)).astype(np.float32)
    got = predict_sliding_window(net, image, overlap=0.5)
    assert len(shapes) > 1 and set(shapes) == {(26, 28, 20)}
    np.testing.assert_allclose(got.sum(0), 1, atol=1e-6)
    with pytest.raises(BrainbenchConfigError, match="memory budget"):
        auto_patch_size(net, (40, 30, 20), 1000)


WINDOWED_RUN = """
import brainbench.inference.sliding as sliding
from brainbench.models.unet3d import UNet3D

net = UNet3D(2, 3, widths=(8, 16)).eval()
volume = np.random.default_rng(0).normal(size=(2, 48, 48, 48)).astype(np.float32)
sliding.memory_budget_bytes = lambda device: budget
shapes = []
net.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))

def run():
    sliding.predict_sliding_window(net, volume, overlap=0.25, batch_size=2)

def report(result):
    return {"window": shapes[-1]}
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_auto_window_keeps_the_resident_memory_within_the_budget():
    """Measured, not estimated: the resident-size peak of a run with automatic windows (a fresh
    process in which glibc returns every freed block of 64 KiB or more at once) stays within the
    budget, which two whole-volume windows would exceed."""
    budget = 48 * 2 ** 20
    assert window_peak_bytes(UNet3D(2, 3, widths=(8, 16)), (48, 48, 48), 2) > budget
    result = resident_peak(WINDOWED_RUN, budget)
    assert tuple(result["window"][2:]) != (48, 48, 48)
    assert 0 < result["peak"] <= budget


def test_argument_errors():
    net = tiny_net("same")
    image = np.zeros((2, 8, 8, 8), np.float32)
    with pytest.raises(BrainbenchConfigError, match="overlap"):
        predict_sliding_window(net, image, patch_size=8, overlap=1.0)
    with pytest.raises(BrainbenchConfigError, match="sigma_scale"):
        predict_sliding_window(net, image, patch_size=8, sigma_scale=0)
    with pytest.raises(BrainbenchConfigError, match="batch_size"):
        predict_sliding_window(net, image, patch_size=8, batch_size=0)
    with pytest.raises(BrainbenchConfigError, match="input_size"):
        predict_sliding_window(net, image, patch_size=7)
    with pytest.raises(ValueError, match="image"):
        predict_sliding_window(net, image[:1], patch_size=8)
