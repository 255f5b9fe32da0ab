"""Havaei TwoPathCNN and cascades: parameter counts, geometry, initialisation (architectures.md §1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.models.havaei import (
    InputCascadeCNN,
    LocalCascadeCNN,
    MaxoutConv2d,
    MFCascadeCNN,
    TwoPathCNN,
)

TINY = dict(local_maps=(3, 4), global_maps=5)
MODELS = [(TwoPathCNN, 33), (InputCascadeCNN, 65), (LocalCascadeCNN, 56), (MFCascadeCNN, 53)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("cls", "paper"), [(TwoPathCNN, 651_488), (InputCascadeCNN, 802_368),
                                            (LocalCascadeCNN, 654_368), (MFCascadeCNN, 662_513)])
@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_paper_parameter_count_matches_fig_2_and_3(cls, paper, pieces):
    assert cls(maxout_pieces=pieces).paper_parameter_count() == paper


@pytest.mark.parametrize(("cls", "pieces", "expected"), [
    (TwoPathCNN, 1, 651_781),        # 651,488 weights + 288 maxout biases + 5 output biases
    (TwoPathCNN, 2, 809_637),        # 2·157,568 + 493,920 weights + 2·288 + 5 biases
    (InputCascadeCNN, 1, 1_454_442),  # stage 1 651,781 + stage 2 802,368 + 293
    (InputCascadeCNN, 2, 1_921_034),  # 809,637 + 2·308,448 + 493,920 + 581
    (LocalCascadeCNN, 2, 1_625_034),  # 809,637 + 2·160,448 + 493,920 + 581
    (MFCascadeCNN, 2, 1_630_299),    # 809,637 + 2·157,568 + 504,945 + 581
])
def test_actual_parameter_count(cls, pieces, expected):
    assert n_params(cls(maxout_pieces=pieces)) == expected


@pytest.mark.parametrize(("cls", "window"), MODELS)
def test_geometry(cls, window):
    model = cls(**TINY).eval()
    assert model.receptive_field == window
    assert model.output_size(window) == 1
    assert model.output_size(window + 10) == 11
    with torch.no_grad():
        assert model(torch.randn(2, 4, window, window)).shape == (2, 5, 1, 1)
        assert model(torch.randn(1, 4, window + 7, window + 3)).shape == (1, 5, 8, 4)


def test_twopath_shrinks_any_slice_by_32():
    with torch.no_grad():
        assert TwoPathCNN(**TINY)(torch.randn(1, 4, 240, 50)).shape == (1, 5, 208, 18)


def test_maxout_is_the_max_over_each_maps_pieces():
    torch.manual_seed(0)
    layer = MaxoutConv2d(2, 3, 3, pieces=4)
    x = torch.randn(1, 2, 6, 6)
    pieces = layer.conv(x).view(1, 3, 4, 4, 4)
    torch.testing.assert_close(layer(x), pieces.max(dim=2).values)
    assert layer.conv.out_channels == 12


def test_initialisation_uniform_kernels_zero_biases_and_log_frequency_softmax_bias():
    model = TwoPathCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert weights.abs().max() <= 0.005 and weights.abs().max() > 0.004
    assert all(float(m.bias.detach().abs().max()) == 0 for m in convs)
    freq = [0.98, 0.0018, 0.011, 0.0012, 0.0038]
    model.init_output_bias(freq)
    expected = np.log(np.asarray(freq) / sum(freq))
    np.testing.assert_allclose(model.output_layer.bias.detach().numpy(), expected, rtol=1e-6)
    with torch.no_grad():
        model.output_layer.weight.zero_()
        probs = torch.softmax(model(torch.randn(1, 4, 33, 33)), dim=1).flatten()
    np.testing.assert_allclose(probs.numpy(), np.asarray(freq) / sum(freq), rtol=1e-5)
    with pytest.raises(BrainbenchConfigError, match="class_frequencies"):
        model.init_output_bias([0.5, 0.5])


def test_dropout_rate_and_bad_settings():
    model = TwoPathCNN(dropout=0.2)
    assert [layer.drop.p for layer in (model.local1, model.local2, model.global1)] == [0.2] * 3
    with pytest.raises(BrainbenchConfigError, match="maxout_pieces"):
        TwoPathCNN(maxout_pieces=0)
    with pytest.raises(BrainbenchConfigError, match="join"):
        TwoPathCNN(extra_channels=5, join="middle")


def test_cascade_stage1_is_frozen_in_eval_mode_and_can_be_released():
    torch.manual_seed(0)
    stage1 = TwoPathCNN(**TINY)
    model = InputCascadeCNN(stage1, **TINY).train()
    assert model.stage1 is stage1 and not stage1.training and model.stage2.training
    model(torch.randn(2, 4, 65, 65)).sum().backward()
    assert all(p.grad is None for p in model.stage1.parameters())
    assert all(p.grad is not None for p in model.stage2.parameters())
    assert model.output_layer is model.stage2.output_layer
    model.set_stage1_frozen(False)
    assert stage1.training and all(p.requires_grad for p in stage1.parameters())
    with pytest.raises(BrainbenchConfigError, match="stage1"):
        InputCascadeCNN(TwoPathCNN(in_channels=3, **TINY), **TINY)


@pytest.mark.parametrize(("cls", "offset"), [(InputCascadeCNN, 0), (LocalCascadeCNN, -0.5),
                                             (MFCascadeCNN, 0)])
def test_stage1_maps_line_up_with_the_stage2_features_they_join(cls, offset):
    """Stage-1 map k at the join is stage 1's prediction for the pixel stage-2 feature k is centred on.

    Stage-2 feature k sits at c - 16 + k (input), c - 11.5 + k (local: after the 7×7 conv and
    the stride-1 4×4 pool) or c - 10 + k (output); stage 1 at the local join is half a pixel early.
    """
    torch.manual_seed(0)
    model = cls(**TINY).eval()
    window = model.receptive_field
    x = torch.randn(1, 4, window, window)
    joined = {}
    model.stage2.register_forward_pre_hook(lambda m, args: joined.update(extra=args[1]))
    with torch.no_grad():
        model(x)
        extra = joined["extra"][0]
        first = {"input": -16, "local": -11.5, "output": -10}[model.join] + offset
        centre = model.margin[0]
        for k in (0, extra.shape[-1] - 1):
            pixel = int(centre + first + k)
            patch = x[:, :, pixel - 16:pixel + 17, pixel - 16:pixel + 17]
            expected = torch.softmax(model.stage1(patch), dim=1)[0, :, 0, 0]
            torch.testing.assert_close(extra[:, k, k], expected, atol=1e-6, rtol=1e-5)
