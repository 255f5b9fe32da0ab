"""Pereira et al.'s HGG and LGG patch classifiers (VGG-like 3×3 convs, then three FC layers).

Pereira S, Pinto A, Alves V, Silva CA. *Brain tumor segmentation using convolutional neural
networks in MRI images.* IEEE TMI 35(5):1240-1251, 2016. The full text was not available to the
spec; the tables are [M], corroborated by two public re-implementations (``architectures.md`` §2.2,
§2.4, §2.5).

Layer table (3×3 convs with zero "same" padding inside the 33×33 patch, stride 1; pools valid,
floor rounding)::

    #      op                            maps        size   params (w + b)
    in     input                         4           33
    1-3    conv 3×3 + LReLU(0.333)       64 (×3)     33     2,368 + 36,928 + 36,928
    P1     max-pool 3×3, stride 2        64          16
    4-6    conv 3×3 + LReLU              128 (×3)    16     73,856 + 147,584 + 147,584
    P2     max-pool 3×3, stride 2        128         7
    FC1    FC + LReLU + dropout          256         -      6272·256 + 256 = 1,605,888
    FC2    FC + LReLU + dropout          256         -      65,792
    FC3    FC (softmax by the caller)    5           -      1,285

HGG: 3 convs per block, dropout 0.1, 2,118,213 parameters. LGG: 2 convs per block (the first of
each block listed), dropout 0.5, 1,933,701 parameters. Kernels Glorot-uniform, biases 0.1 (§2.4;
the re-implementations disagree on uniform vs normal Glorot).

The model classifies the centre pixel of one 33×33 patch: forward (N, C, 33, 33) -> logits
(N, n_classes). Because of the in-patch "same" padding, sliding it over a slice is not a plain
fully-convolutional pass (§2.5): :mod:`brainbench.inference.patchwise` evaluates it patch by patch
(exact) or, only when asked, as an approximate dilated FCN.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError

__all__ = ["PATCH_SIZE", "PereiraCNN", "pereira_hgg", "pereira_lgg"]

PATCH_SIZE = 33
"""Input patch pixels per axis; the FC layers see all of it, so it is also the receptive field."""


def _pooled(size: int) -> int:
    """Valid 3×3 max-pool with stride 2, floor rounding: 33 -> 16 -> 7."""
    return (size - 3) // 2 + 1


class PereiraCNN(nn.Module):
    """Pereira et al.'s CNN; the HGG and LGG models differ in ``convs_per_block`` and ``dropout``."""

    margin = (PATCH_SIZE // 2, PATCH_SIZE // 2)
    """Patch pixels before and after the classified pixel, per axis."""

    def __init__(self, in_channels: int = 4, n_classes: int = 5, convs_per_block: int = 3,
                 block_maps: Sequence[int] = (64, 128), fc_units: Sequence[int] = (256, 256),
                 negative_slope: float = 0.333, dropout: float = 0.1, bias_init: float = 0.1):
        super().__init__()
        if convs_per_block < 1 or not 0.0 <= dropout < 1.0 or len(block_maps) != 2:
            raise BrainbenchConfigError(
                f"pereira model: expected convs_per_block >= 1, 0 <= dropout < 1 and two "
                f"block_maps, got {convs_per_block}, {dropout}, {list(block_maps)}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.negative_slope = negative_slope
        layers: list[nn.Module] = []
        channels = in_channels
        for maps in block_maps:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(channels, maps, 3, padding=1), nn.LeakyReLU(negative_slope)]
                channels = maps
            layers.append(nn.MaxPool2d(3, stride=2))
        self.features = nn.Sequential(*layers)
        side = _pooled(_pooled(PATCH_SIZE))
        units = [channels * side * side, *fc_units]
        fc: list[nn.Module] = [nn.Flatten()]
        for i in range(len(fc_units)):
            fc += [nn.Linear(units[i], units[i + 1]), nn.LeakyReLU(negative_slope), nn.Dropout(dropout)]
        fc.append(nn.Linear(units[-1], n_classes))
        self.classifier = nn.Sequential(*fc)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, bias_init)

    @property
    def receptive_field(self) -> int:
        """Input pixels per axis behind one output (33: the FC layers see the whole patch)."""
        return PATCH_SIZE

    def output_size(self, input_size: int) -> int:
        """Pixels per axis classified when every ``input_size`` window is a patch: H - 32."""
        return input_size - sum(self.margin)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != (PATCH_SIZE, PATCH_SIZE):
            raise ValueError(f"PereiraCNN: expected (N, C, {PATCH_SIZE}, {PATCH_SIZE}) patches, "
                             f"got {tuple(x.shape)}")
        return self.classifier(self.features(x))


def pereira_hgg(**kwargs) -> PereiraCNN:
    """The high-grade model: 3 convs per block, dropout 0.1 (2,118,213 parameters)."""
    return PereiraCNN(**{"convs_per_block": 3, "dropout": 0.1, **kwargs})


def pereira_lgg(**kwargs) -> PereiraCNN:
    """The low-grade model: 2 convs per block, dropout 0.5 (1,933,701 parameters)."""
    return PereiraCNN(**{"convs_per_block": 2, "dropout": 0.5, **kwargs})
