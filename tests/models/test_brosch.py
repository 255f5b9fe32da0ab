"""Brosch et al. 2016 CEN-s: spec §4.3 parameter counts and receptive field, the any-size geometry, a
functional reference built from plain tensor operations, the shortcut sum, the sigmoid output, the
whole-volume training extractor and whole-volume inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.whole import predict_whole_volume
from brainbench.models.brosch import BroschCEN, CroppedVolumes, parameter_count_formula


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(**kwargs) -> BroschCEN:
    torch.manual_seed(0)
    return BroschCEN(kwargs.pop("in_channels", 2), kernel_sizes=kwargs.pop("kernel_sizes", (3, 3)),
                     filters=kwargs.pop("filters", (3, 4)), **kwargs)


def test_parameter_counts_of_the_spec_table():
    # spec §4.3, typed in: C = 4 (ISBI 2015) and C = 3 (MICCAI 2008), 9³ kernels, 32 filters, 1 map
    assert n_params(BroschCEN(4)) == parameter_count_formula(4) == 1_633_057
    assert n_params(BroschCEN(3)) == parameter_count_formula(3) == 1_609_729
    # the shortcut deconvolution is one 9³·32·1 = 23,328-weight layer without bias
    assert n_params(BroschCEN(4)) - n_params(BroschCEN(4, shortcut=False)) == 23_328
    assert parameter_count_formula(4, shortcut=False) == 1_633_057 - 23_328


def test_parameter_count_of_another_configuration():
    # C = 2, k = (5, 3), F = (8, 16), K = 3 (two output maps), by hand:
    # C1 125·2·8 = 2000, C2 27·8·16 = 3456, D2 27·16·8 = 3456, D1 125·8·2 = 2000, shortcut 2000,
    # biases 8 + 16 + 8 + 2 = 34
    expected = 2000 + 3456 + 3456 + 2000 + 2000 + 34
    model = BroschCEN(2, n_classes=3, kernel_sizes=(5, 3), filters=(8, 16))
    assert n_params(model) == parameter_count_formula(2, (5, 3), (8, 16), n_out=2) == expected == 12_946
    assert n_params(BroschCEN(2, 3, (5, 3), (8, 16), shortcut=False)) == expected - 2000


@pytest.mark.parametrize("shape", [(20, 21, 22), (21, 22, 20), (5, 3, 12)])
def test_output_has_the_input_size(shape):
    model = small(n_classes=3)
    with torch.no_grad():
        out = model(torch.randn(2, 2, *shape))
    assert out.shape == (2, 3, *shape)
    # C1 (k1 = 3) must leave an even size >= 2·k2 = 6: 20 → 20, 21 → 22, 5 → 8, 3 → 8, 12 → 12
    assert model.padded_size(20) == (20,) * 3 and model.padded_size(21) == (22,) * 3
    assert model.padded_size((5, 3, 12)) == (8, 8, 12)


def reference_forward(model: BroschCEN, x: torch.Tensor) -> torch.Tensor:
    """The CEN-s on a pool-compatible input from plain tensor operations: full deconvolutions as
    convolutions of the zero-padded input with the flipped, transposed kernel; pooling as a block
    mean; unpooling by repeating each voxel twice per axis."""
    def full(t, layer):
        k = layer.weight.shape[-1]
        weight = layer.weight.flip(-1, -2, -3).transpose(0, 1)
        return F.conv3d(F.pad(t, [k - 1] * 6), weight, layer.bias)

    c1 = torch.relu(F.conv3d(x, model.conv1.weight, model.conv1.bias))
    n, c, *size = c1.shape
    pooled = c1.reshape(n, c, size[0] // 2, 2, size[1] // 2, 2, size[2] // 2, 2).mean(dim=(3, 5, 7))
    c2 = torch.relu(F.conv3d(pooled, model.conv2.weight, model.conv2.bias))
    d2 = torch.relu(full(c2, model.deconv2))
    unpooled = d2.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    z = full(unpooled, model.deconv1) + full(c1, model.shortcut_deconv)
    return torch.cat([torch.zeros_like(z[:, :1]), z], dim=1)


def test_forward_matches_a_plain_reference():
    model = small(n_classes=3, kernel_sizes=(3, 2), filters=(3, 4))
    x = torch.randn(2, 2, 14, 16, 12)  # C1: 12, 14, 10, all even
    assert model.padded_size(x.shape[2:]) == (14, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_padding_is_zeros_at_the_end():
    model = small()
    x = torch.randn(1, 2, 13, 12, 15)  # pool-compatible sizes: 14, 12, 16
    padded = F.pad(x, [0, 1, 0, 0, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :13, :12, :15])


def test_shortcut_is_summed_into_the_output():
    model = small(kernel_sizes=(3, 3))
    with torch.no_grad():
        model.deconv1.weight.zero_()  # main path off: only D1's bias remains
        x = torch.randn(1, 2, 12, 12, 12)
        c1 = torch.relu(F.conv3d(x, model.conv1.weight, model.conv1.bias))
        expected = F.conv_transpose3d(c1, model.shortcut_deconv.weight) + model.deconv1.bias.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(model(x)[:, 1:], expected)


def test_sigmoid_equivalence():
    model = small()
    with torch.no_grad():
        logits = model(torch.randn(1, 2, 12, 12, 12))
    z = logits[:, 1]
    assert torch.equal(logits[:, 0], torch.zeros_like(z))
    probabilities = torch.softmax(logits, dim=1)
    torch.testing.assert_close(probabilities[:, 1], torch.sigmoid(z))
    torch.testing.assert_close(probabilities[:, 0], 1 - torch.sigmoid(z))


def measured_extent(model: BroschCEN, size: int, voxel: int, main_path: bool = True) -> int:
    """Input voxels along x with a non-zero gradient of output voxel (voxel, voxel, voxel) of class 1.
    Positive weights and inputs keep every ReLU open, so no path is hidden by a zero;
    ``main_path=False`` zeroes D1's weights, leaving the shortcut path."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.abs() + 0.01)
        if not main_path:
            model.deconv1.weight.zero_()
    x = (torch.rand(1, model.in_channels, size, size, size) + 0.1).requires_grad_()
    model(x)[0, 1, voxel, voxel, voxel].backward()
    rows = np.flatnonzero(x.grad[0].abs().sum(dim=(0, 2, 3)).numpy() > 0)
    return int(rows[-1] - rows[0] + 1)


def test_receptive_field_measured_from_gradients():
    assert BroschCEN(4).receptive_field == (50, 17)  # spec §4.3
    deep, shortcut = small(kernel_sizes=(3, 3)).receptive_field
    # C1 on 32 → 30, pool 15, C2 13: voxels 16 and 17 (both pooling phases) are far from the borders
    assert max(measured_extent(small(kernel_sizes=(3, 3)), 32, v) for v in (16, 17)) == deep == 14
    assert measured_extent(small(kernel_sizes=(3, 3)), 32, 16, main_path=False) == shortcut == 5
    # an even k1: the two pooling phases differ, 2·(2 + 2·3 - 2) + 4 + 1 = 17 and 2·(1 + 4) + 5 = 15
    deep, _ = small(kernel_sizes=(4, 3)).receptive_field
    assert max(measured_extent(small(kernel_sizes=(4, 3)), 33, v) for v in (16, 17)) == deep


def test_full_width_forward_runs():
    model = BroschCEN(4)
    with torch.no_grad():
        out = model(torch.randn(1, 4, 30, 30, 30))
    assert out.shape == (1, 2, 30, 30, 30) and torch.isfinite(out).all()


def test_config_errors():
    with pytest.raises(BrainbenchConfigError, match="kernel_sizes"):
        BroschCEN(4, kernel_sizes=(9,))
    with pytest.raises(BrainbenchConfigError, match="pool"):
        BroschCEN(4, pool="max")
    with pytest.raises(BrainbenchConfigError, match="flip_probability"):
        CroppedVolumes(flip_probability=2.0)


def volume_with_brain():
    image = np.zeros((2, 10, 12, 9), np.float32)
    image[:, 2:7, 3:10, 1:5] = np.arange(2 * 5 * 7 * 4, dtype=np.float32).reshape(2, 5, 7, 4) + 1
    label = np.zeros((10, 12, 9), np.int8)
    label[3, 4, 2] = 1
    label[6, 9, 4] = 1
    return image, label


def test_cropped_volume_is_the_brain_box():
    image, label = volume_with_brain()
    (window,), target = CroppedVolumes()(image, label, (0, 0, 0), np.random.default_rng(0))
    assert window.shape == (2, 5, 7, 4) and target.dtype == np.int64
    np.testing.assert_array_equal(window, image[:, 2:7, 3:10, 1:5])
    expected = np.zeros((5, 7, 4), np.int64)
    expected[1, 1, 1] = expected[4, 6, 3] = 1
    np.testing.assert_array_equal(target, expected)


def test_cropped_volume_flips():
    image, label = volume_with_brain()
    (window,), target = CroppedVolumes(flip_probability=1.0)(image, label, (0, 0, 0), np.random.default_rng(0))
    np.testing.assert_array_equal(window, image[:, 2:7, 3:10, 1:5][:, ::-1, ::-1, ::-1])
    expected = np.zeros((5, 7, 4), np.int64)
    expected[3, 5, 2] = expected[0, 0, 0] = 1  # the two lesion voxels, mirrored within the box
    np.testing.assert_array_equal(target, expected)
    (unflipped,), _ = CroppedVolumes(flip_probability=1.0)(image, label, (0, 0, 0), np.random.default_rng(0),
                                                          augment=False)
    np.testing.assert_array_equal(unflipped, image[:, 2:7, 3:10, 1:5])


def test_fixed_size_window_is_centred_and_filled():
    image, label = volume_with_brain()
    (window,), target = CroppedVolumes(size=(4, 4, 3))(image, label, (1, 5, 8), np.random.default_rng(0))
    # x: 1 - 1 = 0 … 3; y: 5 - 1 = 4 … 7; z: 8 - 1 = 7 … 9, the last outside the volume
    expected = np.zeros((2, 4, 4, 3), np.float32)
    expected[:, :, :, :2] = image[:, 0:4, 4:8, 7:9]
    np.testing.assert_array_equal(window, expected)
    assert (target[..., 2] == -100).all() and (target[..., :2] == label[0:4, 4:8, 7:9]).all()
    (flipped,), _ = CroppedVolumes(size=(4, 4, 3), flip_probability=1.0)(image, label, (1, 5, 8),
                                                                        np.random.default_rng(0))
    # mirrored centre (8, 6, 0): x 7 … 10 (10 outside), y 5 … 8, z -1 … 1 of the flipped volume
    mirrored = image[:, ::-1, ::-1, ::-1]
    expected = np.zeros((2, 4, 4, 3), np.float32)
    expected[:, :3, :, 1:] = mirrored[:, 7:10, 5:9, 0:2]
    np.testing.assert_array_equal(flipped, expected)


def test_predict_whole_volume_returns_probabilities():
    model = small(n_classes=3)
    model.train()
    image = np.random.default_rng(0).normal(size=(2, 11, 13, 10)).astype(np.float32)
    probabilities = predict_whole_volume(model, image)
    assert probabilities.shape == (3, 11, 13, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(0), 1.0, rtol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(image)[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    assert model.training  # the caller's mode is restored
