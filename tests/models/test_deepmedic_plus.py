"""DeepMedic+ (architectures.md §3.4, §3.6, §3.8): parameters, residuals, mirror-padded 3³ FC1,
receptive field; and the BN folding both DeepMedics use at inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.models.deepmedic import DeepMedic, DeepMedicPlus, TwoPathwaySegments, mirror_pad
from tests.helpers import calibrated_deepmedic



SMALL = dict(feature_maps=(3, 3, 4, 4, 4, 4, 5, 5), fc_feature_maps=(12, 12))
"""Widths that keep the zero-padded residuals visible (3 -> 4 maps at layer 4, 4 -> 5 at layer 8,
10 -> 12 at FC2)."""


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(channels: int, classes: int) -> int:
    """§3.8 by hand: conv weights of both pathways, FC1 3³, FC2, classification; then the input
    biases, BN γ/β + PReLU α on the inputs of layers 2-8 (both pathways) and of the 3 FC layers,
    and the class bias. Residuals and mirror padding add nothing."""
    pathway = 27 * (channels * 30 + 30 * 30 + 30 * 40 + 40 * 40 + 40 * 40 + 40 * 40 + 40 * 50 + 50 * 50)
    fc = 27 * 100 * 150 + 150 * 150 + 150 * classes
    others = 2 * channels + 2 * 3 * (30 + 30 + 40 + 40 + 40 + 40 + 50) + 3 * (100 + 150 + 150) + classes
    return 2 * pathway + fc + others


@pytest.mark.parametrize(("channels", "classes", "spec"), [(4, 5, 1_053_163), (2, 2, None)])
def test_parameter_count_matches_the_hand_count(channels, classes, spec):
    assert spec is None or hand_count(channels, classes) == spec
    assert n_params(DeepMedicPlus(channels, classes)) == hand_count(channels, classes)


def test_layer_settings_of_the_reference_config():
    model = DeepMedicPlus()
    assert model.normal_pathway.residual_layers == model.subsampled_pathway.residual_layers == (4, 6, 8)
    assert model.fc_pathway.residual_layers == (2,)
    assert [b.conv.kernel_size for b in model.fc_pathway] == [(3, 3, 3), (1, 1, 1), (1, 1, 1)]
    assert [getattr(b.drop, "p", 0.0) for b in model.fc_pathway] == [0.0, 0.5, 0.5]
    assert DeepMedic().fc_pathway.residual_layers == DeepMedic().normal_pathway.residual_layers == ()


def test_geometry_and_training_segments():
    model = DeepMedicPlus(**SMALL).eval()
    assert model.output_size(25) == (9, 9, 9) and model.subsampled_input_size(9) == (19, 19, 19)
    assert model.receptive_field == 19 and model.subsampled_receptive_field == 53
    volume = np.random.default_rng(0).normal(size=(4, 30, 30, 30)).astype(np.float32)
    label = np.zeros((30, 30, 30), np.int8)
    pairs = [TwoPathwaySegments()(volume, label, c, np.random.default_rng(0))
             for c in ((15, 15, 15), (0, 29, 3))]
    normal = torch.from_numpy(np.stack([p[0][0] for p in pairs]))
    subsampled = torch.from_numpy(np.stack([p[0][1] for p in pairs]))
    assert model(normal, subsampled).shape == (2, 5, 9, 9, 9) and pairs[0][1].shape == (9, 9, 9)


def test_mirror_pad_repeats_the_edge_like_numpy_symmetric():
    x = torch.randn(2, 3, 5, 4, 6)
    for pad in (1, 2):
        expected = np.pad(x.numpy(), [(0, 0), (0, 0)] + [(pad, pad)] * 3, mode="symmetric")
        np.testing.assert_array_equal(mirror_pad(x, pad).numpy(), expected)
    assert mirror_pad(x.contiguous(memory_format=torch.channels_last_3d), 1).is_contiguous(
        memory_format=torch.channels_last_3d)


def zero_padded_centre(earlier: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """The residual term written out: centre ``size`` voxels per axis, channels zero-padded."""
    lo = (earlier.shape[2] - size) // 2
    centre = earlier[:, :, lo:lo + size, lo:lo + size, lo:lo + size]
    zeros = torch.zeros(earlier.shape[0], channels - earlier.shape[1], size, size, size, dtype=earlier.dtype)
    return torch.cat([centre, zeros], dim=1)


def test_pathway_residuals_add_the_input_of_the_previous_layer():
    model = DeepMedicPlus(**SMALL).double().eval()
    x = torch.randn(1, 4, 21, 21, 21, dtype=torch.float64)
    blocks = list(model.normal_pathway)
    with torch.no_grad():
        out = [x]  # out[k]: output of layer k after its residual (the input of layer k + 1)
        for number, block in enumerate(blocks, start=1):
            y = block(out[-1])
            if number in (4, 6, 8):  # + input of layer L-1 = out[L-2]: at L = 4, 3 maps of 17³ -> 4 of 13³
                y = y + zero_padded_centre(out[number - 2], y.shape[1], y.shape[2])
            out.append(y)
        np.testing.assert_allclose(model.normal_pathway(x).numpy(), out[-1].numpy(), atol=1e-12)
        # the residuals change the result: the same blocks without them
        plain = x
        for block in blocks:
            plain = block(plain)
        assert (plain - out[-1]).abs().max() > 1e-3


def test_fc_residual_and_mirror_padded_first_fc_layer():
    model = DeepMedicPlus(**SMALL).double().eval()
    normal = torch.randn(1, 4, 23, 23, 23, dtype=torch.float64)
    subsampled = torch.randn(1, 4, *model.subsampled_input_size(7), dtype=torch.float64)
    with torch.no_grad():
        features = model.trunk(normal, subsampled)  # (1, 5 + 5, 7, 7, 7)
        padded = torch.from_numpy(np.pad(features.numpy(), [(0, 0), (0, 0)] + [(1, 1)] * 3, mode="symmetric"))
        fc1, fc2, classify = model.fc_pathway
        hidden = fc1(padded)  # 3³ valid conv: back to 7³
        hidden = fc2(hidden) + zero_padded_centre(features, 12, 7)
        expected = classify(hidden) + model.class_bias.view(1, -1, 1, 1, 1)
        np.testing.assert_allclose(model(normal, subsampled).numpy(), expected.numpy(), atol=1e-12)


def nonzero_extent(grad: torch.Tensor) -> list[tuple[int, int]]:
    """[first, last] index per spatial axis where the gradient is non-zero."""
    hit = grad.abs().sum(dim=(0, 1)) > 0
    return [tuple(np.flatnonzero(hit.any(dim=tuple(a for a in range(3) if a != axis)).numpy())[[0, -1]])
            for axis in range(3)]


@pytest.mark.parametrize(("cls", "expected"), [(DeepMedic, 17), (DeepMedicPlus, 19)])
def test_normal_receptive_field_by_gradient(cls, expected):
    """Which input voxels reach one output voxel of a 15³ block: its 3³ FC neighbourhood lies inside
    the block, so the mirror padding at the block border cannot shrink what is found."""
    torch.manual_seed(0)
    model = cls(**SMALL).double().eval()
    normal = torch.randn(1, 4, 31, 31, 31, dtype=torch.float64, requires_grad=True)
    subsampled = torch.randn(1, 4, *model.subsampled_input_size(15), dtype=torch.float64)
    model(normal, subsampled)[0, 1, 7, 7, 7].backward()
    half = (expected - 1) // 2
    assert nonzero_extent(normal.grad) == [(15 - half, 15 + half)] * 3  # input voxel 15 = output 7
    assert model.receptive_field == expected
    assert torch.count_nonzero(normal.grad.abs().sum(dim=1)) == expected ** 3


@pytest.mark.parametrize(("voxel", "first", "last"), [(7, 2, 18), (6, 1, 18), (8, 2, 19)])
def test_subsampled_reach_depends_on_the_lattice_phase(voxel, first, last):
    """Output voxel p reads coarse outputs (p-1)//3 … (p+1)//3 through FC1, each the 17 coarse
    samples from its index on: 17 samples when p is inside its coarse block, 18 at its edges
    (§3.6: ≈53³ voxels)."""
    torch.manual_seed(0)
    model = DeepMedicPlus(**SMALL).double().eval()
    normal = torch.randn(1, 4, 31, 31, 31, dtype=torch.float64)
    subsampled = torch.randn(1, 4, *model.subsampled_input_size(15), dtype=torch.float64, requires_grad=True)
    model(normal, subsampled)[0, 1, voxel, voxel, voxel].backward()
    assert nonzero_extent(subsampled.grad) == [(first, last)] * 3


def test_config_errors():
    with pytest.raises(BrainbenchConfigError, match="residual_layers"):
        DeepMedicPlus(residual_layers=(1, 4))
    with pytest.raises(BrainbenchConfigError, match="fc_residual_layers"):
        DeepMedicPlus(fc_residual_layers=(4,))
    with pytest.raises(BrainbenchConfigError, match="fc1_kernel"):
        DeepMedicPlus(fc1_kernel=2)


@pytest.mark.parametrize(("cls", "batch_norms_left"), [(DeepMedic, 0), (DeepMedicPlus, 8)])
def test_folded_copy_computes_the_same_function(cls, batch_norms_left):
    torch.manual_seed(3)
    model = calibrated_deepmedic(cls(**SMALL), seed=3).double()
    folded = model.folded_for_inference()
    # Plus keeps BN on the inputs of layers 3, 5, 7 (both pathways: their input is a residual
    # input or output), of FC1 (the concatenation is FC2's residual) and of the class layer
    assert sum(isinstance(m, nn.BatchNorm3d) for m in folded.modules()) == batch_norms_left
    assert all(isinstance(p[0].norm, nn.Identity) for p in (folded.normal_pathway, folded.subsampled_pathway))
    normal = torch.randn(2, 4, 24, 22, 21, dtype=torch.float64)
    subsampled = torch.randn(2, 4, *model.subsampled_input_size((8, 6, 5)), dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(normal, subsampled), folded(normal, subsampled)
    assert expected.std() > 0.1
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-10)
    assert model.normal_pathway[1].norm.__class__ is nn.BatchNorm3d  # the model itself is untouched
