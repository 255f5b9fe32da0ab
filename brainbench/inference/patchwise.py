"""Whole-volume inference of the 2D patch-wise models (Havaei, Pereira) on axial slices.

Every strategy has the signature of :func:`patchwise` and returns float32 probabilities
(n_classes, X, Y, Z); select one in Hydra with ``_target_`` and ``_partial_: true``.

* :func:`patchwise` — the reference: one window per voxel (33×33, or a cascade's 65/56/53 stage-1
  window), cut from the zero-padded axial slice, batched.
* :func:`dense` — the fastest *exact* strategy. A Havaei model (all valid convs and pools, stride
  1) runs fully convolutionally on whole padded slices and equals :func:`patchwise` to float
  round-off (architectures.md §1.9). Pereira's in-patch "same" padding makes a slice-level FCN
  differ (§2.5), so for it ``dense`` is batched patch evaluation of the brain voxels only.
* :func:`fcn_approximate` — Pereira as a dilated ("à trous") FCN on whole slices: about 85× fewer
  operations, but not equal to :func:`patchwise`. It logs a warning on every call;
  :func:`measure_disagreement` reports how far it is from the reference.

Region: only the brain is predicted, ``brain_mask`` or else every voxel where a channel is non-zero
(images are z-scored with background 0). All strategies work inside the brain's bounding box;
voxels outside the brain get probability 1 for class 0 and cost nothing. Windows leaving the volume
see zeros, the value patch extraction at training time uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.device import inference_state
from brainbench.models.pereira import PereiraCNN

__all__ = ["brain_region", "dense", "fcn_approximate", "measure_disagreement", "patchwise"]

log = logging.getLogger(__name__)

PATCH_BATCH = 256
"""Default windows per forward pass of the patch strategies."""
SLICE_BATCH = 2
"""Default axial slices per forward pass of the fully-convolutional strategies."""


def brain_region(image: np.ndarray | Tensor, brain_mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, tuple[slice, slice, slice] | None]:
    """The brain (X, Y, Z) bool and its bounding box as slices (``None`` when the brain is empty)."""
    volume = torch.as_tensor(image)
    if brain_mask is None:
        brain = (volume != 0).any(dim=0).numpy()
    else:
        brain = np.asarray(brain_mask, dtype=bool)
        if brain.shape != tuple(volume.shape[1:]):
            raise ValueError(f"brain_mask: expected shape {tuple(volume.shape[1:])}, got {brain.shape}")
    idx = np.nonzero(brain)
    if not idx[0].size:
        return brain, None
    return brain, tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def _padded_slab(volume: Tensor, box: tuple[slice, slice, slice], margin: tuple[int, int]) -> Tensor:
    """(Z, C, X', Y') axial slices of ``box`` with ``margin`` (before, after) pixels around X and Y.

    Real neighbours are kept where the volume has them; beyond its border the slab is zero.
    """
    before, after = margin
    lo = [box[0].start - before, box[1].start - before]
    hi = [box[0].stop + after, box[1].stop + after]
    extent = volume.shape[1:3]
    crop = volume[:, max(lo[0], 0):min(hi[0], extent[0]), max(lo[1], 0):min(hi[1], extent[1]), box[2]]
    pad = (max(-lo[1], 0), max(hi[1] - extent[1], 0), max(-lo[0], 0), max(hi[0] - extent[0], 0))
    return F.pad(crop.permute(3, 0, 1, 2), pad).contiguous()


def _setup(model: nn.Module, image, brain_mask, device):
    volume = torch.as_tensor(image, dtype=torch.float32, device="cpu")
    if volume.ndim != 4 or volume.shape[0] != model.in_channels:
        raise ValueError(f"image: expected ({model.in_channels}, X, Y, Z), got {tuple(volume.shape)}")
    brain, box = brain_region(volume, brain_mask)
    probs = torch.zeros((model.n_classes, *volume.shape[1:]), dtype=torch.float32)
    probs[0] = 1.0
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return volume, brain, box, probs, device


def _probabilities(forward: Callable[[Tensor], Tensor], x: Tensor, device: torch.device) -> Tensor:
    """Softmax over classes of one batch, on the CPU: (N, n_classes, ...)."""
    return torch.softmax(forward(x.to(device)), dim=1).float().cpu()


def _windows(model: nn.Module, volume: Tensor, box, probs: Tensor, voxels: np.ndarray,
             batch_size: int, device: torch.device) -> None:
    """Fill ``probs`` at the bbox-relative ``voxels`` (an (N, 3) x, y, z array) window by window."""
    size = sum(model.margin) + 1
    slab = _padded_slab(volume, box, model.margin)
    windows = slab.unfold(2, size, 1).unfold(3, size, 1)  # (Z, C, X, Y, size, size), a view
    for i in range(0, len(voxels), batch_size):
        x, y, z = torch.as_tensor(voxels[i:i + batch_size]).T
        batch = windows[z, :, x, y]
        out = _probabilities(model, batch, device).reshape(len(x), model.n_classes)
        probs[:, x + box[0].start, y + box[1].start, z + box[2].start] = out.T


def patchwise(model: nn.Module, image: np.ndarray | Tensor, brain_mask: np.ndarray | None = None,
              batch_size: int | None = None, device=None) -> np.ndarray:
    """Reference: one window per voxel of the brain's bounding box, ``batch_size`` windows at a time.

    image: (C, X, Y, Z) float32, z-scored with background 0. Returns float32 (n_classes, X, Y, Z);
    voxels outside the brain get class 0 with probability 1 (also inside the bounding box).
    """
    volume, brain, box, probs, device = _setup(model, image, brain_mask, device)
    if box is not None:
        shape = [s.stop - s.start for s in box]
        voxels = np.stack(np.unravel_index(np.arange(np.prod(shape)), shape), axis=1)
        with inference_state(model):
            _windows(model, volume, box, probs, voxels, batch_size or PATCH_BATCH, device)
        _background_outside(probs, brain)
    return probs.numpy()


def _background_outside(probs: Tensor, brain: np.ndarray) -> None:
    outside = torch.from_numpy(~brain)
    probs[:, outside] = 0.0
    probs[0, outside] = 1.0


def _slices(model: nn.Module, volume: Tensor, box, probs: Tensor, batch_size: int,
            device: torch.device, forward: Callable[[Tensor], Tensor]) -> None:
    """Fill ``probs`` in the bounding box from ``forward`` on padded axial slices."""
    slab = _padded_slab(volume, box, model.margin)
    for z0 in range(0, slab.shape[0], batch_size):
        out = _probabilities(forward, slab[z0:z0 + batch_size], device)
        z = slice(box[2].start + z0, box[2].start + z0 + out.shape[0])
        probs[:, box[0], box[1], z] = out.permute(1, 2, 3, 0)


def dense(model: nn.Module, image: np.ndarray | Tensor, brain_mask: np.ndarray | None = None,
          batch_size: int | None = None, device=None) -> np.ndarray:
    """Exact fast inference; equal to :func:`patchwise` (see the module docstring).

    Havaei models: ``batch_size`` axial slices (bounding box plus margins) per forward pass.
    Pereira: ``batch_size`` patches per forward pass, brain voxels only.
    """
    volume, brain, box, probs, device = _setup(model, image, brain_mask, device)
    if box is None:
        return probs.numpy()
    with inference_state(model):
        if isinstance(model, PereiraCNN):
            inside = brain[box]
            _windows(model, volume, box, probs, np.argwhere(inside),
                     batch_size or PATCH_BATCH, device)
        else:
            _slices(model, volume, box, probs, batch_size or SLICE_BATCH, device, model)
    _background_outside(probs, brain)
    return probs.numpy()


def _dilated_fcn(model: PereiraCNN, x: Tensor) -> Tensor:
    """Pereira on (N, C, H+32, W+32) padded slices -> logits (N, n_classes, H, W), approximately.

    Each stride-2 pool becomes stride 1 and doubles the dilation of every later layer; the first FC
    layer becomes a 7×7 conv with that dilation, the others 1×1 convs. Without the patch border
    (convs pad the whole slice instead), the output at (i, j) is the patch classifier's at (i, j).
    """
    dilation = 1
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, layer.weight, layer.bias, padding=dilation, dilation=dilation)
        elif isinstance(layer, nn.MaxPool2d):
            x = F.max_pool2d(x, layer.kernel_size, stride=1, dilation=dilation)
            dilation *= layer.stride
        else:
            x = layer(x)
    channels = x.shape[1]
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            side = int(round((layer.in_features // channels) ** 0.5))
            weight = layer.weight.view(layer.out_features, channels, side, side)
            x = F.conv2d(x, weight, layer.bias, dilation=dilation)
            channels, dilation = layer.out_features, 1
        elif not isinstance(layer, (nn.Flatten, nn.Dropout)):
            x = layer(x)
    return x


def fcn_approximate(model: PereiraCNN, image: np.ndarray | Tensor,
                    brain_mask: np.ndarray | None = None, batch_size: int | None = None,
                    device=None) -> np.ndarray:
    """Pereira as a dilated FCN, ``batch_size`` slices per pass: fast, NOT equal to patchwise.

    Use it only when configured explicitly; :func:`measure_disagreement` says how far it is.
    """
    if not isinstance(model, PereiraCNN):
        raise BrainbenchConfigError(
            f"inference: fcn_approximate is for PereiraCNN (use dense for {type(model).__name__}, "
            "which is exact)")
    log.warning("fcn_approximate: Pereira evaluated as a dilated FCN; its probabilities differ from "
                "patch-wise evaluation (architectures.md §2.5; see measure_disagreement)")
    volume, brain, box, probs, device = _setup(model, image, brain_mask, device)
    if box is None:
        return probs.numpy()
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    with inference_state(model):
        _slices(model, volume, box, probs, batch_size or SLICE_BATCH, device,
                lambda x: _dilated_fcn(model, x)[:, :, :shape[0], :shape[1]])
    _background_outside(probs, brain)
    return probs.numpy()


def measure_disagreement(model: nn.Module, image: np.ndarray | Tensor,
                         brain_mask: np.ndarray | None = None,
                         strategy: Callable[..., np.ndarray] = fcn_approximate,
                         reference: Callable[..., np.ndarray] = patchwise,
                         batch_size: int | None = None, device=None) -> dict[str, float]:
    """How far ``strategy`` is from ``reference`` over the brain voxels of ``image``.

    Inference is per axial slice, so a few slices of a volume (``image[..., z0:z1]``) measure those
    slices exactly. Returns ``max_abs_difference`` (probability), ``label_disagreement`` (fraction
    of brain voxels whose argmax differs) and ``brain_voxels``.
    """
    brain, _ = brain_region(image, brain_mask)
    test = strategy(model, image, brain_mask, batch_size=batch_size, device=device)
    ref = reference(model, image, brain_mask, batch_size=batch_size, device=device)
    n = int(brain.sum())
    return {"max_abs_difference": float(np.abs(test - ref).max()),
            "label_disagreement": float((test.argmax(0) != ref.argmax(0))[brain].sum() / max(n, 1)),
            "brain_voxels": n}
