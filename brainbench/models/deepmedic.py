"""DeepMedic "Original": the 11-layer two-pathway 3D CNN of Kamnitsas et al.

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

Documented differences from the reference code:

* BN inference statistics are PyTorch's exponential moving average (momentum 0.1), not the mean
  over the last 60 training batches (``rollAverageForBNOverThatManyBatches = 60``).
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
    "extract_label_block",
    "extract_segment_pair",
    "extract_training_pair",
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
                         factor: int = 3):
    """Both network inputs that predict one output block, zero-filled outside the volume.

    volume: (C, X, Y, Z) numpy array or tensor, not padded (inputs are z-scored, background 0).
    block_start: first output voxel per axis, in volume coordinates (may be negative).
    Returns ``(normal (C, O+16, …), subsampled (C, ceil(O/f)+16, …))`` of the volume's kind.
    """
    start = _per_axis(block_start, "block_start")
    size = _per_axis(block_size, "block_size")
    normal = [normal_window(b, o) for b, o in zip(start, size)]
    sub = [subsampled_window(b, o, factor) for b, o in zip(start, size)]
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


def _conv_pathway(in_channels: int, feature_maps: Sequence[int]) -> nn.Sequential:
    channels = [in_channels, *feature_maps]
    return nn.Sequential(*(_PreActConv3d(channels[i], channels[i + 1], 3, raw_input=i == 0)
                           for i in range(len(feature_maps))))


class DeepMedic(nn.Module):
    """Two-pathway DeepMedic "Original"; returns logits (softmax is the caller's job).

    forward(normal (N, C, I…), subsampled (N, C, L…)) -> (N, n_classes, O…) with O = I - 16 and
    L = ceil(O / subsample_factor) + 16 per axis; axes may differ.
    """

    def __init__(self, in_channels: int = 4, n_classes: int = 5,
                 feature_maps: Sequence[int] = (30, 30, 40, 40, 40, 40, 50, 50),
                 subsampled_feature_maps: Sequence[int] | None = None,
                 subsample_factor: int = 3, fc_feature_maps: Sequence[int] = (150, 150),
                 fc_dropout: Sequence[float] = (0.0, 0.5, 0.5)):
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
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.subsample_factor = subsample_factor
        self.normal_pathway = _conv_pathway(in_channels, feature_maps)
        self.subsampled_pathway = _conv_pathway(in_channels, subsampled)
        fc = [feature_maps[-1] + subsampled[-1], *fc_feature_maps, n_classes]
        self.fc_pathway = nn.Sequential(*(_PreActConv3d(fc[i], fc[i + 1], 1, dropout=fc_dropout[i])
                                          for i in range(len(fc) - 1)))
        self.class_bias = nn.Parameter(torch.zeros(n_classes))

    @property
    def receptive_field(self) -> int:
        """Normal-pathway receptive field in voxels per axis (17)."""
        return 2 * CONV_LAYERS + 1

    @property
    def subsampled_receptive_field(self) -> int:
        """Context of the subsampled pathway in normal-resolution voxels per axis (17·3 = 51)."""
        return self.receptive_field * self.subsample_factor

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, int, int]:
        """Output voxels per axis for a normal input of ``input_size``: I - 16."""
        return tuple(i - 2 * CONV_LAYERS for i in _per_axis(input_size, "input_size"))

    def subsampled_input_size(self, output_size: int | Sequence[int]) -> tuple[int, int, int]:
        """Subsampled input voxels per axis for ``output_size``: ceil(O / factor) + 16."""
        return tuple(math.ceil(o / self.subsample_factor) + 2 * CONV_LAYERS
                     for o in _per_axis(output_size, "output_size"))

    def forward(self, normal: Tensor, subsampled: Tensor) -> Tensor:
        out_size = self.output_size(normal.shape[2:])
        if min(out_size) < 1 or subsampled.shape[0] != normal.shape[0] or \
                tuple(subsampled.shape[2:]) != self.subsampled_input_size(out_size):
            raise ValueError(
                f"DeepMedic inputs: normal {tuple(normal.shape)} needs spatial size >= 17 and a "
                f"subsampled input of spatial size {self.subsampled_input_size(out_size)} with the "
                f"same batch, got {tuple(subsampled.shape)}")
        high = self.normal_pathway(normal)
        low = self.subsampled_pathway(subsampled)
        f = self.subsample_factor
        for axis in (2, 3, 4):
            low = low.repeat_interleave(f, dim=axis)
        low = low[:, :, :out_size[0], :out_size[1], :out_size[2]]
        logits = self.fc_pathway(torch.cat([high, low], dim=1))
        return logits + self.class_bias.view(1, -1, 1, 1, 1)


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
