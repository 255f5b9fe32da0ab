"""3D U-Net (Çiçek et al. 2016): parameter counts from the paper's Fig. 1, geometry, receptive field
measured by input gradients, the forward's peak memory by hand, and the training patch extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.region import peak_live_bytes
from brainbench.models.unet3d import PatchSegments, UNet3D


def conv(cin: int, cout: int, k: int = 3) -> int:
    """Weights and biases of a k³ conv."""
    return cin * cout * k ** 3 + cout


def bn(c: int) -> int:
    return 2 * c  # γ and β; running statistics are buffers


def upconv(c: int) -> int:
    return c * c * 2 ** 3  # 2³ up-convolution keeping the maps, no bias (see the module docstring)


def paper_parameters(c: int, k: int, with_bn: bool = True) -> int:
    """Layer by layer from the paper's Fig. 1 (widths 32, 64, 128, 256)."""
    layers = [
        (conv(c, 32), 32), (conv(32, 64), 64),                 # analysis level 1
        (conv(64, 64), 64), (conv(64, 128), 128),              # level 2
        (conv(128, 128), 128), (conv(128, 256), 256),          # level 3
        (conv(256, 256), 256), (conv(256, 512), 512),          # bottom
        (upconv(512), 0), (conv(256 + 512, 256), 256), (conv(256, 256), 256),  # synthesis level 3
        (upconv(256), 0), (conv(128 + 256, 128), 128), (conv(128, 128), 128),  # level 2
        (upconv(128), 0), (conv(64 + 128, 64), 64), (conv(64, 64), 64),        # level 1
        (conv(64, k, 1), 0),                                                   # 1³ classifier
    ]
    return sum(n + (bn(maps) if with_bn else 0) for n, maps in layers)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_of_the_paper_widths():
    # MRBrainS13: T1, T1_IR, FLAIR; background, CSF, GM, WM
    assert n_params(UNet3D(3, 4)) == paper_parameters(3, 4) == 19_074_692
    # the paper's own count (3 channels, 3 labels) leaves out BatchNorm's γ and β
    assert paper_parameters(3, 3, with_bn=False) == 19_069_955
    model = UNet3D(3, 3)
    assert n_params(model) - sum(n_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm3d)) \
        == 19_069_955


def test_parameter_count_of_a_tiny_config():
    expected = (conv(1, 2) + bn(2) + conv(2, 4) + bn(4)          # level 1
                + conv(4, 3) + bn(3) + conv(3, 6) + bn(6)        # bottom
                + upconv(6) + conv(4 + 6, 4) + bn(4) + conv(4, 4) + bn(4)
                + conv(4, 2, 1))
    assert n_params(UNet3D(1, 2, widths=(2, 3))) == expected == 2_959


def test_geometry_same_padding():
    net = UNet3D(3, 4)
    assert (net.size_step, net.min_input_size, net.margin) == (8, 8, 0)
    assert net.output_size(64) == (64, 64, 64)
    assert net.output_size((8, 16, 144)) == (8, 16, 144)
    assert net.valid_input_size((140, 170, 1)) == (144, 176, 8)
    assert net.receptive_field == 100
    with pytest.raises(BrainbenchConfigError, match=r"input_size: \(140, 16, 16\).*8 \+ a multiple of 8"):
        net.output_size((140, 16, 16))
    with pytest.raises(BrainbenchConfigError, match="padding"):
        UNet3D(3, 4, padding="reflect")
    with pytest.raises(BrainbenchConfigError, match="widths"):
        UNet3D(3, 4, widths=())


def test_geometry_valid_padding_matches_the_paper():
    net = UNet3D(3, 3, padding="valid")
    assert net.output_size((132, 132, 116)) == (44, 44, 28)  # paper Fig. 1
    assert (net.size_step, net.min_input_size, net.margin) == (8, 92, 44)  # 92 → 4: bottom 8 → 4
    assert net.valid_input_size((1, 100, 101)) == (92, 100, 108)
    with pytest.raises(BrainbenchConfigError, match=r"92 \+ a multiple of 8 \(e\.g\. \(92, 100, 108\)\)"):
        net.output_size((90, 100, 101))


@pytest.mark.parametrize(("padding", "size", "expected"),
                         [("same", (16, 24, 8), (16, 24, 8)), ("valid", (44, 52, 60), (4, 12, 20))])
def test_forward_shapes(padding, size, expected):
    net = UNet3D(2, 3, widths=(2, 2, 2), padding=padding).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 2, *size)).shape == (2, 3, *expected)
    assert net.output_size(size) == expected


def test_forward_at_full_width():
    net = UNet3D(3, 4).eval()
    with torch.no_grad():
        logits = net(torch.randn(1, 3, 16, 16, 16))
    assert logits.shape == (1, 4, 16, 16, 16) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("widths", "padding", "size"),
                         [((4, 4, 4, 4), "same", (136, 8, 8)), ((4, 4, 4), "valid", (76, 44, 44))])
def test_receptive_field_equals_the_input_gradient_extent(widths, padding, size):
    """Batch element b backpropagates from output voxel j0 + b, one per position modulo the pooling
    grid (BN in eval mode keeps the elements independent); x-extent of the non-zero gradient."""
    torch.manual_seed(0)
    net = UNet3D(1, 2, widths=widths, padding=padding).eval()
    x = torch.randn(net.size_step, 1, *size, requires_grad=True)
    y = net(x)
    j0, cy, cz = (y.shape[2] - net.size_step) // 2, y.shape[3] // 2, y.shape[4] // 2
    torch.stack([y[b, 0, j0 + b, cy, cz] for b in range(net.size_step)]).sum().backward()
    extents = []
    for b in range(net.size_step):
        rows = torch.nonzero(x.grad[b, 0].abs().sum(dim=(1, 2))).flatten()
        if padding == "same":
            assert 0 < rows.min() and rows.max() < size[0] - 1  # not clipped by the border
        extents.append(int(rows.max() - rows.min()) + 1)
    assert max(extents) == net.receptive_field
    assert net.receptive_field == {4: 100, 3: 44}[len(widths)]


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_peak_memory_hand_worked(batch):
    """Activations alive at once in a no-grad forward, counted on the meta device. Paper widths, 3
    channels: the top synthesis level's concatenation is the peak, per input voxel 3 (input) + 64
    (skip) + 128/8 (level-2 output) + 128 (up-conv) + 192 (concatenation) = 403 float32 values;
    the deepest analysis level and the 1³ classifier hold less."""
    net = UNet3D(3, 4).to("meta").eval()
    with torch.inference_mode():
        peak = peak_live_bytes(lambda: net(torch.empty((batch, 3, 16, 16, 16), device="meta")))
    assert peak == 4 * batch * 403 * 16 ** 3


# ----------------------------------------------------------------------------- PatchSegments

def volume_and_label(shape=(2, 11, 12, 13)):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1  # no zero inside
    label = (image[0] % 7).astype(np.int8)  # a function of the image: flips must keep it so
    return image, label


def test_patch_is_centred_on_the_voxel():
    image, label = volume_and_label()
    (patch,), target = PatchSegments(patch_size=(5, 4, 3))(image, label, (5, 6, 7), np.random.default_rng(0))
    np.testing.assert_array_equal(patch, image[:, 3:8, 5:9, 6:9])  # c - (P - 1)//2 ...
    np.testing.assert_array_equal(target, label[3:8, 5:9, 6:9])
    assert patch.shape == (2, 5, 4, 3) and target.dtype == np.int64


def test_valid_target_is_the_centre_of_the_window():
    image, label = volume_and_label()
    (patch,), target = PatchSegments(patch_size=9, target_size=3)(image, label, (5, 6, 6),
                                                                   np.random.default_rng(0))
    np.testing.assert_array_equal(patch, image[:, 1:10, 2:11, 2:11])
    np.testing.assert_array_equal(target, label[4:7, 5:8, 5:8])


def test_outside_the_volume_is_zero_image_and_ignored_label():
    image, label = volume_and_label()
    (patch,), target = PatchSegments(patch_size=8)(image, label, (0, 11, 6), np.random.default_rng(0))
    padded_image = np.pad(image, ((0, 0), (3, 0), (0, 4), (0, 0)))
    padded_label = np.pad(label.astype(np.int64), ((3, 0), (0, 4), (0, 0)), constant_values=-100)
    np.testing.assert_array_equal(patch, padded_image[:, 0:8, 8:16, 3:11])
    np.testing.assert_array_equal(target, padded_label[0:8, 8:16, 3:11])
    assert (patch[:, :3] == 0).all() and (target[:3] == -100).all() and (target[:, 4:] == -100).all()


def test_flip_reflects_image_and_label_together():
    """An odd window reflected at its centre is the plain window reflected: every draw must be one
    of the 8 reflections, with the label voxels following their image voxels."""
    image, label = volume_and_label()
    plain = image[:, 2:7, 4:9, 3:8]
    reflections = {axes: np.flip(plain, axis=axes) for axes in
                   [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]}
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(20):
        (patch,), target = PatchSegments(patch_size=5, flip_probability=0.5)(image, label, (4, 6, 5), rng)
        np.testing.assert_array_equal(target, patch[0] % 7)
        matched = [axes for axes, reflected in reflections.items() if np.array_equal(patch, reflected)]
        assert len(matched) == 1
        seen.add(matched[0])
    assert len(seen) >= 6  # each axis flips independently


def test_no_flip_without_augmentation_and_config_errors():
    image, label = volume_and_label()
    (patch,), _ = PatchSegments(patch_size=5, flip_probability=1.0)(image, label, (4, 6, 5),
                                                                  np.random.default_rng(0), augment=False)
    np.testing.assert_array_equal(patch, image[:, 2:7, 4:9, 3:8])
    (patch,), _ = PatchSegments(patch_size=5, flip_probability=1.0)(image, label, (4, 6, 5),
                                                                  np.random.default_rng(0))
    np.testing.assert_array_equal(patch, image[:, 2:7, 4:9, 3:8][:, ::-1, ::-1, ::-1])
    with pytest.raises(BrainbenchConfigError, match="flip_probability"):
        PatchSegments(patch_size=5, flip_probability=1.5)
    with pytest.raises(BrainbenchConfigError, match="patch_size"):
        PatchSegments(patch_size=(5, 0, 5))
