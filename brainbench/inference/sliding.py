"""Gaussian-weighted sliding-window inference for fully convolutional 3D nets (the 3D U-Net).

nnU-Net's scheme (Isensee et al., Nature Methods 2021; ``nnunetv2/inference/sliding_window_prediction.py``):
windows overlap by ``overlap`` of their size, each window's softmax is weighted by a Gaussian
importance map centred on it (σ = ``sigma_scale`` · window per axis, 1/8 by default) and the
weighted sum is divided by the summed weights, which damps the less reliable window borders.

Placement, per axis (nnU-Net's ``compute_steps_for_sliding_window``): ``n = ceil((L - P) / s) + 1``
windows for a step ``s = (1 - overlap)·P``, spread evenly from 0 to ``L - P``, so the first window
starts at the volume's start, the last ends flush with its end and the actual step is at most ``s``
(at least 1: nnU-Net would repeat windows for steps below a voxel).
An axis shorter than the window is zero-padded to it, the volume centred (nnU-Net pads alike).
With ``padding="valid"`` nets the windows tile the *output*: each input window reaches
``net.margin`` voxels further per side, zero-filled beyond the volume.

``patch_size="auto"`` takes the whole (padded) volume as one window if its memory need fits
:func:`~brainbench.inference.region.memory_budget_bytes`, smaller windows otherwise
(:func:`auto_patch_size`; the need of a window's forward is measured on the meta device by
:func:`window_peak_bytes`, as DeepMedic's tiles are): a brain box (~140×170×140) runs as one window
on a 24 GiB CPU host, with no overlap work at all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.device import inference_state
from brainbench.inference.region import SCRATCH_HEADROOM, memory_budget_bytes, meta_copy, peak_live_bytes
from brainbench.models.deepmedic import window
from brainbench.models.unet3d import UNet3D

__all__ = ["auto_patch_size", "gaussian_importance", "predict_sliding_window", "window_peak_bytes", "window_starts"]


def window_starts(extent: int, size: int, overlap: float) -> list[int]:
    """First voxel of each window along an axis of ``extent >= size`` voxels (module docstring)."""
    step = (1 - overlap) * size
    n = min(math.ceil((extent - size) / step) + 1, extent - size + 1)  # < 1-voxel steps: no duplicates
    if n == 1:
        return [0]
    return [round(i * (extent - size) / (n - 1)) for i in range(n)]


def gaussian_importance(size: Sequence[int], sigma_scale: float = 0.125) -> Tensor:
    """Float32 (X, Y, Z) weights ``exp(-Σ (x_i - c_i)² / (2 σ_i²))``, σ_i = ``sigma_scale``·size_i,
    centred on ``c_i = size_i // 2`` and normalised to a maximum of 1; values that underflow to 0
    are raised to the smallest non-zero one, so that every voxel of a window counts (nnU-Net)."""
    axes = [torch.exp(-((torch.arange(n, dtype=torch.float64) - n // 2) ** 2) / (2 * (sigma_scale * n) ** 2))
            for n in size]
    weights = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).float()
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def _window_probabilities(net: UNet3D, x: Tensor) -> Tensor:
    """Class probabilities (N, n_classes, …) of a batch of windows; float32, net's device."""
    return torch.softmax(net(x), dim=1).float()


def window_peak_bytes(net: UNet3D, patch: Sequence[int], batch_size: int = 1) -> int:
    """Bytes of activations alive at once while ``batch_size`` input windows of ``patch`` voxels go
    through :func:`predict_sliding_window`'s forward (channels-last inputs and window probabilities
    included), in float32.

    Measured by running that forward on the meta device
    (:func:`~brainbench.inference.region.peak_live_bytes`), so the estimate follows the code. Not
    counted: the stitching buffers (the caller's), the weights and backend scratch space
    (:data:`~brainbench.inference.region.SCRATCH_HEADROOM`).
    """
    meta = meta_copy(net)

    def forward() -> None:
        x = torch.empty((batch_size, net.in_channels, *patch), device="meta",
                        memory_format=torch.channels_last_3d)
        _window_probabilities(meta, x)

    with inference_state(meta, channels_last_3d=True):
        return peak_live_bytes(forward)


def auto_patch_size(net: UNet3D, shape: Sequence[int], budget_bytes: int,
                    batch_size: int = 1) -> tuple[int, int, int]:
    """An input window as large as ``budget_bytes`` allows, up to the whole volume.

    Starts from the smallest window whose output covers the whole (X, Y, Z) volume and, while its
    need (:func:`window_peak_bytes` × :data:`~brainbench.inference.region.SCRATCH_HEADROOM`, plus
    the stitching buffers) exceeds the budget, shrinks the longest axis by ``net.size_step``. The
    headroom is DeepMedic's: the same backends run both nets, and a U-Net window's resident memory
    measured within it (see there).
    """
    patch = list(net.valid_input_size([e + 2 * net.margin for e in shape]))
    stitching = 4 * ((net.n_classes + 1) * math.prod(net.output_size(patch))
                     + net.in_channels * math.prod(shape))  # probabilities, weights, image

    meta = meta_copy(net)

    def needed(p: Sequence[int]) -> float:
        return SCRATCH_HEADROOM * window_peak_bytes(meta, p, batch_size) + stitching

    need = needed(patch)
    while need > budget_bytes:
        axis = int(np.argmax(patch))
        if patch[axis] - net.size_step < net.min_input_size:
            raise BrainbenchConfigError(
                f"inference memory budget: {budget_bytes / 2**30:.2f} GiB is less than the "
                f"{need / 2**30:.2f} GiB the smallest 3D U-Net window {tuple(patch)} needs")
        patch[axis] -= net.size_step
        need = needed(patch)
    return tuple(patch)


def predict_sliding_window(net: UNet3D, image: np.ndarray | Tensor,
                           patch_size: str | int | Sequence[int] = "auto", overlap: float = 0.5,
                           sigma_scale: float = 0.125, batch_size: int = 1, device=None) -> np.ndarray:
    """Class probabilities of a whole volume; float32 (n_classes, X, Y, Z).

    image: (C, X, Y, Z) float32, z-scored with background 0. ``patch_size``: the input window, a
    valid input size of ``net`` (one int or three), or ``"auto"`` (module docstring). ``overlap``
    in [0, 1); ``batch_size`` windows go through the net at once, on ``device`` (default: where the
    net is). The net runs in eval mode with channels-last weights; its training flag and memory
    format are restored afterwards.
    """
    if not 0 <= overlap < 1:
        raise BrainbenchConfigError(f"overlap: must be in [0, 1), got {overlap}")
    if sigma_scale <= 0:
        raise BrainbenchConfigError(f"sigma_scale: must be positive, got {sigma_scale}")
    if batch_size < 1:
        raise BrainbenchConfigError(f"batch_size: must be at least 1, got {batch_size}")
    volume = torch.as_tensor(image, dtype=torch.float32, device="cpu")
    if volume.ndim != 4 or volume.shape[0] != net.in_channels:
        raise ValueError(f"image: expected ({net.in_channels}, X, Y, Z), got {tuple(volume.shape)}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    shape = tuple(volume.shape[1:])
    if patch_size == "auto":
        patch_size = auto_patch_size(net, shape, memory_budget_bytes(device), batch_size)
    out_size = net.output_size(patch_size)
    patch = [o + 2 * net.margin for o in out_size]
    frame = [max(e, o) for e, o in zip(shape, out_size)]
    offset = [(f - e) // 2 for f, e in zip(frame, shape)]  # where the volume starts in the frame
    corners = list(itertools.product(*(window_starts(f, o, overlap) for f, o in zip(frame, out_size))))
    weight = gaussian_importance(out_size, sigma_scale)
    probs = torch.zeros((net.n_classes, *frame), dtype=torch.float32)
    weights = torch.zeros(frame, dtype=torch.float32)
    with inference_state(net, channels_last_3d=True):
        for i in range(0, len(corners), batch_size):
            batch = corners[i:i + batch_size]
            lows = [[c - o - net.margin for c, o in zip(corner, offset)] for corner in batch]
            x = torch.stack([window(volume, lo, [l + p for l, p in zip(lo, patch)], 1, 0) for lo in lows])
            x = x.to(device).contiguous(memory_format=torch.channels_last_3d)
            out = _window_probabilities(net, x).cpu()
            for block, corner in zip(out, batch):
                region = tuple(slice(c, c + o) for c, o in zip(corner, out_size))
                probs[(slice(None), *region)] += block * weight
                weights[region] += weight
    probs /= weights
    return probs[:, offset[0]:offset[0] + shape[0], offset[1]:offset[1] + shape[1],
                 offset[2]:offset[2] + shape[2]].contiguous().numpy()
