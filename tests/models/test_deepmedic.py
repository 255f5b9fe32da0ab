"""DeepMedic "Original": parameter counts, geometry and block order of architectures.md §3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.models.deepmedic import (
    DeepMedic,
    TwoPathwaySegments,
    extract_label_block,
    extract_training_pair,
    normal_window,
    subsampled_window,
)

TINY = dict(feature_maps=(2,) * 8, fc_feature_maps=(3, 3))


def n_params(model: nn.Module, suffix: str = "") -> int:
    return sum(p.numel() for name, p in model.named_parameters() if name.endswith(suffix))


@pytest.mark.parametrize(("in_channels", "n_classes", "expected"),
                         [(4, 5, 663_163), (2, 2, 659_466)])
def test_parameter_count_matches_spec(in_channels, n_classes, expected):
    assert n_params(DeepMedic(in_channels, n_classes)) == expected


def test_parameter_breakdown_matches_spec_section_3_8():
    model = DeepMedic()
    assert n_params(model, "conv.weight") == 660_330
    assert n_params(model.normal_pathway[0], "norm.bias") + n_params(model.subsampled_pathway[0],
                                                                     "norm.bias") == 8
    conv_pathways_bn_prelu = sum(n_params(block.norm) + n_params(block.act)
                                 for pathway in (model.normal_pathway, model.subsampled_pathway)
                                 for block in pathway[1:])
    assert conv_pathways_bn_prelu == 1_620
    assert sum(n_params(b.norm) + n_params(b.act) for b in model.fc_pathway) == 1_200
    assert model.class_bias.numel() == 5
    assert {name.rsplit(".", 1)[1] for name, _ in model.named_buffers()} == {
        "running_mean", "running_var", "num_batches_tracked"}


def test_geometry():
    model = DeepMedic()
    assert model.output_size(25) == (9, 9, 9)
    assert model.output_size(45) == (29, 29, 29)
    assert model.subsampled_input_size(9) == (19, 19, 19)
    assert model.subsampled_input_size(29) == (26, 26, 26)
    assert model.output_size((25, 31, 19)) == (9, 15, 3)
    assert model.receptive_field == 17
    assert model.subsampled_receptive_field == 51


def test_windows_are_centred_on_the_block_when_three_divides_it():
    assert normal_window(0, 9) == (-8, 17)
    assert subsampled_window(0, 9) == (-24, 33)  # 57 voxels, 24 either side of the 9
    assert subsampled_window(0, 29) == (-24, 54)  # 26 voxels at stride 3, trailing one cropped


def test_forward_on_training_pairs_full_width():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(4, 30, 30, 30)).astype(np.float32)
    pairs = [extract_training_pair(volume, c) for c in ((15, 15, 15), (0, 29, 3))]
    assert pairs[0][0].shape == (4, 25, 25, 25) and pairs[0][1].shape == (4, 19, 19, 19)
    normal = torch.from_numpy(np.stack([p[0] for p in pairs]))
    subsampled = torch.from_numpy(np.stack([p[1] for p in pairs]))
    assert DeepMedic()(normal, subsampled).shape == (2, 5, 9, 9, 9)


@pytest.mark.parametrize(("normal_size", "out_size"),
                         [((25, 31, 19), (9, 15, 3)), ((45, 45, 45), (29, 29, 29))])
def test_forward_anisotropic_and_cropped(normal_size, out_size):
    model = DeepMedic(**TINY)
    sub_size = model.subsampled_input_size(out_size)
    out = model(torch.zeros(1, 4, *normal_size), torch.zeros(1, 4, *sub_size))
    assert out.shape == (1, 5, *out_size)


def test_forward_rejects_a_mismatched_subsampled_input():
    with pytest.raises(ValueError, match="subsampled"):
        DeepMedic(**TINY)(torch.zeros(1, 4, 25, 25, 25), torch.zeros(1, 4, 17, 17, 17))


def test_raw_input_gets_only_a_per_channel_bias():
    model = DeepMedic()
    for pathway in (model.normal_pathway, model.subsampled_pathway):
        first = pathway[0]
        assert [name for name, _ in first.named_parameters()] == ["norm.bias", "conv.weight"]
        assert first.norm.bias.shape == (4,)
        assert not any(isinstance(m, (nn.BatchNorm3d, nn.PReLU)) for m in first.modules())
        assert all(isinstance(b.norm, nn.BatchNorm3d) and isinstance(b.act, nn.PReLU)
                   for b in pathway[1:])
    assert [b.norm.num_features for b in model.fc_pathway] == [100, 150, 150]
    # Linear in the raw image (train mode would not change that): f(2x) - f(0) = 2 (f(x) - f(0)).
    first = model.normal_pathway[0]
    first.norm.bias.data.normal_()
    x = torch.randn(1, 4, 5, 5, 5)
    zero = first(torch.zeros_like(x))
    torch.testing.assert_close(first(2 * x) - zero, 2 * (first(x) - zero), atol=1e-5, rtol=1e-5)


def test_output_is_logits_plus_class_bias():
    model = DeepMedic(**TINY).eval()
    normal, subsampled = torch.randn(1, 4, 17, 17, 17), torch.randn(1, 4, 17, 17, 17)
    before = model(normal, subsampled)
    model.class_bias.data = torch.arange(5.0)
    after = model(normal, subsampled)
    torch.testing.assert_close(after - before, torch.arange(5.0).view(1, 5, 1, 1, 1))


def test_initialisation_and_dropout():
    model = DeepMedic()
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 7 + 7 + 3 and all(torch.all(p.weight == 0.01) for p in prelus)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv3d))
    weight = model.normal_pathway[7].conv.weight  # 50 x 50·27 weights
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (50 * 27)), rel=0.03)
    assert [getattr(b.drop, "p", 0.0) for b in model.fc_pathway] == [0.0, 0.5, 0.5]
    assert not any(isinstance(m, nn.Dropout) for p in (model.normal_pathway, model.subsampled_pathway)
                   for m in p.modules())


def test_config_errors():
    with pytest.raises(BrainbenchConfigError, match="feature_maps"):
        DeepMedic(feature_maps=(30, 30))
    with pytest.raises(BrainbenchConfigError, match="fc_dropout"):
        DeepMedic(fc_dropout=(0.5,))
    with pytest.raises(BrainbenchConfigError, match="segment_size"):
        extract_training_pair(np.zeros((1, 5, 5, 5), np.float32), (2, 2, 2), segment_size=15)


def coordinate_volume(shape=(40, 40, 40)) -> np.ndarray:
    """Channel a holds 1 + the voxel's coordinate on axis a, so 0 marks zero-filled voxels."""
    return np.stack(np.meshgrid(*(np.arange(1, n + 1) for n in shape), indexing="ij")).astype(np.float32)


def test_training_pair_takes_every_third_voxel_without_averaging():
    volume = coordinate_volume((64, 64, 64))
    c = np.array([30, 31, 29])
    normal, subsampled = extract_training_pair(volume, tuple(c))
    np.testing.assert_array_equal(normal[:, 0, 0, 0], c - 12 + 1)
    np.testing.assert_array_equal(normal[:, 24, 24, 24], c + 12 + 1)
    # Lattice c - 28 + 3k (the reference's segment_start + 1 - 17): a window of 57 around c.
    for k in (0, 9, 18):
        np.testing.assert_array_equal(subsampled[:, k, k, k], c - 28 + 3 * k + 1)


def test_training_pair_is_zero_filled_outside_the_volume():
    volume = coordinate_volume()  # 40³
    normal, subsampled = extract_training_pair(volume, (0, 39, 20))
    assert np.all(normal[:, :12] == 0) and np.all(normal[:, :, 13:] == 0)  # voxels -12..-1, 40..51
    np.testing.assert_array_equal(normal[:, 12, 12, 12], [1, 40, 21])
    # Lattice voxels -28 + 3k (axis 0) and 11 + 3k (axis 1) leave the volume for k <= 9, k >= 10.
    assert np.all(subsampled[:, :10] == 0) and np.all(subsampled[:, :, 10:] == 0)
    np.testing.assert_array_equal(subsampled[:, 10, 3, 10], [2 + 1, 20 + 1, 22 + 1])


def test_label_block_is_centred_and_filled_with_ignore_index():
    label = np.arange(10 * 10 * 10, dtype=np.uint8).reshape(10, 10, 10) % 4
    block = extract_label_block(label, (5, 5, 5))
    assert block.dtype == np.int64
    np.testing.assert_array_equal(block, label[1:10, 1:10, 1:10])
    edge = extract_label_block(torch.from_numpy(label), (0, 5, 9))
    assert edge.dtype == torch.int64 and edge.shape == (9, 9, 9)
    assert torch.all(edge[:4] == -100) and torch.all(edge[:, :, 5:] == -100)
    torch.testing.assert_close(edge[4:, :, :5], torch.from_numpy(label[:5, 1:10, 5:]).long())


@pytest.mark.parametrize("centre", [(30, 31, 29), (2, 20, 20), (62, 5, 33)])
def test_flipped_training_pair_is_the_pair_of_the_reflected_volume(centre):
    volume = coordinate_volume((64, 64, 64))
    label = np.random.default_rng(0).integers(0, 4, (64, 64, 64)).astype(np.int8)
    (normal, subsampled), target = TwoPathwaySegments(flip_x_probability=1.0)(
        volume, label, centre, np.random.default_rng(0))
    mirrored = (63 - centre[0], centre[1], centre[2])
    (normal_ref, subsampled_ref), target_ref = TwoPathwaySegments(flip_x_probability=0.0)(
        np.flip(volume, axis=-3), np.flip(label, axis=0), mirrored, np.random.default_rng(0))
    np.testing.assert_array_equal(normal, normal_ref)
    np.testing.assert_array_equal(subsampled, subsampled_ref)
    np.testing.assert_array_equal(target, target_ref)
    # Worked by hand: along the reflected x axis the lattice is c' - 28 + 3k, i.e. original voxels
    # c + 28 - 3k (k = 0..18); flipping the extracted pair instead gave c + 26 - 3k. The normal
    # segment holds voxels c + 12 - j (j = 0..24). Coordinates are stored + 1, 0 outside the volume.
    def stored(x):
        return np.where((x >= 0) & (x < 64), x + 1, 0)

    np.testing.assert_array_equal(subsampled[0, :, 9, 9], stored(centre[0] + 28 - 3 * np.arange(19)))
    np.testing.assert_array_equal(normal[0, :, 12, 12], stored(centre[0] + 12 - np.arange(25)))
