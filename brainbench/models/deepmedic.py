"""DeepMedic "Original" and DeepMedic+: the 11-layer two-pathway 3D CNNs of Kamnitsas et al.

Kamnitsas K, Ledig C, Newcombe VFJ, et al. *Efficient multi-scale 3D CNN with fully connected CRF
for accurate brain lesion segmentation.* Medical Image Analysis 36:61-78, 2017 (arXiv:1603.05959).
The configuration is the authors' ``examples/configFiles/deepMedicOriginal/model/modelConfig.cfg``
(deepmedic/deepmedic, branch ``dm_theano_v0.6.1_depr``), which their README says holds "the
parameters used in our work in [1]". Spec: ``architectures.md`` §3.2, §3.3, §3.6, §3.8.

Layer table (all convs valid, stride 1, no conv bias). ``pre`` is what the layer applies to its
*input* (§3.2); sizes are per axis for a 25³ training segment and a 45³ inference segment::

    #      pathway   pre                   kernel  maps                   train  inference
    in     normal    -                     -       C                      25     45
    N1     normal    input bias, linear    3³      30                     23     43
    N2-N8  normal    BN, PReLU             3³      30,40,40,40,40,50,50   9      29
    in     sub (x3)  -                     -       C                      19     26
    S1     sub       input bias, linear    3³      30                     17     24
    S2-S8  sub       BN, PReLU             3³      30,40,40,40,40,50,50   3      10
    U      sub       repeat x3, keep the first O   50                     9      29
    cat    -         concat(N8, U)         -       100                    9      29
    FC1    -         BN, PReLU, drop 0.0   1³      150                    9      29
    FC2    -         BN, PReLU, drop 0.5   1³      150                    9      29
    CL     -         BN, PReLU, drop 0.5   1³      n_classes              9      29
    out    -         + class bias (softmax is applied by the caller)

Trainable parameters for C = 4, 5 classes: **663,163** (§3.8), laid out as

* conv weights 660,330 = 2 x 27 x (4·30 + 30·30 + 30·40 + 3·40·40 + 40·50 + 50·50) + (100·150 +
  150·150 + 150·5);
* ``<pathway>.0.norm.bias``: one bias per input channel on each pathway's raw input, 2 x 4 = 8;
* ``<pathway>.{1..7}.norm`` (BatchNorm3d γ, β) and ``.act`` (PReLU α), one each per input channel
  of layers 2-8: 2 x 3 x 270 = 1,620;
* ``fc_pathway.{0,1,2}``: BN γ, β and PReLU α on the 100 + 150 + 150 FC inputs = 1,200;
* ``class_bias``: 5.

BN running mean/variance are buffers, not parameters. The conventional post-activation PyTorch
layout (conv, BN, PReLU) has the same count minus the 8 input biases (663,155), but a different
function: here the raw image gets no BN or activation (§3.10 pitfall 2).

DeepMedic+ (:class:`DeepMedicPlus`; spec §3.4, §3.6, §3.8). Kamnitsas K, Ferrante E, Parisot S, et
al. *DeepMedic for Brain Tumor Segmentation.* BrainLes 2016, LNCS 10154:138-149; configuration
``examples/configFiles/deepMedic/model/modelConfig.cfg`` on ``dm_theano_v0.6.1_depr``. Same table,
with three changes::

    #       change (reference key)                       what it does
    N4 N6 N8, S4 S6 S8  residual (layersWithResidualConnNormal/Subsampled = [4,6,8])
                        output of layer L += input of layer L-1, centre-cropped, in its first channels
                        (30 -> 40 at N4, 40 -> 50 at N8: zero-padded channels, no projection)
    FC1     kernelDimFor1stFcLayer = [3,3,3]              3³ kernel (100·150·27 weights); its input
                        is mirror-padded by 1 voxel per side first, so FC1 keeps the size: 9 / 29 again
    FC2     layersWithResidualConnFC = [2]                output of FC2 += input of FC1 (the 100
                        concatenated maps, centre of the padded input), zero-padded to 150 channels

The mirror repeats the edge voxel (``x[0], x[0], x[1] …``): the reference's ``padImageWithMirroring``
(Theano ``cnn3d.py``; ``ops.pad_by_mirroring`` on master) prepends ``x[p-1::-1]``, numpy's
``mode="symmetric"``. Pathway residuals sit before the next layer's BN (pre-activation blocks, §3.2),
as the reference adds them to the layer's output, which the next layer normalises. Receptive field:
19³ in the normal pathway; 17 or 18 coarse samples in the subsampled one (53³ voxels of context, §3.6).
Parameters for C = 4, 5 classes: **1,053,163** (§3.8): the Original's 663,163 with FC1's 15,000
weights replaced by 27·100·150 = 405,000; residuals and the mirror have none.

Documented differences from the reference code:

* BN inference statistics are PyTorch's exponential moving average (momentum 0.1), not the mean
  over the last 60 training batches (``rollAverageForBNOverThatManyBatches = 60``); both models.
* DeepMedic+ at inference mirror-pads FC1's input only at the volume border: a tile computes the
  extra voxel of FC context from the real features of its neighbours (see
  :mod:`brainbench.inference.dense`), where the reference mirrors at every tile border.
* The subsampled lattice is anchored to the volume at inference (see below), where the reference
  tiles 29³ outputs and so lets the lattice phase drift from tile to tile.

Segment geometry. An output block starting at normal-resolution voxel ``b`` with ``O`` voxels per axis
is predicted from

* the normal window ``[b - 8, b + O + 8)``;
* the subsampled input ``x[b - 8f + f·k]`` for ``k < ceil(O/f) + 16``: every f-th voxel, without
  averaging, of the window ``[b - 8f, b - 8f + f·(ceil(O/f) + 16))`` that is centred on the block
  when f divides O. Coarse output ``j`` is computed around lattice voxel ``b + f·j`` and, repeated f
  times, covers output voxels ``b + f·j … b + f·j + f - 1``; the trailing voxels beyond O are cropped.

This is the reference's relation (``getImagePartFromSubsampledImageForTraining`` starts the slice
at ``segment_start + 1 - 17`` for f = 3, step f; ``upsample_5D_tens_and_crop`` keeps the first O).
It puts each lattice voxel first in its coarse block rather than in its middle, so the coarse
context sits on average one voxel before the voxel it serves (f = 3); kept for fidelity.

The only freedom left is the lattice phase, i.e. which voxels share a coarse block; it is set by
``b mod f``. A training pair centred on ``c`` uses ``b = c - (O - 1)//2``, so its lattice moves with
the sampled centre and training sees the image at every lattice alignment. Inference tiles start on
multiples of f, so every tile samples the same global lattice (voxels ``≡ 0 mod f`` lead their
coarse blocks) and the tiled result equals one pass over the whole volume. A training pair
reproduces inference exactly when ``c - (O - 1)//2 ≡ 0 (mod f)``, e.g. ``c ≡ 1 (mod 3)`` per axis
for 25³ segments; at other centres it equals inference on the volume shifted by 1 or 2 voxels.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError

__all__ = [
    "CONV_LAYERS",
    "DeepMedic",
    "DeepMedicPlus",
    "extract_label_block",
    "extract_segment_pair",
    "extract_training_pair",
    "mirror_pad",
    "normal_window",
    "subsampled_window",
    "TwoPathwaySegments",
    "window",
]

CONV_LAYERS = 8
"""3³ valid convs per pathway: each removes one voxel per side, so the margin is 8 voxels."""


def _per_axis(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name}: expected an int or 3 ints, got {value!r}")
    return tuple(int(v) for v in values)


def positive_sizes(value: Sequence[int], count: int, name: str) -> tuple[int, ...]:
    """``count`` positive ints from a config list (widths, kernel sizes); a config error naming ``name``."""
    sizes = tuple(int(v) for v in value)
    if len(sizes) != count or min(sizes) < 1:
        raise BrainbenchConfigError(f"{name}: expected {count} positive ints, got {list(value)}")
    return sizes


def normal_window(start: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of the normal-pathway input predicting output voxels ``[start, start + size)``."""
    return start - CONV_LAYERS, start + size + CONV_LAYERS


def subsampled_window(start: int, size: int, factor: int = 3) -> tuple[int, int]:
    """``[lo, hi)`` whose every ``factor``-th voxel from ``lo`` is the subsampled input.

    ``hi - lo = factor · (ceil(size / factor) + 16)``; see the module docstring for the relation.
    """
    n = math.ceil(size / factor) + 2 * CONV_LAYERS
    lo = start - CONV_LAYERS * factor
    return lo, lo + factor * n


def window(array, lo: Sequence[int], hi: Sequence[int], step: int, fill):
    """``array[..., lo:hi:step]`` on the last three axes, with ``fill`` where it leaves the array.

    Works on numpy arrays and torch tensors (the result is the same kind, dtype and device).
    """
    counts = [-(-(h - l) // step) for l, h in zip(lo, hi)]
    shape = (*array.shape[:-3], *counts)
    if isinstance(array, Tensor):
        out = torch.full(shape, fill, dtype=array.dtype, device=array.device)
    else:
        out = np.full(shape, fill, dtype=array.dtype)
    src, dst = [...], [...]
    for l, n, extent in zip(lo, counts, array.shape[-3:]):
        k0 = max(0, -(l // step))
        k1 = min(n, -((l - extent) // step))
        if k1 <= k0:
            return out
        src.append(slice(l + step * k0, l + step * (k1 - 1) + 1, step))
        dst.append(slice(k0, k1))
    out[tuple(dst)] = array[tuple(src)]
    return out


def extract_segment_pair(volume, block_start: Sequence[int], block_size: int | Sequence[int],
                         factor: int = 3, lead: int | Sequence[int] = 0):
    """Both network inputs that predict one output block, zero-filled outside the volume.

    volume: (C, X, Y, Z) numpy array or tensor, not padded (inputs are z-scored, background 0).
    block_start: first output voxel per axis, in volume coordinates (may be negative).
    lead: the lattice starts ``lead`` voxels before the block (default: on its first voxel), i.e.
    the subsampled input is the one of the block widened by ``lead`` at its start; see
    :meth:`DeepMedic.trunk`.
    Returns ``(normal (C, O+16, …), subsampled (C, ceil((O+lead)/f)+16, …))`` of the volume's kind.
    """
    start = _per_axis(block_start, "block_start")
    size = _per_axis(block_size, "block_size")
    lead = _per_axis(lead, "lead")
    normal = [normal_window(b, o) for b, o in zip(start, size)]
    sub = [subsampled_window(b - l, o + l, factor) for b, o, l in zip(start, size, lead)]
    return (window(volume, [w[0] for w in normal], [w[1] for w in normal], 1, 0),
            window(volume, [w[0] for w in sub], [w[1] for w in sub], factor, 0))


def _block_start(center: Sequence[int], output_size: Sequence[int]) -> list[int]:
    """The reference's ``c - (O - 1)//2``: the block is centred on ``center`` (for odd O)."""
    return [c - (o - 1) // 2 for c, o in zip(center, output_size)]


def extract_training_pair(volume, center: Sequence[int], segment_size: int | Sequence[int] = 25,
                          factor: int = 3):
    """Training segments centred on ``center``: 25³ normal and 19³ subsampled for the defaults.

    volume: (C, X, Y, Z), not padded; windows leaving it are zero-filled. The model predicts the
    ``segment_size - 16`` block of :func:`extract_label_block` around ``center``.
    """
    segment = _per_axis(segment_size, "segment_size")
    output = [s - 2 * CONV_LAYERS for s in segment]
    if min(output) < 1:
        raise BrainbenchConfigError(
            f"segment_size: must be at least the receptive field {2 * CONV_LAYERS + 1}, got {segment}")
    return extract_segment_pair(volume, _block_start(_per_axis(center, "center"), output), output,
                                factor)


def extract_label_block(label, center: Sequence[int], output_size: int | Sequence[int] = 9,
                        fill: int = -100):
    """The (O, O, O) label target of the training pair centred on ``center``.

    label: (X, Y, Z) integer map, numpy or tensor. Voxels outside the volume get ``fill`` (default
    -100, the ``ignore_index`` of ``torch.nn.functional.cross_entropy``); the result is int64.
    """
    size = _per_axis(output_size, "output_size")
    lo = _block_start(_per_axis(center, "center"), size)
    hi = [b + o for b, o in zip(lo, size)]
    if isinstance(label, Tensor):
        return window(label.long(), lo, hi, 1, fill)
    array = np.asarray(label)
    info = np.iinfo(array.dtype) if np.issubdtype(array.dtype, np.integer) else None
    if info is None or not info.min <= fill <= info.max:
        array = array.astype(np.int64)
    # cut the block first and widen it after: the cached label is a memory-mapped int8 volume
    return window(array, lo, hi, 1, fill).astype(np.int64)


class _InputBias(nn.Module):
    """Per-channel bias on a pathway's raw input: the reference's first layer has no BN (§3.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(1, -1, 1, 1, 1)


class _PreActConv3d(nn.Module):
    """Reference block order: [BN or input bias] -> PReLU or linear -> dropout -> conv (no bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 raw_input: bool = False, dropout: float = 0.0):
        super().__init__()
        self.norm = _InputBias(in_channels) if raw_input else nn.BatchNorm3d(in_channels)
        self.act = nn.Identity() if raw_input else nn.PReLU(in_channels, init=0.01)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.drop(self.act(self.norm(x))))


def mirror_pad(x: Tensor, pad: int) -> Tensor:
    """Pad the last three axes by ``pad`` voxels per side with their mirror image, edge repeated.

    ``x[p-1], …, x[0], x[0], x[1], …``: the reference's ``padImageWithMirroring`` (numpy's
    ``mode="symmetric"``), which DeepMedic+ applies to the input of its 3³ FC1 (spec §3.4).
    Needs ``pad`` <= every spatial size. Keeps the memory format.
    """
    for axis in (-3, -2, -1):
        n = x.shape[axis]
        x = torch.cat([x.narrow(axis, 0, pad).flip(axis), x, x.narrow(axis, n - pad, pad).flip(axis)],
                      dim=axis)
    return x


def _add_residual(deeper: Tensor, earlier: Tensor) -> Tensor:
    """``deeper`` plus the centre of ``earlier`` in its first channels, in place (spec §3.4).

    The reference's ``makeResidualConnectionBetweenLayersAndReturnOutput``: the centre is
    ``getMiddlePartOfFms`` (start ``(S - 1)//2 - (s - 1)//2``), the earlier tensor's missing
    channels count as zeros (no projection), surplus ones are dropped. ``deeper`` is a fresh conv
    output, which no backward pass needs, so adding in place is safe under autograd.
    """
    crop = [slice((big - 1) // 2 - (small - 1) // 2, (big - 1) // 2 - (small - 1) // 2 + small)
            for big, small in zip(earlier.shape[2:], deeper.shape[2:])]
    channels = min(deeper.shape[1], earlier.shape[1])
    deeper[:, :channels] += earlier[(slice(None), slice(0, channels), *crop)]
    return deeper


class _Pathway(nn.Sequential):
    """Pre-activation blocks run in order, with the reference's residual connections.

    ``residual_layers`` are 1-based layer numbers L as in the reference config: the input of layer
    L - 1 is added to the output of layer L (:func:`_add_residual`); layer 1 has no predecessor.
    """

    def __init__(self, *blocks: nn.Module, residual_layers: Sequence[int] = ()):
        super().__init__(*blocks)
        self.residual_layers = tuple(residual_layers)

    def output_is_private(self, number: int) -> bool:
        """Whether layer ``number``'s output only feeds the next layer: no residual is added to it
        and none takes it (it is the input of layer ``number + 1``, which layer ``number + 2`` adds)."""
        return number not in self.residual_layers and number + 2 not in self.residual_layers

    def forward(self, x: Tensor) -> Tensor:
        held = {}
        for number, block in enumerate(self, start=1):
            if number + 1 in self.residual_layers:
                held[number + 1] = x
            out = block(x)
            x = _add_residual(out, held.pop(number)) if number in held else out
        return x


def _checked_residuals(name: str, layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
    layers = tuple(int(layer) for layer in layers)
    if any(not 2 <= layer <= n_layers for layer in layers):
        raise BrainbenchConfigError(
            f"{name}: residual layer numbers must lie in 2..{n_layers} (layer L gets the input of "
            f"layer L - 1), got {list(layers)}")
    return layers


def _conv_pathway(in_channels: int, feature_maps: Sequence[int],
                  residual_layers: Sequence[int]) -> _Pathway:
    channels = [in_channels, *feature_maps]
    return _Pathway(*(_PreActConv3d(channels[i], channels[i + 1], 3, raw_input=i == 0)
                      for i in range(len(feature_maps))), residual_layers=residual_layers)


class DeepMedic(nn.Module):
    """Two-pathway DeepMedic "Original"; returns logits (softmax is the caller's job).

    forward(normal (N, C, I…), subsampled (N, C, L…)) -> (N, n_classes, O…) with O = I - 16 and
    L = ceil(O / subsample_factor) + 16 per axis; axes may differ.

    ``residual_layers``, ``fc_residual_layers`` and ``fc1_kernel`` are DeepMedic+'s changes
    (:class:`DeepMedicPlus`, spec §3.4); the defaults give the Original (§3.3). An FC1 kernel k > 1
    mirror-pads FC1's input by ``fc_margin`` = (k - 1)/2 voxels per side, so O stays I - 16.

    Inference by tiles uses the two halves of ``forward`` apart: :meth:`trunk` (both conv
    pathways, upsampling and concatenation) on a block ``fc_margin`` voxels wider per side, and
    :meth:`head` (FC pathway without padding), so that only the volume border is mirrored.
    """

    def __init__(self, in_channels: int = 4, n_classes: int = 5,
                 feature_maps: Sequence[int] = (30, 30, 40, 40, 40, 40, 50, 50),
                 subsampled_feature_maps: Sequence[int] | None = None,
                 subsample_factor: int = 3, fc_feature_maps: Sequence[int] = (150, 150),
                 fc_dropout: Sequence[float] = (0.0, 0.5, 0.5), residual_layers: Sequence[int] = (),
                 fc_residual_layers: Sequence[int] = (), fc1_kernel: int = 1):
        super().__init__()
        feature_maps = tuple(feature_maps)
        subsampled = feature_maps if subsampled_feature_maps is None else tuple(subsampled_feature_maps)
        for name, maps in (("feature_maps", feature_maps), ("subsampled_feature_maps", subsampled)):
            if len(maps) != CONV_LAYERS:
                raise BrainbenchConfigError(
                    f"{name}: DeepMedic has {CONV_LAYERS} conv layers per pathway, got {list(maps)}")
        if len(fc_dropout) != len(fc_feature_maps) + 1:
            raise BrainbenchConfigError(
                f"fc_dropout: one rate per FC input ({len(fc_feature_maps) + 1}), got {list(fc_dropout)}")
        if subsample_factor < 1:
            raise BrainbenchConfigError(f"subsample_factor: must be >= 1, got {subsample_factor}")
        if fc1_kernel < 1 or fc1_kernel % 2 == 0:
            raise BrainbenchConfigError(f"fc1_kernel: must be a positive odd size, got {fc1_kernel}")
        residual_layers = _checked_residuals("residual_layers", residual_layers, CONV_LAYERS)
        fc = [feature_maps[-1] + subsampled[-1], *fc_feature_maps, n_classes]
        fc_residual_layers = _checked_residuals("fc_residual_layers", fc_residual_layers, len(fc) - 1)
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.subsample_factor = subsample_factor
        self.fc_margin = (fc1_kernel - 1) // 2
        self.normal_pathway = _conv_pathway(in_channels, feature_maps, residual_layers)
        self.subsampled_pathway = _conv_pathway(in_channels, subsampled, residual_layers)
        self.fc_pathway = _Pathway(*(_PreActConv3d(fc[i], fc[i + 1], fc1_kernel if i == 0 else 1,
                                                   dropout=fc_dropout[i])
                                     for i in range(len(fc) - 1)), residual_layers=fc_residual_layers)
        self.class_bias = nn.Parameter(torch.zeros(n_classes))

    @property
    def receptive_field(self) -> int:
        """Normal-pathway receptive field in voxels per axis: 17, or 19 with a 3³ FC1."""
        return 2 * (CONV_LAYERS + self.fc_margin) + 1

    @property
    def subsampled_receptive_field(self) -> int:
        """Context of the subsampled pathway in normal-resolution voxels per axis: 17·3 = 51, plus
        the FC1 margin either side (53 for DeepMedic+, spec §3.6)."""
        return (2 * CONV_LAYERS + 1) * self.subsample_factor + 2 * self.fc_margin

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, int, int]:
        """Output voxels per axis for a normal input of ``input_size``: I - 16."""
        return tuple(i - 2 * CONV_LAYERS for i in _per_axis(input_size, "input_size"))

    def subsampled_input_size(self, output_size: int | Sequence[int],
                              lead: int | Sequence[int] = 0) -> tuple[int, int, int]:
        """Subsampled input voxels per axis for ``output_size``: ceil((O + lead) / factor) + 16.

        ``lead``: voxels by which the first lattice voxel precedes the block (:meth:`trunk`).
        """
        return tuple(math.ceil((o + l) / self.subsample_factor) + 2 * CONV_LAYERS
                     for o, l in zip(_per_axis(output_size, "output_size"), _per_axis(lead, "lead")))

    def trunk(self, normal: Tensor, subsampled: Tensor, lead: int | Sequence[int] = 0) -> Tensor:
        """Both conv pathways, the subsampled one upsampled by repetition, concatenated: (N, 50 + 50, O…).

        The subsampled input's first sample is the lattice voxel ``lead`` voxels before the block
        (0 in training; see :func:`extract_segment_pair`), so output voxel p takes coarse output
        ``(p + lead) // factor``: the reference's repeat-and-keep-the-first-O for lead 0 (§3.3).
        """
        lead = _per_axis(lead, "lead")
        out_size = self.output_size(normal.shape[2:])
        if min(out_size) < 1 or subsampled.shape[0] != normal.shape[0] or \
                tuple(subsampled.shape[2:]) != self.subsampled_input_size(out_size, lead):
            raise ValueError(
                f"DeepMedic inputs: normal {tuple(normal.shape)} needs spatial size >= 17 and a "
                f"subsampled input of spatial size {self.subsampled_input_size(out_size, lead)} with "
                f"the same batch, got {tuple(subsampled.shape)}")
        high = self.normal_pathway(normal)
        low = self.subsampled_pathway(subsampled)
        features = torch.empty((high.shape[0], high.shape[1] + low.shape[1], *out_size),
                               dtype=high.dtype, device=high.device, memory_format=_memory_format(high))
        features[:, :high.shape[1]] = high
        _upsample_by_repetition_into(features[:, high.shape[1]:], low, self.subsample_factor, lead)
        return features

    def head(self, features: Tensor) -> Tensor:
        """The FC pathway on ``trunk`` features, unpadded, plus the class bias: the logits of the
        voxels at least ``fc_margin`` from the border of ``features``."""
        return self.fc_pathway(features) + self.class_bias.view(1, -1, 1, 1, 1)

    def forward(self, normal: Tensor, subsampled: Tensor) -> Tensor:
        features = self.trunk(normal, subsampled)
        return self.head(mirror_pad(features, self.fc_margin) if self.fc_margin else features)

    def folded_for_inference(self) -> DeepMedic:
        """An eval-mode copy computing the same function with fewer passes over memory; inference only.

        Each eval-mode BN whose input is a conv output used nowhere else is an affine map per
        channel, folded into that conv (weights scaled per output channel, a bias added) and
        replaced by an identity; FC1's BN on the concatenation is split between the two pathways'
        last convs (repetition upsampling commutes with it). Each pathway's input bias goes into the
        bias of its first conv, exactly: a valid conv sees the bias on every input voxel, zero
        fill included. DeepMedic: all 17 BNs are folded; DeepMedic+: 9 of 17, since residual
        inputs and outputs must stay raw. On a 1 mm BraTS brain box a BN pass over a 0.5-1.6 GB
        activation costs 0.1-1.5 s on 2 CPU cores, next to 1-5 s for its conv.
        """
        model = copy.deepcopy(self).eval()
        normal, subsampled, fc = model.normal_pathway, model.subsampled_pathway, model.fc_pathway
        with torch.no_grad():
            for pathway in (normal, subsampled):
                _fold_input_bias(pathway[0])
                for number in range(1, len(pathway)):
                    if pathway.output_is_private(number):
                        _fold_batch_norm(pathway[number - 1], pathway[number])
            if 2 not in fc.residual_layers and normal.output_is_private(len(normal)) and \
                    subsampled.output_is_private(len(subsampled)):
                high = normal[-1].conv.out_channels
                _fold_batch_norm(normal[-1], fc[0], slice(0, high))
                _fold_batch_norm(subsampled[-1], fc[0], slice(high, None))
            for number in range(1, len(fc)):
                if fc.output_is_private(number):
                    _fold_batch_norm(fc[number - 1], fc[number])
        return model


class DeepMedicPlus(DeepMedic):
    """DeepMedic+ (BRATS 2016, spec §3.4): the Original with residual connections at layers 4, 6, 8
    of both conv pathways, a 3³ FC1 on a mirror-padded input, and an FC residual at FC2.

    Same arguments as :class:`DeepMedic`, with DeepMedic+'s defaults; 1,053,163 parameters for
    4 channels and 5 classes (§3.8). Training segments of 25³ still predict 9³.
    """

    def __init__(self, *args, residual_layers: Sequence[int] = (4, 6, 8),
                 fc_residual_layers: Sequence[int] = (2,), fc1_kernel: int = 3, **kwargs):
        super().__init__(*args, residual_layers=residual_layers, fc_residual_layers=fc_residual_layers,
                         fc1_kernel=fc1_kernel, **kwargs)


def _with_bias(block: _PreActConv3d, weight: Tensor, bias: Tensor) -> None:
    conv = block.conv
    block.conv = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=True,
                           device=weight.device, dtype=weight.dtype)
    block.conv.weight.copy_(weight)
    block.conv.bias.copy_(bias)


def _fold_input_bias(block: _PreActConv3d) -> None:
    """conv(x + b) = conv(x) + sum_{i,k} W[o, i, k] b_i for a valid conv: into the conv's bias."""
    weight = block.conv.weight
    _with_bias(block, weight, weight.sum(dim=(2, 3, 4)) @ block.norm.bias)
    block.norm = nn.Identity()


def _fold_batch_norm(block: _PreActConv3d, consumer: _PreActConv3d,
                     channels: slice = slice(None)) -> None:
    """Fold ``consumer``'s eval-mode BN (its ``channels``) into ``block``'s conv, whose output they
    normalise: BN(x) = s x + t per channel, s = γ / sqrt(var + eps), t = β - mean s.

    ``consumer.norm`` becomes an identity once all its channels are folded (the last call).
    """
    norm = consumer.norm
    scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps))[channels]
    shift = norm.bias[channels] - norm.running_mean[channels] * scale
    conv = block.conv
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    _with_bias(block, conv.weight * scale.view(-1, 1, 1, 1, 1), bias * scale + shift)
    if channels.stop is None:
        consumer.norm = nn.Identity()


def _memory_format(x: Tensor) -> torch.memory_format:
    """Channels-last 3D if ``x`` (N, C, X, Y, Z) is laid out so (inference), else contiguous."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return torch.channels_last_3d if channels_last else torch.contiguous_format


def _upsample_by_repetition_into(out: Tensor, low: Tensor, factor: int, lead: Sequence[int]) -> None:
    """``out[..., p, q, r] = low[..., (p + lead) // factor, …]`` per spatial axis, written in place.

    One strided copy per phase combination (factor³ of them), so the repeated maps are written
    once, straight into the concatenation, in ``out``'s memory format.
    """
    per_axis = []
    for size, shift in zip(out.shape[2:], lead):
        phases = []
        for first in range(min(factor, size)):
            coarse = (first + shift) // factor
            count = len(range(first, size, factor))
            phases.append((slice(first, None, factor), slice(coarse, coarse + count)))
        per_axis.append(phases)
    for (ox, lx), (oy, ly), (oz, lz) in itertools.product(*per_axis):
        out[:, :, ox, oy, oz] = low[:, :, lx, ly, lz]


@dataclass(frozen=True)
class TwoPathwaySegments:
    """DeepMedic training segments: normal ``(C, S, S, S)`` and subsampled inputs, ``(O, O, O)`` target.

    A flip reflects the volume along x (a view, nothing copied) and cuts the pair at the reflected
    centre, as the reference reflects whole images before extraction: both pathways then see what
    inference on the reflected volume sees. Flipping the cut pair instead would move the subsampled
    context from offsets -28…+26 to -26…+28 around the centre (the lattice is not symmetric).

    Args:
        segment_size: normal-pathway segment edge in voxels (paper: 25, predicting 9³).
        subsample_factor: the subsampled pathway's factor (paper: 3).
        flip_x_probability: reflect along x with this probability when augmenting (paper: 0.5,
            ``reflectImagesPerAxis = [True, False, False]``).
    """

    segment_size: int = 25
    subsample_factor: int = 3
    flip_x_probability: float = 0.5

    @property
    def output_size(self) -> int:
        return self.segment_size - 2 * CONV_LAYERS

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator, augment: bool = True) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        if augment and rng.random() < self.flip_x_probability:
            image, label = np.flip(image, axis=-3), np.flip(label, axis=-3)
            centre = (image.shape[-3] - 1 - centre[0], *centre[1:])
        pair = extract_training_pair(image, centre, self.segment_size, self.subsample_factor)
        return pair, extract_label_block(label, centre, self.output_size)
