"""3D convolutional encoder network with shortcut (CEN-s) of Brosch et al. 2016, and its training input.

Brosch T, Tang LYW, Yoo Y, Li DKB, Traboulsee A, Tam R. *Deep 3D Convolutional Encoder Networks With
Shortcuts for Multiscale Feature Integration Applied to Multiple Sclerosis Lesion Segmentation.*
IEEE Transactions on Medical Imaging 35(5):1229-1239, 2016. Spec: ``architectures.md`` §4.

**The layer table is a reconstruction [M] (spec §4.2), not read from the paper**: the kernel sizes,
filter counts, the sum form of the shortcut, the unpooling, the activations and the loss weight r are
unverified; every one is an argument here so that a run records which assumption it used (spec §6.5).
The seven layers, per axis for the spec's 164-voxel example with the default 9³ kernels::

    #  layer                        kernel      maps          size
    1  input                        -           C             164
    2  conv C1, valid, ReLU         k1³ = 9³    F1 = 32       156
    3  average pool, stride 2       2³          F1            78
    4  conv C2, valid, ReLU         k2³ = 9³    F2 = 32       70
    5  deconv D2, full, ReLU        k2³         F1            78
    6  unpool ×2 (nearest)          2³          F1            156
    7  deconv D1, full  +  shortcut k1³         K - 1         164
       shortcut: a second k1³ full deconvolution of C1's maps, SUMMED with D1 (not concatenated)

The paper's output is one sigmoid lesion map, σ(D1(U) + S(C1) + b). To fit brainbench's softmax
losses and argmax inference, :class:`BroschCEN` returns ``logits (N, K, X, Y, Z)`` whose class 0 is a
constant 0 and whose classes 1…K-1 are the deconvolution's K - 1 maps z: for K = 2,
``softmax([0, z]) = [1 - σ(z), σ(z)]`` exactly, the paper's map. For K > 2 the foreground maps compete
in a softmax against the fixed background logit (an extension; the paper has one class).

Unpooling: the spec names an "unpool" layer without its form. Average pooling has no switches to
invert, so each pooled value is copied to its 2³ block (nearest-neighbour upsampling, the transpose
of average pooling up to the factor 1/8, which the next deconvolution's weights absorb) [M].

Not implemented: the layer-wise unsupervised pre-training with 3D convolutional RBMs (spec §4.2);
the network trains from PyTorch's default initialisation with the supervised objective only
(:class:`brainbench.training.losses.SensitivitySpecificity`).

Training on whole volumes (spec §4.1: "learns from entire images rather than patches"):
:class:`CroppedVolumes` cuts each case's brain bounding box (or a fixed-size window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainbench.data.boxes import brain_box
from brainbench.errors import BrainbenchConfigError
from brainbench.models.deepmedic import _per_axis, positive_sizes
from brainbench.models.unet3d import PatchSegments, random_reflection

__all__ = ["BroschCEN", "CroppedVolumes", "parameter_count_formula"]

POOLS = ("avg",)
"""Pooling layers: the spec's average pooling [M]; an argument so that a config names it (spec §6.5)."""


def parameter_count_formula(in_channels: int, kernel_sizes: Sequence[int] = (9, 9),
                            filters: Sequence[int] = (32, 32), n_out: int = 1, shortcut: bool = True) -> int:
    """Trainable parameters of the CEN-s (spec §4.3), for ``n_out`` = K - 1 output maps:

    k1³·C·F1 + k2³·F1·F2 + k2³·F2·F1 + 2·k1³·F1·n_out + (F1 + F2 + F1 + n_out),

    i.e. C1, C2, D2, D1 and the shortcut deconvolution (no bias: it is summed with D1, whose bias b
    is the output's one), then the biases. Without the shortcut one k1³·F1·n_out term goes.
    1,633,057 for C = 4 and 1,609,729 for C = 3 at the spec's 9³ kernels, 32 filters, one map.
    """
    (k1, k2), (f1, f2) = kernel_sizes, filters
    deconvolutions = 2 if shortcut else 1
    return (k1 ** 3 * in_channels * f1 + 2 * k2 ** 3 * f1 * f2 + deconvolutions * k1 ** 3 * f1 * n_out
            + (2 * f1 + f2 + n_out))


class BroschCEN(nn.Module):
    """The 7-layer CEN(-s) of Brosch et al. 2016 (module docstring); returns logits.

    forward(x (N, C, X, Y, Z)) -> (N, n_classes, X, Y, Z), the input's size for any input size:
    each axis is zero-padded *at its end* (the high-index side; 0 is the z-scored cache's background)
    to :meth:`padded_size`, the smallest size n' >= the input such that C1's output ``n' - k1 + 1``
    is even (so that pooling and unpooling give it back) and C2 keeps at least one voxel; the
    output, which has the padded size, is cropped back to its first X, Y, Z voxels. Class 0's logit
    is the constant 0 (see the module docstring).

    Args:
        in_channels: C (ISBI 2015: MPRAGE, T2, PD, FLAIR → 4; MICCAI 2008: T1w, T2w, FLAIR → 3).
        n_classes: K including background; the net computes K - 1 maps (the paper: K = 2).
        kernel_sizes: (k1, k2) of C1/D1/shortcut and C2/D2 [M] (spec: 9, 9).
        filters: (F1, F2), the maps of C1 and D2, and of C2 [M] (spec: 32, 32).
        shortcut: sum the deconvolved C1 maps into the output (CEN-s); ``False``: the plain CEN.
        pool: ``"avg"``, 2³ average pooling with stride 2 [M].
    """

    def __init__(self, in_channels: int, n_classes: int = 2, kernel_sizes: Sequence[int] = (9, 9),
                 filters: Sequence[int] = (32, 32), shortcut: bool = True, pool: str = "avg"):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise BrainbenchConfigError(f"in_channels: expected a positive int, got {in_channels!r}")
        if not isinstance(n_classes, int) or n_classes < 2:
            raise BrainbenchConfigError(f"n_classes: expected an int >= 2, got {n_classes!r}")
        if pool not in POOLS:
            raise BrainbenchConfigError(f"pool: expected one of {', '.join(POOLS)}, got {pool!r}")
        self.in_channels, self.n_classes, self.pool, self.shortcut = in_channels, n_classes, pool, shortcut
        self.kernel_sizes = k1, k2 = positive_sizes(kernel_sizes, 2, "kernel_sizes")
        self.filters = f1, f2 = positive_sizes(filters, 2, "filters")
        n_out = n_classes - 1
        self.conv1 = nn.Conv3d(in_channels, f1, k1)
        self.conv2 = nn.Conv3d(f1, f2, k2)
        self.deconv2 = nn.ConvTranspose3d(f2, f1, k2)
        self.deconv1 = nn.ConvTranspose3d(f1, n_out, k1)
        self.shortcut_deconv = nn.ConvTranspose3d(f1, n_out, k1, bias=False) if shortcut else None

    @property
    def min_input_size(self) -> int:
        """The smallest pool-compatible size per axis: C1 leaves 2·k2 voxels, C2 one after pooling."""
        k1, k2 = self.kernel_sizes
        return k1 - 1 + 2 * k2

    def padded_size(self, size: int | Sequence[int]) -> tuple[int, int, int]:
        """Per axis, the size the input is zero-padded to (class docstring); the size itself when it
        is already pool-compatible, e.g. 164 and 206 for 9³ kernels, but 157 → 158."""
        k1 = self.kernel_sizes[0]
        padded = [max(s, self.min_input_size) for s in _per_axis(size, "size")]
        return tuple(p + (p - k1 + 1) % 2 for p in padded)

    @property
    def receptive_field(self) -> tuple[int, int]:
        """Input voxels per axis that can influence one output voxel: (deep path, shortcut path).

        Deep path, for output voxel o: D1 reads unpooled voxels [o - k1 + 1, o], i.e. D2 voxels
        [(o - k1 + 1)//2, o//2]; D2 and C2 widen that by k2 - 1 each, pooling doubles it and C1 adds
        k1 - 1: ``2·(o//2 - (o - k1 + 1)//2 + 2·k2 - 2) + k1 + 1``, the larger of the two phases of o
        (50 for 9³ kernels, spec §4.3). Shortcut: C1 then its k1³ deconvolution, 2·k1 - 1 (17).
        """
        k1, k2 = self.kernel_sizes
        deep = max(2 * (o // 2 - (o - k1 + 1) // 2 + 2 * k2 - 2) + k1 + 1 for o in (k1, k1 + 1))
        return deep, 2 * k1 - 1

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        padded = self.padded_size(tuple(size))
        # F.pad lists (before, after) pairs from the last axis backwards
        x = F.pad(x, [v for p, s in zip(reversed(padded), reversed(size)) for v in (0, p - s)])
        c1 = F.relu(self.conv1(x))
        d2 = F.relu(self.deconv2(F.relu(self.conv2(F.avg_pool3d(c1, 2, stride=2)))))
        z = self.deconv1(F.interpolate(d2, scale_factor=2, mode="nearest"))
        if self.shortcut_deconv is not None:
            z = z + self.shortcut_deconv(c1)
        z = z[..., :size[0], :size[1], :size[2]]
        return torch.cat([z.new_zeros((z.shape[0], 1, *size)), z], dim=1)


@dataclass(frozen=True)
class CroppedVolumes:
    """CEN training pairs from whole, cropped volumes (spec §4.1: "entire images rather than patches").

    ``size=None``: the (C, X', Y', Z') bounding box of the image's non-zero voxels (the cache is
    z-scored with background 0) and the int64 label in that box; ``centre`` is not used, and sizes
    differ between cases, so batches hold one volume. A fixed ``size`` (one int or three): a window
    of that size centred on ``centre``, zero-filled image and label -100 (ignored) outside the
    volume, exactly as :class:`~brainbench.models.unet3d.PatchSegments` (which it uses).

    Flips, when augmenting: each axis independently with ``flip_probability``; the volume is
    reflected (a view) and then cropped, i.e. the box (or the window at the mirrored centre) of
    the reflected volume. The paper's augmentation is not known [M]; default none.
    """

    size: int | Sequence[int] | None = None
    flip_probability: float = 0.0

    def __post_init__(self):
        if self.size is not None and min(_per_axis(self.size, "size")) < 1:
            raise BrainbenchConfigError(f"size: expected positive sizes or null, got {self.size!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise BrainbenchConfigError(f"flip_probability: must be in [0, 1], got {self.flip_probability}")

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator, augment: bool = True) -> tuple[tuple[np.ndarray], np.ndarray]:
        if self.size is not None:
            return PatchSegments(self.size, None, self.flip_probability)(image, label, centre, rng, augment)
        if augment:
            image, label, _ = random_reflection(image, label, centre, rng, self.flip_probability)
        box = brain_box(image) if np.any(image) else (slice(None),) * 3
        return ((np.ascontiguousarray(image[(slice(None), *box)]),),
                np.asarray(label[box], dtype=np.int64))
