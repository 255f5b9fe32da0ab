"""Pereira HGG/LGG: parameter counts, layer sizes and initialisation of architectures.md §2.2, §2.4."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainbench.errors import BrainbenchConfigError
from brainbench.models.pereira import PereiraCNN, pereira_hgg, pereira_lgg


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("factory", "expected", "convs", "dropout"),
                         [(pereira_hgg, 2_118_213, 6, 0.1), (pereira_lgg, 1_933_701, 4, 0.5)])
def test_parameter_count_and_layers_match_spec(factory, expected, convs, dropout):
    model = factory()
    assert n_params(model) == expected
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [dropout, dropout]
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.333}
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 256, 5]


def test_pools_give_the_6272_fc_input():
    model = pereira_hgg().eval()
    with torch.no_grad():
        assert model.features(torch.randn(2, 4, 33, 33)).shape == (2, 128, 7, 7)
        assert model(torch.randn(2, 4, 33, 33)).shape == (2, 5)


def test_geometry_and_patch_size_check():
    model = PereiraCNN(block_maps=(2, 3), fc_units=(4, 4))
    assert model.receptive_field == 33
    assert model.output_size(33) == 1 and model.output_size(240) == 208
    with pytest.raises(ValueError, match="33, 33"):
        model(torch.randn(1, 4, 35, 35))


def test_initialisation_glorot_and_bias():
    model = pereira_lgg()
    first = model.features[0]
    bound = (6 / (4 * 9 + 64 * 9)) ** 0.5
    assert float(first.weight.detach().abs().max()) <= bound
    assert float(first.weight.detach().abs().max()) > 0.9 * bound
    assert all(torch.all(m.bias == 0.1) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert all(torch.all(m.bias == 0) for m in PereiraCNN(bias_init=0.0).modules()
               if isinstance(m, nn.Linear))


def test_bad_settings():
    with pytest.raises(BrainbenchConfigError, match="convs_per_block"):
        PereiraCNN(convs_per_block=0)
