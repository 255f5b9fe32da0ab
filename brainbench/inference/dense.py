"""Dense DeepMedic and DeepMedic+ inference: tiled, equal to one pass over the whole volume, sized
to the machine.

Lattice. Tile corners are multiples of the subsampling factor f, so every tile samples the same
global every-f-th-voxel lattice (voxels ``≡ 0 mod f`` lead their coarse blocks, see
:mod:`brainbench.models.deepmedic`) and the result does not depend on the tiling, which
:func:`predict_volume_whole` makes testable. The reference code tiles 29³ outputs instead, so its
lattice phase, and hence its prediction, changes from tile to tile.

FC context (DeepMedic+). The 3³ FC1 needs the trunk features ``fc_margin`` (1) voxel beyond each
side of a tile. The whole-volume pass mirror-pads them at the volume border only, so a tile
computes its trunk on the block widened by the margin (the neighbours' real features; the
subsampled input then starts one lattice step earlier, ``lead`` voxels before the widened block)
and mirrors, in place, only the positions that lie outside the volume.

Padding is implicit: :func:`~brainbench.models.deepmedic.extract_segment_pair` zero-fills every
window that leaves the volume (8 voxels for the normal pathway, 8·f for the subsampled one).

Speed (issue 10: whole-case time within 1.3× the FLOP floor of the brain box; measured by
``benchmarks/bench_inference_3d.py``). The network runs as
:meth:`~brainbench.models.deepmedic.DeepMedic.folded_for_inference` (BN folded into the convs)
with channels-last 3D weights, which took about 25 % less CPU time per voxel than contiguous ones
(torch 2.13). ``tile_output="auto"`` makes tiles as large as the memory budget allows, because a
valid-conv tile recomputes a 16-voxel halo per axis in every layer: one tile over a BraTS brain
box (129×162×131) costs its FLOP floor, 45³ tiles 1.42× and 90³ tiles 1.15× that. The FC pathway
then runs on slabs of the trunk features (``HEAD_SLAB_BYTES``): its 100-150-map activations over a
whole box (1-1.6 GB each) made its BN and PReLU passes slower than its matrix products. On 2 CPU
threads the box then takes 1.5× (DeepMedic) and 1.2× (DeepMedic+) its floor at the float32 matmul
ceiling; what remains is conv efficiency (oneDNN pads 40 and 50 output maps to 48 and 64), the
PReLU passes and the FC pathway's small matrix products. Fresh activations fault in page by page:
``THP_MEM_ALLOC_ENABLE=1`` in the environment (read by PyTorch at its first large allocation) lets
them come in 2 MB pages, 10 % faster here.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.region import SCRATCH_HEADROOM, memory_budget_bytes, meta_copy, peak_live_bytes
from brainbench.models.deepmedic import CONV_LAYERS, DeepMedic, extract_segment_pair

__all__ = ["HEAD_SLAB_BYTES", "auto_tile", "predict_volume", "predict_volume_whole", "tile_grid",
           "tile_peak_bytes"]

HEAD_SLAB_BYTES = 64 * 2 ** 20
"""Largest FC-pathway activation per slab of trunk features (5 planes of a BraTS brain box at 150
maps). On 2 CPU threads, slabs of 16 planes ran DeepMedic's FC pathway 2.5× faster than the whole
box at once, slabs of 4 as fast as 16, and slabs of 1 plane up to 1.8× slower."""


def _axis_tile(extent: int, count: int, factor: int) -> int:
    """Tile size along one axis split into at most ``count`` tiles: the extent itself for one tile
    (no rounding waste), else the smallest multiple of ``factor`` covering it with ``count`` tiles."""
    return extent if count == 1 else factor * math.ceil(extent / (count * factor))


def tile_grid(shape: Sequence[int], tile_output: int | Sequence[int] = 45,
              factor: int = 3) -> tuple[tuple[int, int, int], list[tuple[int, int, int]]]:
    """Tile size and corners covering a (X, Y, Z) volume with non-overlapping output blocks.

    ``tile_output`` is the largest allowed tile per axis and must be a multiple of ``factor``.
    Each axis keeps the number of tiles that size needs but shrinks the tile to the smallest
    multiple of ``factor`` that still covers the axis, which cuts the work spent beyond the volume
    (160 voxels: 4 tiles of 42, not 4 of 45); an axis one tile covers gets a tile of exactly its
    extent. Corners are multiples of the tile size.
    """
    tiles = (tile_output,) * 3 if isinstance(tile_output, (int, np.integer)) else tuple(tile_output)
    if len(tiles) != 3 or any(t < factor or t % factor for t in tiles):
        raise BrainbenchConfigError(
            f"tile_output: must be 'auto' or one or three positive multiples of the subsampling "
            f"factor {factor}, got {tile_output!r}")
    size = tuple(_axis_tile(extent, math.ceil(extent / tile), factor) for extent, tile in zip(shape, tiles))
    return size, _corners(shape, size)


def _corners(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[int, int, int]]:
    return list(itertools.product(*(range(0, extent, t) for extent, t in zip(shape, tile))))


def tile_peak_bytes(model: DeepMedic, tile: Sequence[int], batch_size: int = 1) -> int:
    """Bytes of activations alive at once while ``batch_size`` tiles of ``tile`` output voxels go
    through :func:`predict_volume`'s forward (inputs and tile probabilities included), in float32.

    Measured by running that forward on the meta device
    (:func:`~brainbench.inference.region.peak_live_bytes`), so the estimate follows the code. Not
    counted: the volume and its probabilities (the caller's), the weights (but the views ops take
    of them) and backend scratch space (:data:`~brainbench.inference.region.SCRATCH_HEADROOM`).
    """
    net = meta_copy(model)
    m, f = net.fc_margin, net.subsample_factor
    lead = _lead(m, f)
    region = [t + 2 * m for t in tile]

    def forward() -> None:
        normal = torch.empty((batch_size, net.in_channels, *[r + 2 * CONV_LAYERS for r in region]),
                             device="meta", memory_format=torch.channels_last_3d)
        subsampled = torch.empty((batch_size, net.in_channels, *net.subsampled_input_size(region, lead)),
                                 device="meta", memory_format=torch.channels_last_3d)
        _tile_probabilities(net, normal, subsampled, lead, [[]] * batch_size)

    with torch.inference_mode():
        return peak_live_bytes(forward)


def auto_tile(model: DeepMedic, shape: Sequence[int], budget_bytes: int,
              batch_size: int = 1) -> tuple[int, int, int]:
    """The largest tiles whose forward fits ``budget_bytes`` (:func:`tile_peak_bytes` ×
    :data:`~brainbench.inference.region.SCRATCH_HEADROOM`).

    Starts from one tile over the whole (X, Y, Z) volume and, while it does not fit, splits the
    axis with the largest tile into one more tile; tiles stay near-cubic, which keeps the halo each
    layer recomputes small. Tiles of ``factor`` voxels are the floor, whatever the budget.
    """
    model = meta_copy(model)
    f = model.subsample_factor
    counts = [1, 1, 1]
    tile = tuple(_axis_tile(e, 1, f) for e in shape)
    while SCRATCH_HEADROOM * tile_peak_bytes(model, tile, batch_size) > budget_bytes and max(tile) > f:
        axis = int(np.argmax(tile))
        while _axis_tile(shape[axis], counts[axis], f) >= tile[axis] and tile[axis] > f:
            counts[axis] += 1
        tile = tuple(_axis_tile(e, n, f) for e, n in zip(shape, counts))
    return tile


def _lead(margin: int, factor: int) -> int:
    """Voxels from the lattice voxel that leads a tile's widened block to the block's first voxel:
    the block starts ``margin`` voxels before a tile corner (a lattice voxel), the lattice a whole
    number of coarse steps before that."""
    return factor * math.ceil(margin / factor) - margin


def _border_mirrors(corner: Sequence[int], tile: Sequence[int], shape: Sequence[int],
                    margin: int) -> list[tuple[int, int, int, int]]:
    """In-place copies that mirror a widened tile's features at the volume border, as
    ``(axis, destination start, source start, count)`` in tile coordinates; the source is
    reversed. Position p < 0 takes voxel -1 - p and p >= extent takes 2·extent - 1 - p (edge
    repeated, :func:`~brainbench.models.deepmedic.mirror_pad`); positions beyond extent + margin
    feed only outputs beyond the volume and stay as they are."""
    copies = []
    for axis, (b, t, e) in enumerate(zip(corner, tile, shape)):
        origin = b - margin
        before = max(0, -origin)
        if before:
            copies.append((axis, 0, -2 * origin - before, before))
        after = min(margin, b + t + margin - e)
        if after > 0:
            copies.append((axis, e - origin, e - after - origin, after))
    return copies


def _tile_probabilities(net: DeepMedic, normal: Tensor, subsampled: Tensor, lead: int,
                        mirrors: Sequence[Sequence[tuple[int, int, int, int]]]) -> Tensor:
    """Class probabilities (N, n_classes, T…) of a batch of widened tiles; float32, net's device."""
    features = net.trunk(normal, subsampled, lead)
    for sample, copies in zip(features, mirrors):
        for axis, destination, source, count in copies:
            dim = axis + 1
            sample.narrow(dim, destination, count).copy_(sample.narrow(dim, source, count).flip(dim))
    m = net.fc_margin
    out_size = [s - 2 * m for s in features.shape[2:]]
    probabilities = torch.empty((features.shape[0], net.n_classes, *out_size), dtype=torch.float32,
                                device=features.device)
    widest = max(max(b.conv.in_channels, b.conv.out_channels) for b in net.fc_pathway)
    plane = features.shape[0] * widest * out_size[1] * out_size[2] * features.element_size()
    slab = max(1, HEAD_SLAB_BYTES // plane)
    for x in range(0, out_size[0], slab):
        width = min(slab, out_size[0] - x)
        logits = net.head(features[:, :, x:x + width + 2 * m])
        probabilities[:, :, x:x + width] = torch.softmax(logits.float(), dim=1)
    return probabilities


def _as_volume(image: np.ndarray | Tensor, model: DeepMedic) -> Tensor:
    volume = torch.as_tensor(image, dtype=torch.float32, device="cpu")
    if volume.ndim != 4 or volume.shape[0] != model.in_channels:
        raise ValueError(f"image: expected ({model.in_channels}, X, Y, Z), got {tuple(volume.shape)}")
    return volume


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _device(model: DeepMedic, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _channels_last(x: Tensor, device: torch.device) -> Tensor:
    return x.to(device).contiguous(memory_format=torch.channels_last_3d)


def predict_volume(model: DeepMedic, image: np.ndarray | Tensor,
                   tile_output: str | int | Sequence[int] = "auto", batch_size: int = 1,
                   device=None, memory_budget: int | None = None) -> np.ndarray:
    """Class probabilities of a whole volume by tiles; float32 (n_classes, X, Y, Z).

    image: (C, X, Y, Z) float32, z-scored with background 0. ``tile_output``: ``"auto"`` for the
    largest tiles that fit ``memory_budget`` bytes (default:
    :func:`~brainbench.inference.region.memory_budget_bytes` of the device, less the volume and its
    probabilities on the CPU), or the largest output block per axis, a multiple of the subsampling
    factor (input segments are 16 voxels larger). ``batch_size`` tiles go through the network at
    once. The model itself is left as it is: a folded eval-mode copy runs.
    """
    volume = _as_volume(image, model)
    shape = tuple(volume.shape[1:])
    device = _device(model, device)
    net = model.folded_for_inference().to(device, memory_format=torch.channels_last_3d)
    batch_size = max(1, batch_size)
    if isinstance(tile_output, str):
        if tile_output != "auto":
            raise BrainbenchConfigError(f"tile_output: expected 'auto' or tile sizes, got {tile_output!r}")
        budget = memory_budget_bytes(device) if memory_budget is None else memory_budget
        if device.type == "cpu":
            budget -= (model.in_channels + model.n_classes) * volume[0].numel() * 4
        tile = auto_tile(net, shape, budget, batch_size)
        corners = _corners(shape, tile)
    else:
        tile, corners = tile_grid(shape, tile_output, model.subsample_factor)
    m, f = net.fc_margin, net.subsample_factor
    lead = _lead(m, f)
    probs = torch.empty((model.n_classes, *shape), dtype=torch.float32)
    widened = [t + 2 * m for t in tile]
    with torch.inference_mode():
        for batch in _batches(corners, batch_size):
            pairs = [extract_segment_pair(volume, [c - m for c in corner], widened, f, lead)
                     for corner in batch]
            out = _tile_probabilities(net, _channels_last(torch.stack([p[0] for p in pairs]), device),
                                      _channels_last(torch.stack([p[1] for p in pairs]), device), lead,
                                      [_border_mirrors(corner, tile, shape, m) for corner in batch]).cpu()
            for block, (x, y, z) in zip(out, batch):
                dx, dy, dz = (min(t, e - c) for t, e, c in zip(tile, shape, (x, y, z)))
                probs[:, x:x + dx, y:y + dy, z:z + dz] = block[:, :dx, :dy, :dz]
    return probs.numpy()


def predict_volume_whole(model: DeepMedic, image: np.ndarray | Tensor, device=None) -> np.ndarray:
    """The same probabilities as :func:`predict_volume` from a single forward pass of the model as
    it is (not folded): the reference the tiled path is tested against.

    The output block is the volume, with the lattice anchored at voxel 0 as for the tiles; the
    model's own forward mirror-pads FC1's input (DeepMedic+) at the volume border. Memory grows
    with the volume: use it on small volumes.
    """
    volume = _as_volume(image, model)
    normal, subsampled = extract_segment_pair(volume, (0, 0, 0), volume.shape[1:], model.subsample_factor)
    device = _device(model, device)
    net = copy.deepcopy(model).eval().to(device)
    with torch.inference_mode():
        logits = net(normal[None].to(device), subsampled[None].to(device))
    return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
