"""Inference over the brain's bounding box: the box by hand, and box-restricted DeepMedic equal to the whole pass;
the memory budget and the live-bytes counter that sizes work to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainbench.data.boxes import brain_box
from brainbench.inference.dense import predict_volume
from brainbench.inference.region import memory_budget_bytes, peak_live_bytes, predict_in_brain_box
from brainbench.models.deepmedic import DeepMedic


def test_brain_box_by_hand():
    image = np.zeros((2, 20, 30, 25), dtype=np.float32)
    image[0, 5, 7, 9] = 1.0      # one channel suffices
    image[1, 12, 20, 3] = -2.0   # negative intensities count (z-scored images)
    assert brain_box(image) == (slice(5, 13), slice(7, 21), slice(3, 10))
    assert brain_box(image, align=3) == (slice(3, 13), slice(6, 21), slice(3, 10))
    assert brain_box(np.zeros((1, 4, 4, 4))) == (slice(0, 0),) * 3


def test_box_prediction_equals_the_whole_volume_pass_inside_and_is_background_outside():
    torch.manual_seed(0)
    net = DeepMedic(in_channels=2, n_classes=3, feature_maps=[4, 4, 4, 4, 4, 4, 6, 6], fc_feature_maps=[8, 8]).eval()
    rng = np.random.default_rng(0)
    image = np.zeros((2, 40, 36, 33), dtype=np.float32)
    image[:, 7:31, 11:29, 4:25] = rng.normal(size=(2, 24, 18, 21))
    whole = predict_volume(net, image, tile_output=15)
    calls = []

    def predict(model, part):
        calls.append(part.shape)
        return predict_volume(model, part, tile_output=15)

    boxed = predict_in_brain_box(predict, net, image, n_classes=3, align=net.subsample_factor)
    assert calls == [(2, 31 - 6, 29 - 9, 25 - 3)]  # starts rounded down to multiples of 3
    inside = (slice(None), slice(6, 31), slice(9, 29), slice(3, 25))
    np.testing.assert_allclose(boxed[inside], whole[inside], rtol=1e-5, atol=1e-6)
    outside = np.ones(image.shape[1:], dtype=bool)
    outside[inside[1:]] = False
    assert (boxed[0][outside] == 1).all() and (boxed[1:, outside] == 0).all()
    assert not np.allclose(whole[0][outside], 1)  # the model alone would not have said so


def test_empty_image_is_background_without_running_the_model():
    def predict(model, part):
        raise AssertionError("no brain, no model")

    probabilities = predict_in_brain_box(predict, None, np.zeros((1, 5, 5, 5), np.float32), n_classes=2)
    assert (probabilities[0] == 1).all() and (probabilities[1] == 0).all()


def test_cpu_memory_budget_is_half_of_what_the_kernel_calls_available():
    with open("/proc/meminfo") as meminfo:
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    assert memory_budget_bytes("cpu") == pytest.approx(available / 2, rel=0.05)


def test_peak_live_bytes_counts_each_storage_while_it_is_alive():
    outside = torch.empty(1000, device="meta")

    def run():
        a = torch.empty(100, device="meta")          # 400 bytes
        view = a.view(10, 10)                        # same storage: nothing more
        a.add_(1)                                    # in place: nothing more
        c = torch.empty(50, dtype=torch.float64, device="meta")  # 400 + 400
        del c
        d = view * 2                                 # 400 + 400
        del a, view, d
        e = torch.empty(150, device="meta")          # 600, after the others are freed
        return e, outside[:10]                       # 600 + a view of 4000 bytes made outside

    assert peak_live_bytes(run) == 4600
    assert peak_live_bytes(lambda: [torch.empty(10, device="meta") for _ in range(3)]) == 120
