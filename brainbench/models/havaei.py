"""Havaei et al.'s TwoPathCNN and its three cascades (InputCascade, LocalCascade, MFCascade).

Havaei M, Davy A, Warde-Farley D, et al. *Brain tumor segmentation with deep neural networks.*
Medical Image Analysis 35:18-31, 2017 (arXiv:1505.03540v3), Fig. 2 (TwoPathCNN) and Fig. 3
(cascades). Spec: ``architectures.md`` §1.3-§1.9.

TwoPathCNN layer table (every op valid, stride 1; sizes for a 33×33 training patch)::

    #    path    op                          kernel  maps  size
    in   -       input                       -       4     33
    L1   local   conv + maxout(K)            7×7     64    27
    L1p  local   max-pool, stride 1          4×4     64    24   <- LocalCascade joins here (+5)
    L2   local   conv + maxout(K)            3×3     64    22
    L2p  local   max-pool, stride 1          2×2     64    21
    G1   global  conv + maxout(K)            13×13   160   21
    C    -       concat(L2p, G1)             -       224   21   <- MFCascade joins here (+5)
    O    -       conv (softmax by the caller) 21×21  5     1

InputCascade joins the 5 stage-1 maps to the 4 input channels (9×33×33). Every TwoPathCNN maps an
H×W input to (H-32)×(W-32) logits (receptive field 33), so whole-slice inference equals patch-wise
inference exactly (§1.9). The paper leaves open K and dropout (§1.3, §1.7, §1.11); the defaults
are K = 2 (its Fig. 1 example and the usual re-implementation choice) and element-wise dropout 0.5
(its example rate) on the output of each maxout layer. Each maxout layer owns its dropout, so a
frozen layer in eval mode (phase 2 of two-phase training) drops nothing, as at test time.

Parameters. A maxout conv with ``K`` pieces is one ``nn.Conv2d`` with ``K·maps`` output channels
(weights and one bias per piece), reduced by a max over the ``K`` consecutive channels of each map.
The paper's "# Parameters" counts weights only, as if K = 1, and for cascades the trainable stage 2
only (§1.8): :meth:`TwoPathCNN.paper_parameter_count` = 651,488 (TwoPath), 802,368 (InputCascade),
654,368 (LocalCascade), 662,513 (MFCascade). ``sum(p.numel())`` counts every parameter: TwoPathCNN
K=2 809,637 = 2·157,568 + 493,920 weights + 2·288 + 5 biases (K=1: 651,781); a cascade adds its
stage 1, e.g. InputCascade K=2 809,637 + 1,111,397 = 1,921,034.

Cascade geometry. A cascade's input is the stage-1 window, ``margin = (before, after)`` pixels
around the predicted pixel: (32, 32) InputCascade (65×65), (28, 27) LocalCascade (56×56), (26, 26)
MFCascade (53×53). The stage-2 input is the centred 33×33 part (``[c - 16, c + 16]``); the stage-1
softmax maps (H-32 per axis) are concatenated where they line up with stage 2. At the local join
the stride-1 4×4 pool centres each stage-2 feature half a pixel after its grid position
(c - 11.5 + k); the 56×56 window puts the predicted pixel at index 28 = 56 // 2 like the other
windows, so stage 1 sits half a pixel before (c - 12 + k) — the paper leaves this half pixel open.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError

__all__ = [
    "InputCascadeCNN",
    "LocalCascadeCNN",
    "MFCascadeCNN",
    "MaxoutConv2d",
    "TwoPathCNN",
]

RECEPTIVE_FIELD = 33
"""Input pixels per axis of one TwoPathCNN output: 7 + 3 + 2 + 1 (local) = 13 (global) + 21 - 1."""


class MaxoutConv2d(nn.Module):
    """Valid conv to ``pieces·out_channels`` maps, the max over each map's ``pieces`` (Eq. 2), then
    element-wise dropout with rate ``dropout``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pieces: int, dropout: float = 0.0):
        super().__init__()
        self.pieces = pieces
        self.conv = nn.Conv2d(in_channels, out_channels * pieces, kernel_size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.pieces > 1:
            n, _, h, w = y.shape
            y = y.view(n, -1, self.pieces, h, w).amax(dim=2)
        return self.drop(y)


class TwoPathCNN(nn.Module):
    """TwoPathCNN on (N, C, H, W) -> logits (N, n_classes, H-32, W-32); see the module docstring.

    ``extra_channels`` maps are concatenated at ``join`` ("input", "local" or "output"): that is
    how a cascade's stage 2 receives stage 1; a plain TwoPathCNN has none.
    """

    margin = (RECEPTIVE_FIELD // 2, RECEPTIVE_FIELD // 2)
    """Input pixels before and after the predicted pixel, per axis."""

    def __init__(self, in_channels: int = 4, n_classes: int = 5,
                 local_maps: Sequence[int] = (64, 64), global_maps: int = 160,
                 maxout_pieces: int = 2, dropout: float = 0.5, init_range: float = 0.005,
                 extra_channels: int = 0, join: str = "input"):
        super().__init__()
        if maxout_pieces < 1 or not 0.0 <= dropout < 1.0 or len(local_maps) != 2:
            raise BrainbenchConfigError(
                f"havaei model: expected maxout_pieces >= 1, 0 <= dropout < 1 and two local_maps, "
                f"got {maxout_pieces}, {dropout}, {list(local_maps)}")
        if join not in ("input", "local", "output"):
            raise BrainbenchConfigError(f"join: expected input, local or output, got {join!r}")
        extra = {j: extra_channels if j == join else 0 for j in ("input", "local", "output")}
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.extra_channels = extra_channels
        self.join = join
        self.local1 = MaxoutConv2d(in_channels + extra["input"], local_maps[0], 7, maxout_pieces, dropout)
        self.local2 = MaxoutConv2d(local_maps[0] + extra["local"], local_maps[1], 3, maxout_pieces, dropout)
        self.global1 = MaxoutConv2d(in_channels + extra["input"], global_maps, 13, maxout_pieces, dropout)
        self.output_layer = nn.Conv2d(local_maps[1] + global_maps + extra["output"], n_classes, 21)
        self.reset_parameters(init_range)

    def reset_parameters(self, init_range: float = 0.005) -> None:
        """Kernels U(±init_range), biases 0 (§1.5); then see :meth:`init_output_bias`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_output_bias(self, class_frequencies: Sequence[float]) -> None:
        """Softmax biases = log label frequencies (normalised to sum 1), as §1.5."""
        freq = torch.as_tensor(np.asarray(class_frequencies, dtype=np.float64))
        if freq.shape != (self.n_classes,) or not bool((freq > 0).all()):
            raise BrainbenchConfigError(
                f"class_frequencies: expected {self.n_classes} positive values, got {freq.tolist()}")
        self.output_layer.bias.copy_(torch.log(freq / freq.sum()).float())

    @property
    def receptive_field(self) -> int:
        """Input pixels per axis behind one output pixel (33)."""
        return RECEPTIVE_FIELD

    def output_size(self, input_size: int) -> int:
        """Output pixels per axis for ``input_size`` input pixels: H - 32."""
        return input_size - sum(self.margin)

    def paper_parameter_count(self) -> int:
        """Weights only, one kernel per maxout map (K = 1): the paper's "# Parameters" (§1.8)."""
        maxout = (self.local1, self.local2, self.global1)
        return (sum(m.conv.weight.numel() // m.pieces for m in maxout)
                + self.output_layer.weight.numel())

    def forward(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        if (extra is None) != (self.extra_channels == 0):
            found = None if extra is None else tuple(extra.shape)
            raise ValueError(f"TwoPathCNN: extra maps are expected exactly when extra_channels > 0 "
                             f"({self.extra_channels}), got {found}")
        if self.join == "input" and extra is not None:
            x = torch.cat([x, extra], dim=1)
        local = F.max_pool2d(self.local1(x), 4, stride=1)
        if self.join == "local" and extra is not None:
            local = torch.cat([local, extra], dim=1)
        local = F.max_pool2d(self.local2(local), 2, stride=1)
        features = torch.cat([local, self.global1(x)], dim=1)
        if self.join == "output" and extra is not None:
            features = torch.cat([features, extra], dim=1)
        return self.output_layer(features)


class _Cascade(nn.Module):
    """Stage-1 TwoPathCNN softmax maps fed to a stage-2 TwoPathCNN at ``join``.

    forward((N, C, H, W) stage-1 window) -> logits (N, n_classes, H - sum(margin), W - sum(margin)).
    ``stage1`` (a TwoPathCNN, e.g. a trained one) is frozen by default: no gradients, and kept in
    eval mode (no dropout) while the cascade trains, as the paper trains stage 2 only (§1.6).
    """

    join: str
    margin: tuple[int, int]

    def __init__(self, stage1: TwoPathCNN | None = None, in_channels: int = 4, n_classes: int = 5,
                 local_maps: Sequence[int] = (64, 64), global_maps: int = 160,
                 maxout_pieces: int = 2, dropout: float = 0.5, init_range: float = 0.005,
                 freeze_stage1: bool = True):
        super().__init__()
        shape = dict(in_channels=in_channels, n_classes=n_classes, local_maps=local_maps,
                     global_maps=global_maps, maxout_pieces=maxout_pieces, dropout=dropout,
                     init_range=init_range)
        self.stage1 = TwoPathCNN(**shape) if stage1 is None else stage1
        if (self.stage1.in_channels, self.stage1.n_classes) != (in_channels, n_classes):
            raise BrainbenchConfigError(
                f"stage1: expected {in_channels} input channels and {n_classes} classes, got "
                f"{self.stage1.in_channels} and {self.stage1.n_classes}")
        self.stage2 = TwoPathCNN(**shape, extra_channels=n_classes, join=self.join)
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.stage1_frozen = False
        self.set_stage1_frozen(freeze_stage1)

    def set_stage1_frozen(self, frozen: bool) -> None:
        self.stage1_frozen = frozen
        self.stage1.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage1_frozen:
            self.stage1.eval()
        return self

    @property
    def output_layer(self) -> nn.Conv2d:
        """Stage 2's output conv: the layer phase 2 of two-phase training retrains."""
        return self.stage2.output_layer

    def init_output_bias(self, class_frequencies: Sequence[float]) -> None:
        self.stage2.init_output_bias(class_frequencies)

    @property
    def receptive_field(self) -> int:
        """Stage-1 window per axis behind one output pixel: 65, 56 or 53."""
        return sum(self.margin) + 1

    def output_size(self, input_size: int) -> int:
        """Output pixels per axis for a stage-1 input of ``input_size`` pixels."""
        return input_size - sum(self.margin)

    def paper_parameter_count(self) -> int:
        """The paper's convention: stage-2 weights only, K = 1 (§1.8)."""
        return self.stage2.paper_parameter_count()

    def forward(self, x: Tensor) -> Tensor:
        stage1 = torch.softmax(self.stage1(x), dim=1)
        before, after = (m - RECEPTIVE_FIELD // 2 for m in self.margin)
        inner = x[:, :, before:x.shape[2] - after, before:x.shape[3] - after]
        return self.stage2(inner, stage1)


class InputCascadeCNN(_Cascade):
    """Stage-1 maps joined to the 4 input channels of stage 2 (9×33×33); window 65×65."""

    join = "input"
    margin = (32, 32)


class LocalCascadeCNN(_Cascade):
    """Stage-1 maps joined after stage 2's first local block (69×24×24); window 56×56."""

    join = "local"
    margin = (28, 27)


class MFCascadeCNN(_Cascade):
    """Stage-1 maps joined to the 224 maps before the output conv (229×21×21); window 53×53."""

    join = "output"
    margin = (26, 26)
