"""Dou cascade inference: stage 1 as a screening FCN of real layers with fixed weights, stage 2 as a
stand-in that accepts bright patch centres; probabilities are checked against hand values."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from brainbench.inference.cascade import decision_probability, paint_detections, predict_cascade
from brainbench.models.dou import DouCascade

SHAPE = (40, 40, 24)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def fixed_screen(net: DouCascade) -> None:
    """maps (1, 1, 1, 1) with one-hot kernels: tracing the layers back, the CMB logit of score
    voxel v is 2 · relu(max of the image over {2v−1, 2v}³) − 5 (the window of voxel 2v starts at
    2v − (7, 7, 4); C1's tap (2, 2, 1), the pool's {0, 1}, C2's (1, 1, 1), C3's (1, 1, 0) and
    FC1's (0, 0, 0) add up to (6, 6, 3) + {0, 1})."""
    layers = net.screening.layers
    with torch.no_grad():
        taps = ((layers[0], (2, 2, 1)), (layers[3], (1, 1, 1)), (layers[5], (1, 1, 0)), (layers[7], (0, 0, 0)))
        for conv, tap in taps:
            conv.weight.zero_()
            conv.weight[(0, 0, *tap)] = 1.0
            conv.bias.zero_()
        layers[9].weight.copy_(torch.tensor([0.0, 2.0]).view(2, 1, 1, 1, 1))
        layers[9].bias.copy_(torch.tensor([0.0, -5.0]))


class CentreThreshold(nn.Module):
    """Stage 2 stand-in: CMB logit 10 · (centre voxel − 5.5) of the mean-subtracted 20×20×16 patch."""

    patch_size = (20, 20, 16)

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: Tensor) -> Tensor:
        centre = x[:, 0, 9, 9, 7]
        return torch.stack([torch.zeros_like(centre), self.scale * (centre - 5.5)], dim=1)


def make_net() -> DouCascade:
    net = DouCascade(screening={"maps": (1, 1, 1, 1)}, discrimination={"maps": (1, 1), "hidden": (1, 1)},
                     screening_threshold=0.5, nms_radius=4)
    fixed_screen(net)
    net.discrimination = CentreThreshold()
    return net


def test_cascade_paints_accepted_candidates_only():
    image = -np.ones((1, *SHAPE), np.float32)
    image[0, 9:11, 9:11, 7:9] = 6.0  # a CMB-like cube: only score voxel (5, 5, 4) sees it
    image[0, 20, 30, 6] = 3.0  # a fainter mimic: score voxel (10, 15, 3)
    net = make_net()
    cmb, mimic = (slice(10, 12), slice(10, 12), slice(8, 10)), (slice(20, 22), slice(30, 32), slice(6, 8))

    stage1 = predict_cascade(net, image, stage2=False)
    assert stage1.shape == (2, *SHAPE) and stage1.dtype == np.float32
    np.testing.assert_allclose(stage1.sum(0), 1.0, atol=1e-6)
    expected = np.zeros(SHAPE, np.float32)
    expected[cmb], expected[mimic] = sigmoid(2 * 6 - 5), sigmoid(2 * 3 - 5)
    np.testing.assert_allclose(stage1[1], expected, atol=1e-6)

    cascade = predict_cascade(net, image, batch_size=1)
    np.testing.assert_allclose(cascade.sum(0), 1.0, atol=1e-6)
    mean = (8 * 6.0 - (20 * 20 * 16 - 8)) / (20 * 20 * 16)  # the CMB's patch lies inside the volume
    np.testing.assert_allclose(cascade[1][cmb], sigmoid(10 * (6.0 - mean - 5.5)), atol=1e-6)
    assert (cascade[1][mimic] < 0.5).all()  # the rejected mimic loses the argmax
    outside = np.ones(SHAPE, bool)
    outside[cmb] = outside[mimic] = False
    assert (cascade[1][outside] == 0).all()
    assert net.training  # the caller's mode is restored


def test_decision_probability_moves_the_threshold_to_one_half():
    p = np.array([0.0, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0])
    shifted = decision_probability(p, 0.1)
    # by hand: odds p/(1-p) divided by the threshold's odds 1/9
    odds = np.divide(p, 1 - p, out=np.full_like(p, np.inf), where=p < 1) * 9
    np.testing.assert_allclose(shifted, np.where(np.isinf(odds), 1.0, odds / (1 + odds)), atol=1e-6)
    assert list(shifted >= 0.5) == [False, False, True, True, True, True, True]
    np.testing.assert_allclose(decision_probability(p, 0.5), p, atol=1e-7)


def test_nothing_detected_is_background_everywhere():
    probabilities = predict_cascade(make_net(), -np.ones((1, 30, 30, 20), np.float32))
    assert (probabilities[0] == 1).all() and (probabilities[1] == 0).all()


def test_candidates_split_the_region_they_share():
    scores = np.zeros((10, 5, 5), np.float32)
    scores[1:9, 1, 1] = 0.8  # one region, two candidates at its ends
    scores[5, 3:5, 3:5] = 0.9  # a region without a candidate
    foreground = paint_detections(scores, 0.5, np.array([[2, 2, 2], [16, 2, 2]]), np.array([0.9, 0.0]), (20, 10, 10))
    expected = np.zeros((20, 10, 10), np.float32)
    expected[2:9, 2:4, 2:4] = 0.9  # image voxels x 2…17 map to score voxels 1…8; x = 9 is equidistant
    foreground[9] = expected[9] = 0
    np.testing.assert_array_equal(foreground, expected)
