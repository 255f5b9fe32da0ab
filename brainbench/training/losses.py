"""Segmentation losses, selectable with ``loss=ce|weighted_ce|dice|ce_dice|sens_spec``.

Every loss maps logits ``(N, K, ...)`` and integer targets ``(N, ...)`` to a scalar. Target voxels equal
to ``ignore_index`` (-100, what DeepMedic's label blocks and the patch extractors write outside the
volume) count for nothing, in every loss. Each loss is built with the edition's ``n_classes`` so that a
per-class setting of the wrong length is a config error before any data work.

Papers' losses: voxel-wise cross-entropy (DeepMedic §3.5, Pereira, Havaei), class-weighted softmax
cross-entropy (3D U-Net, Çiçek et al. 2016), the sensitivity–specificity objective (Brosch et al. 2016,
spec §4.1), and soft Dice (V-Net, Milletari et al. 2016) with its nnU-Net-style sum with cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError

__all__ = ["CrossEntropy", "CrossEntropyDice", "SensitivitySpecificity", "SoftDice", "WeightedCrossEntropy"]

IGNORE_INDEX = -100


def _check_classes(n_classes: int) -> int:
    if not isinstance(n_classes, int) or n_classes < 2:
        raise BrainbenchConfigError(f"loss: n_classes must be an integer >= 2, got {n_classes!r}")
    return n_classes


def _probabilities_and_one_hot(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax ``(N, K, M)``, one-hot target ``(N, K, M)`` and the kept-voxel mask ``(N, 1, M)``, as float.

    Ignored voxels are zero in all three, so they drop out of every sum.
    """
    n, k = logits.shape[:2]
    probabilities = torch.softmax(logits.float(), dim=1).reshape(n, k, -1)
    target = target.reshape(n, -1)
    keep = (target != IGNORE_INDEX).unsqueeze(1)
    one_hot = F.one_hot(torch.where(keep[:, 0], target, 0), k).permute(0, 2, 1).float()
    keep = keep.float()
    return probabilities * keep, one_hot * keep, keep


class CrossEntropy(nn.Module):
    """Voxel-wise cross-entropy averaged over every kept voxel of the batch (DeepMedic, spec §3.5)."""

    name = "cross_entropy"

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = _check_classes(n_classes)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with one weight per class: a voxel of class k counts ``weights[k]`` times, and the
    sum is divided by the summed weights of the kept voxels (PyTorch's ``weight=``, Çiçek et al.'s
    weighted softmax loss that "reduces the weights of frequently seen background")."""

    name = "weighted_cross_entropy"

    def __init__(self, n_classes: int, weights: Sequence[float] | None = None):
        super().__init__()
        self.n_classes = _check_classes(n_classes)
        if weights is None or len(weights) != n_classes or any(float(w) < 0 for w in weights) \
                or not any(float(w) > 0 for w in weights):
            raise BrainbenchConfigError(
                f"loss.weights: loss=weighted_ce needs {n_classes} non-negative class weights, not all 0 "
                f"(one per class of the edition), got {None if weights is None else list(weights)}")
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weights, ignore_index=IGNORE_INDEX)


class SoftDice(nn.Module):
    """1 − mean soft Dice over the foreground classes, each computed over the whole batch.

    Dice_k = (2 Σ p_k g_k + smooth) / (Σ p_k + Σ g_k + smooth) with p the softmax and g the one-hot
    target ("batch Dice": a class absent from one segment still gets a gradient from the others).
    ``include_background`` adds class 0 to the mean (nnU-Net and MONAI default to leaving it out).
    """

    name = "dice"

    def __init__(self, n_classes: int, smooth: float = 1e-5, include_background: bool = False):
        super().__init__()
        self.n_classes = _check_classes(n_classes)
        if smooth < 0:
            raise BrainbenchConfigError(f"loss.smooth: must be >= 0, got {smooth}")
        self.smooth, self.include_background = float(smooth), include_background

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probabilities, one_hot, _ = _probabilities_and_one_hot(logits, target)
        first = 0 if self.include_background else 1
        probabilities, one_hot = probabilities[:, first:], one_hot[:, first:]
        overlap = (probabilities * one_hot).sum(dim=(0, 2))
        total = probabilities.sum(dim=(0, 2)) + one_hot.sum(dim=(0, 2))
        dice = (2 * overlap + self.smooth) / (total + self.smooth).clamp_min(1e-12)
        return 1 - dice.mean()


class CrossEntropyDice(nn.Module):
    """``ce_weight · cross-entropy + dice_weight · soft Dice loss`` (nnU-Net's default, both weights 1)."""

    name = "cross_entropy_dice"

    def __init__(self, n_classes: int, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5,
                 include_background: bool = False):
        super().__init__()
        self.n_classes = _check_classes(n_classes)
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.cross_entropy = CrossEntropy(n_classes)
        self.dice = SoftDice(n_classes, smooth=smooth, include_background=include_background)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.ce_weight * self.cross_entropy(logits, target) + self.dice_weight * self.dice(logits, target)


class SensitivitySpecificity(nn.Module):
    """Brosch et al.'s sensitivity–specificity objective (TMI 2016; spec §4.1), per foreground class.

    E = r · Σ (S − ŷ)² S / Σ S + (1 − r) · Σ (S − ŷ)² (1 − S) / Σ (1 − S), with S the reference mask
    and ŷ the predicted probability of the class; the first term is the lesion (sensitivity) error,
    weighted by r. With several foreground classes, each is scored one-vs-rest and the terms averaged.
    NiftyNet's implementation swaps the two names (spec §4.1 pitfall); the formula here is the paper's.
    A batch without the class has Σ S = 0: that term is 0 (``eps`` in the denominators).

    Args:
        r: weight of the sensitivity term (NiftyNet's default 0.05, "0.01-0.10 will have similar
            effects"; the TMI paper's value is unverified, spec §4.1).
    """

    name = "sensitivity_specificity"

    def __init__(self, n_classes: int, r: float = 0.05, eps: float = 1e-6):
        super().__init__()
        self.n_classes = _check_classes(n_classes)
        if not 0.0 <= r <= 1.0:
            raise BrainbenchConfigError(f"loss.r: must be within [0, 1], got {r}")
        self.r, self.eps = float(r), float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probabilities, reference, keep = _probabilities_and_one_hot(logits, target)
        probabilities, reference = probabilities[:, 1:], reference[:, 1:]
        squared_error = (reference - probabilities) ** 2
        lesion = reference.sum(dim=(0, 2))
        non_lesion = (keep - reference).sum(dim=(0, 2))
        sensitivity = (squared_error * reference).sum(dim=(0, 2)) / (lesion + self.eps)
        specificity = (squared_error * (keep - reference)).sum(dim=(0, 2)) / (non_lesion + self.eps)
        return (self.r * sensitivity + (1 - self.r) * specificity).mean()
