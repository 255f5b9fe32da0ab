"""3D U-Net of Çiçek et al., brainbench's modern reference model.

Çiçek Ö, Abdulkadir A, Lienkamp SS, Brox T, Ronneberger O. *3D U-Net: Learning Dense Volumetric
Segmentation from Sparse Annotation.* MICCAI 2016, LNCS 9901:424-432 (arXiv:1606.06650). The
review's MRBrainS13 table ranks "FBI/LMB Freiburg, U-Net (3D)" 5th.

Layer table (paper §2 and Fig. 1, default ``widths=(32, 64, 128, 256)``). Every 3³ conv is
followed by BatchNorm and ReLU ("BN before each ReLU"); maps are listed input → output::

    level  analysis path                  synthesis path (fed by the level below)
    1      3³, 3³        C → 32 → 64      up 128 → 128, concat 64 + 128, 3³ → 64, 3³ → 64
    2      pool, 3³, 3³  64 → 64 → 128    up 256 → 256, concat 128 + 256, 3³ → 128, 3³ → 128
    3      pool, 3³, 3³  128 → 128 → 256  up 512 → 512, concat 256 + 512, 3³ → 256, 3³ → 256
    4      pool, 3³, 3³  256 → 256 → 512  (bottom)
    out    1³ conv on level 1's synthesis output: 64 → n_classes

    pool: 2³ max-pool, stride 2; up: 2³ up-convolution, stride 2. Sizes along x of the paper's
    132×132×116 input with padding="valid" (its z axis: 116 → 28; "same" keeps each level's size):
    132 → 128 | 64 → 60 | 30 → 26 | 13 → 9 | up 18 → 14 | up 28 → 24 | up 48 → 44

``widths[l]`` is the first conv of level ``l`` and its second conv doubles it (the paper doubles
the maps *before* pooling to avoid bottlenecks); the synthesis convs of level ``l`` have
``2·widths[l]`` maps, as many as the analysis features they receive. Up-convolutions keep the number
of maps (Fig. 1: 512 concatenated with 256); the concatenation puts the analysis features first.

Parameters for the paper's 3 channels and 3 labels: 19,074,627, of which BN γ and β are 4,672; the
other 19,069,955 are exactly the paper's stated total, which therefore counts conv weights and
biases and up-conv weights but no up-conv biases: the up-convs have none here either. MRBrainS13 (3
channels, 4 classes): 19,074,692.

Deviations, logged by the config with the paper's value beside them:

* ``padding="same"`` (default) pads every 3³ conv by 1, so the output has the input's size and
  sliding windows tile the volume; the paper's ``"valid"`` convs shrink the input by 44 voxels per
  side (4 levels) and centre-crop the skip features, both supported here.
* Weight initialisation is not stated in the paper: PyTorch's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError
from brainbench.models.deepmedic import _per_axis, extract_label_block, window

__all__ = ["PatchSegments", "UNet3D"]

PADDINGS = ("same", "valid")
CONVS_PER_LEVEL = 2
"""3³ convs per level and path: each removes one voxel per side when ``padding="valid"``."""


def _double_conv(in_channels: int, mid_channels: int, out_channels: int, padding: int) -> nn.Sequential:
    """Two 3³ convs, each followed by BN and ReLU (paper §2: "BN before each ReLU")."""
    layers: list[nn.Module] = []
    for cin, cout in ((in_channels, mid_channels), (mid_channels, out_channels)):
        layers += [nn.Conv3d(cin, cout, 3, padding=padding), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _concat(skip: Tensor, up: Tensor) -> Tensor:
    """``cat([skip, up])`` over channels, the skip centre-cropped to up's size (paper Fig. 1; a
    no-op crop for "same" padding). The crop offsets are even, so that skip voxel ``i`` lies in the
    pooling window of the coarse voxel up-voxel ``i`` comes from, as with "same" padding."""
    lo = [(have - want) // 2 for have, want in zip(skip.shape[2:], up.shape[2:])]
    size = up.shape[2:]
    return torch.cat([skip[..., lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]], up],
                     dim=1)


class UNet3D(nn.Module):
    """3D U-Net (see the module docstring for the layer table); returns logits.

    forward(x (N, in_channels, X, Y, Z)) -> (N, n_classes, X', Y', Z') with
    ``(X', Y', Z') = output_size((X, Y, Z))``: the input size for ``padding="same"``, 88 voxels less
    per axis for ``"valid"`` with 4 levels. Each axis must be a valid input size:
    ``min_input_size + k·size_step`` (8, 16, 24, … for "same"; 92, 100, 108, … for "valid").

    Args:
        in_channels: image channels (MRBrainS13: 3, T1, T1_IR, FLAIR).
        n_classes: output classes including background (MRBrainS13: 4).
        widths: first conv's maps at each level, top to bottom; the number of levels is their count
            (paper: (32, 64, 128, 256), four levels).
        padding: ``"same"`` (brainbench's default) or ``"valid"`` (the paper's).
    """

    def __init__(self, in_channels: int, n_classes: int, widths: Sequence[int] = (32, 64, 128, 256),
                 padding: str = "same"):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise BrainbenchConfigError(f"widths: expected one or more positive ints, got {list(widths)}")
        if padding not in PADDINGS:
            raise BrainbenchConfigError(f"padding: expected one of {', '.join(PADDINGS)}, got {padding!r}")
        self.in_channels, self.n_classes, self.widths, self.padding = in_channels, n_classes, widths, padding
        pad = 1 if padding == "same" else 0
        maps = [2 * w for w in widths]
        self.analysis = nn.ModuleList(
            _double_conv(in_channels if level == 0 else maps[level - 1], w, maps[level], pad)
            for level, w in enumerate(widths))
        self.pool = nn.MaxPool3d(2, stride=2)
        # synthesis modules, top to bottom: level l receives level l+1's maps
        self.up = nn.ModuleList(nn.ConvTranspose3d(maps[l + 1], maps[l + 1], 2, stride=2, bias=False)
                                for l in range(len(widths) - 1))
        self.synthesis = nn.ModuleList(_double_conv(maps[l] + maps[l + 1], maps[l], maps[l], pad)
                                       for l in range(len(widths) - 1))
        self.classifier = nn.Conv3d(maps[0], n_classes, 1)
        self.size_step = 2 ** (len(widths) - 1)
        """Valid input sizes per axis are ``min_input_size + k·size_step`` (one 2× pooling per level)."""
        self.min_input_size = next(s for s in range(1, 64 * self.size_step)
                                   if self._output_extent(s) is not None)
        """The smallest valid input size per axis."""
        self.margin = (self.min_input_size - self._output_extent(self.min_input_size)) // 2
        """Voxels per side that the output is smaller than the input (0 for "same", 44 for "valid")."""

    @property
    def levels(self) -> int:
        return len(self.widths)

    def _output_extent(self, size: int) -> int | None:
        """Output voxels along one axis for an input of ``size``, or ``None`` when invalid: every
        max-pooled size must be even and every conv must leave at least one voxel."""
        shrink = 0 if self.padding == "same" else 2 * CONVS_PER_LEVEL
        for level in range(self.levels):
            if level:
                if size % 2:
                    return None
                size //= 2
            size -= shrink
            if size < 1:
                return None
        for _ in range(self.levels - 1):
            size = 2 * size - shrink
            if size < 1:
                return None
        return size

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, int, int]:
        """Output voxels per axis; raises BrainbenchConfigError for an invalid input size."""
        sizes = _per_axis(input_size, "input_size")
        out = [self._output_extent(s) for s in sizes]
        if None in out:
            raise BrainbenchConfigError(
                f"input_size: {sizes} is not a {self.levels}-level 3D U-Net input with padding="
                f"{self.padding!r}: each axis must be {self.min_input_size} + a multiple of "
                f"{self.size_step} (e.g. {self.valid_input_size(sizes)})")
        return tuple(out)

    def valid_input_size(self, size: int | Sequence[int]) -> tuple[int, int, int]:
        """The smallest valid input size at least ``size``, per axis."""
        lowest, step = self.min_input_size, self.size_step
        return tuple(lowest + step * max(0, math.ceil((s - lowest) / step)) for s in _per_axis(size, "size"))

    @property
    def receptive_field(self) -> int:
        """Input voxels per axis that can influence one output voxel, for the least favourable of
        the ``size_step`` output positions relative to the pooling grid (their extents differ).
        The same for both paddings, away from the volume border."""
        return max(hi - lo + 1 for lo, hi in (self._synthesis_span(0, p, p) for p in range(self.size_step)))

    def _analysis_span(self, level: int, lo: int, hi: int) -> tuple[int, int]:
        """Input voxels ``[lo', hi']`` feeding voxels ``[lo, hi]`` of analysis level ``level``'s
        output, in "same" coordinates (level-``l`` voxel ``i`` pools input voxels ``i·2^l …``)."""
        for l in reversed(range(level + 1)):
            lo, hi = lo - CONVS_PER_LEVEL, hi + CONVS_PER_LEVEL
            if l:
                lo, hi = 2 * lo, 2 * hi + 1  # max-pool 2, stride 2
        return lo, hi

    def _synthesis_span(self, level: int, lo: int, hi: int) -> tuple[int, int]:
        """As :meth:`_analysis_span` for synthesis level ``level``'s output (the bottom's analysis
        output at the last level): the union of the skip's and the up-conv's spans."""
        if level == self.levels - 1:
            return self._analysis_span(level, lo, hi)
        lo, hi = lo - CONVS_PER_LEVEL, hi + CONVS_PER_LEVEL
        skip = self._analysis_span(level, lo, hi)
        deep = self._synthesis_span(level + 1, lo // 2, hi // 2)  # up-conv 2, stride 2: voxel i from i // 2
        return min(skip[0], deep[0]), max(skip[1], deep[1])

    def forward(self, x: Tensor) -> Tensor:
        self.output_size(x.shape[2:])
        skips = []
        for level, block in enumerate(self.analysis):
            x = block(self.pool(x) if level else x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(self.levels - 1)):
            # one expression, so that the skip and the up-conv output are freed once concatenated
            x = self.synthesis[level](_concat(skips.pop(), self.up[level](x)))
        return self.classifier(x)


def random_reflection(image: np.ndarray, label: np.ndarray, centre: Sequence[int], rng: np.random.Generator,
                      probability: float) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Image (C, X, Y, Z), label (X, Y, Z) and centre reflected along each axis independently with
    ``probability``: views of the reflected volume (nothing copied) and the centre's mirrored place,
    so that a window cut there is the window of the reflected volume (not a reflected window, which
    would move the target of an even-sized or asymmetric window)."""
    centre = list(centre)
    if probability > 0:
        for axis, flip in enumerate(rng.random(3) < probability):
            if flip:
                image, label = np.flip(image, axis=axis - 3), np.flip(label, axis=axis - 3)
                centre[axis] = label.shape[axis] - 1 - centre[axis]
    return image, label, centre


@dataclass(frozen=True)
class PatchSegments:
    """3D U-Net training pairs: a (C, P, P, P) image window and its (T, T, T) int64 label target.

    Both are centred on the sampled voxel ``c`` as in :func:`~brainbench.models.deepmedic.
    extract_label_block`: an edge ``S`` spans ``[c - (S - 1)//2, c - (S - 1)//2 + S)`` per axis,
    so the target sits in the middle of the window when ``P - T`` is even (a "valid" net's margin
    on both sides). Image voxels outside the volume are 0 (the cache is z-scored with background
    0), label voxels -100 (cross-entropy's ignore index). Sizes may be one int or three.

    A flip reflects the volume along an axis (a view, nothing copied) and cuts the pair at the
    reflected centre, as :class:`~brainbench.models.deepmedic.TwoPathwaySegments` does; each axis
    flips independently with ``flip_probability`` when augmenting.

    Args:
        patch_size: P, a valid input size of the net (``UNet3D.valid_input_size``); the paper
            trains "valid" nets on 132×132×116 windows.
        target_size: T; ``None``: P (``padding="same"``). For ``"valid"`` nets ``output_size(P)``,
            e.g. 44×44×28 for the paper's window.
        flip_probability: per axis, when augmenting. The paper does not flip (its augmentation:
            rotation, scaling, gray values, smooth elastic deformation); nnU-Net mirrors with 0.5.
    """

    patch_size: int | Sequence[int]
    target_size: int | Sequence[int] | None = None
    flip_probability: float = 0.0

    def __post_init__(self):
        for name in ("patch_size", "target_size"):
            value = getattr(self, name)
            if value is not None and min(_per_axis(value, name)) < 1:
                raise BrainbenchConfigError(f"{name}: expected positive sizes, got {value!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise BrainbenchConfigError(f"flip_probability: must be in [0, 1], got {self.flip_probability}")

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator, augment: bool = True) -> tuple[tuple[np.ndarray], np.ndarray]:
        if augment:
            image, label, centre = random_reflection(image, label, centre, rng, self.flip_probability)
        patch = _per_axis(self.patch_size, "patch_size")
        lo = [c - (p - 1) // 2 for c, p in zip(centre, patch)]
        target = patch if self.target_size is None else self.target_size
        return ((window(image, lo, [l + p for l, p in zip(lo, patch)], 1, 0),),
                extract_label_block(label, centre, target))
