"""Surface distances (mm) in every variant the challenges used (challenges.md §1.2); empty masks take
the caller's values (``if_both_empty``, ``if_one_empty``), never a default.

| function | variant | used by |
|---|---|---|
| :func:`hausdorff_distance`, :func:`hd95`, :func:`average_symmetric_surface_distance` | medpy voxel boundary, pooled percentile | BraTS 2017–2021 |
| :func:`robust_hausdorff`, :func:`surfel_average_distance` | DeepMind surfels, area-weighted | BraTS 2023+ |
| :func:`kth_ranked_hausdorff` | K-th ranked boundary distance, larger direction | MRBrainS13 |
| :func:`in_plane_hd95` | 2D erosion boundary, KD-tree, larger directed 95th percentile | MRBrainS18 |
| :func:`covalic_hausdorff`, :func:`covalic_average_distance` | ball-gradient boundary, Maurer map, floor-index rank | ISLES 2015–2017 |
| :func:`set_hausdorff` | whole-mask set distance (ITK filter) | MSSEG (anima) |

medpy variant: boundary of a mask = mask XOR its binary erosion with the 6-connected structure (voxels on the array
edge count as boundary). Each boundary voxel of A gets the Euclidean distance, in mm, to the nearest
boundary voxel of B and vice versa; the two sets are pooled and a percentile taken with numpy's
linear interpolation, exactly as ``medpy.metric.binary.hd95``/``hd`` with ``connectivity=1``.

Speed: both masks are cropped to the bounding box of their union plus a 1-voxel margin first (on a
BraTS case the box is a few percent of the volume). Every distance stays exactly as medpy's: all
boundary voxels of both masks lie inside the box, so the nearest boundary voxel of B to any boundary
voxel of A is inside it too; and the erosion sees the same neighbourhoods, because the margin voxels
are background, as the voxels beyond them are. The margin makes this hold whatever value erosion assumes
beyond the array; only masks touching the real array edge reach it, exactly as in medpy. Every other
variant crops the same way. The medpy and surfel variants find nearest points by a local search with a
KD-tree fallback rather than a distance transform of the whole box (:func:`_corner_distances`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
from scipy.spatial import cKDTree

_FULL_3X3X3 = generate_binary_structure(3, 3)
_ITK_BALL_RADIUS_1 = generate_binary_structure(3, 2)
"""ITK's ``BinaryBallStructuringElement`` of radius 1 in 3D: the 3×3×3 box less its 8 corners."""
_IN_PLANE_3X3 = np.ones((3, 3, 1), dtype=bool)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary voxel of ``a`` to ``b``'s boundary, and from ``b``'s to ``a``'s.

    Both masks must be 3D, of the same shape and non-empty; ``spacing`` is the voxel size in mm per axis.
    """
    return _boundary_distances(*_checked_crop(a, b, margin=1), spacing)


def _boundary_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surface_distances` of two masks already cropped to their union box plus one voxel."""
    boundary_a = _boundary(a)
    boundary_b = _boundary(b)
    sampling = np.asarray(spacing, dtype=np.float64)
    return _corner_distances(boundary_a, boundary_b, sampling), _corner_distances(boundary_b, boundary_a, sampling)


def hausdorff_distance(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float],
    *,
    percentile: float = 100.0,
    if_both_empty: float,
    if_one_empty: float,
) -> float:
    """Percentile (100 = classic max Hausdorff) of the pooled symmetric boundary distances, in mm."""
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=1)
    if empty is not None:
        return empty
    d_ab, d_ba = _boundary_distances(a, b, spacing)
    return float(np.percentile(np.hstack((d_ab, d_ba)), percentile))


def hd95(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float], *, if_both_empty: float, if_one_empty: float
) -> float:
    """95th-percentile Hausdorff distance in mm (``medpy.metric.binary.hd95`` semantics)."""
    return hausdorff_distance(
        a, b, spacing, percentile=95.0, if_both_empty=if_both_empty, if_one_empty=if_one_empty
    )


def average_symmetric_surface_distance(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float], *, if_both_empty: float, if_one_empty: float
) -> float:
    """ASSD in mm as ``medpy.metric.binary.assd`` (0.5): the mean of both directions' boundary distances
    pooled, which weights each direction by its boundary size (older medpy averaged the two means)."""
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=1)
    if empty is not None:
        return empty
    return float(np.concatenate(_boundary_distances(a, b, spacing)).mean())


def kth_ranked_hausdorff(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float],
    *,
    percentile: float = 95.0,
    if_both_empty: float,
    if_one_empty: float,
) -> float:
    """Huttenlocher's partial Hausdorff distance (MRBrainS13 "HD95"), in mm.

    Per direction the K-th smallest boundary distance with K = ⌈percentile/100 · n⌉ (no interpolation),
    boundaries as in :func:`surface_distances`; the larger of the two directions.
    """
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=1)
    if empty is not None:
        return empty
    return max(_kth_ranked(d, percentile) for d in _boundary_distances(a, b, spacing))


def in_plane_hd95(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float], *, if_both_empty: float, if_one_empty: float
) -> float:
    """MRBrainS18 / WMH-challenge HD95 in mm: ``max(percentile95(d_ab), percentile95(d_ba))``.

    Boundary = mask minus its 2D erosion with a 3×3 in-plane square (axes 0 and 1), the image edge
    counting as foreground, as ``SimpleITK.BinaryErode(mask, (1, 1, 0))``; boundary voxel centres in mm
    and KD-tree nearest distances; numpy's linear-interpolation percentile per direction.
    """
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=1)  # erosion unchanged: see top
    if empty is not None:
        return empty
    sampling = np.asarray(spacing, dtype=np.float64)
    points_a = np.argwhere(a & ~binary_erosion(a, structure=_IN_PLANE_3X3, border_value=1)) * sampling
    points_b = np.argwhere(b & ~binary_erosion(b, structure=_IN_PLANE_3X3, border_value=1)) * sampling
    d_ab = cKDTree(points_b).query(points_a, k=1)[0]
    d_ba = cKDTree(points_a).query(points_b, k=1)[0]
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def covalic_hausdorff(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float],
    *,
    fraction: float = 1.0,
    if_both_empty: float,
    if_one_empty: float,
) -> float:
    """covalic's ``HausdorffDistanceImageToImageMetric`` (ISLES 2015–2017, spec §1.2), in mm.

    Source: InsightSoftwareConsortium/covalic ``Code/Metrics/HausdorffDistanceImageToImageMetric.txx``.
    Per direction of :func:`_covalic_distances`, ``sorted(d)[int(fraction·(n − 1))]`` (1.0 = max); the
    larger direction.
    """
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=1)
    if empty is not None:
        return empty
    return float(max(np.sort(d)[int(fraction * (len(d) - 1))] for d in _covalic_distances(a, b, spacing)))


def covalic_average_distance(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float], *, if_both_empty: float, if_one_empty: float
) -> float:
    """covalic's ``AverageDistanceImageToImageMetric``, the ISLES 2015–2017 ASSD, in mm.

    Source: InsightSoftwareConsortium/covalic ``Code/Metrics/AverageDistanceImageToImageMetric.txx``:
    ``0.5 · (d12 + d21)``, the mean of the two directed means of :func:`_covalic_distances`, where medpy
    pools both directions (weighting each by its boundary size).
    """
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=1)
    if empty is not None:
        return empty
    d_ab, d_ba = _covalic_distances(a, b, spacing)
    return float((d_ab.mean() + d_ba.mean()) / 2)


def _covalic_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """covalic's directed distances, ``a`` to ``b`` and back, of two masks cropped with a 1-voxel margin.

    The voxels of a mask where its ``MorphologicalGradientImageFilter`` with the radius-1
    ``BinaryBallStructuringElement`` is non-zero: the mask less its erosion by that ball, the image edge
    not counting as background (as in ITK). Each reads the other mask's ``SignedMaurerDistanceMap``
    (inside negative, image spacing on) as an absolute value: the distance to that mask's contour, its
    voxels with background among their 26 neighbours. covalic samples the (float32) map with a cubic
    B-spline at voxel centres, where the interpolating spline returns the grid values used here.
    """
    sampling = np.asarray(spacing, dtype=np.float64)
    directed = []
    for source, target in ((a, b), (b, a)):
        boundary = source & ~binary_erosion(source, structure=_ITK_BALL_RADIUS_1, border_value=1)
        contour = target & ~binary_erosion(target, structure=_FULL_3X3X3, border_value=1)
        directed.append(distance_transform_edt(~contour, sampling=sampling)[boundary])
    return directed[0], directed[1]


def set_hausdorff(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float], *, if_both_empty: float, if_one_empty: float
) -> float:
    """``itk::HausdorffDistanceImageFilter`` (anima, MSSEG): max over all voxels of each mask of the
    distance (mm) to the nearest voxel of the other mask, the larger direction."""
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=0)
    if empty is not None:
        return empty
    sampling = np.asarray(spacing, dtype=np.float64)
    d_ab = distance_transform_edt(~b, sampling=sampling)[a].max()
    d_ba = distance_transform_edt(~a, sampling=sampling)[b].max()
    return float(max(d_ab, d_ba))


def _kth_ranked(distances: np.ndarray, percentile: float) -> float:
    rank = max(math.ceil(percentile / 100.0 * len(distances)), 1)
    return float(np.partition(distances, rank - 1)[rank - 1])


def _boundary(mask: np.ndarray) -> np.ndarray:
    """``mask ^ binary_erosion(mask, generate_binary_structure(3, 1))`` (array-edge voxels are boundary), C order.

    The erosion is the AND of the mask with its six face-shifted copies, written as slices of a
    C-ordered copy: several times faster than scipy's generic erosion on the cropped boxes, same voxels.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    boundary = np.zeros(mask.shape, dtype=bool)
    inner = boundary[1:-1, 1:-1, 1:-1]
    np.copyto(inner, mask[1:-1, 1:-1, 1:-1])
    for axis in range(3):
        for step in (slice(None, -2), slice(2, None)):
            neighbour = [slice(1, -1)] * 3
            neighbour[axis] = step
            inner &= mask[tuple(neighbour)]
    boundary ^= mask  # interior ^ mask: the mask less its interior
    return boundary


def _mask_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool, checked to be 3D and of one shape."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected two 3D masks of the same shape, got {a.shape} and {b.shape}")
    return a, b


def _checked_crop(a: np.ndarray, b: np.ndarray, *, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union box plus ``margin``; both must be non-empty."""
    empty, a, b = _crop_or_empty(a, b, 0.0, 0.0, margin=margin)
    if empty is not None:
        raise ValueError("surface distances are undefined for an empty mask")
    return a, b


def _crop_or_empty(
    a: np.ndarray, b: np.ndarray, if_both_empty: float, if_one_empty: float, *, margin: int
) -> tuple[float | None, np.ndarray, np.ndarray]:
    """``(value, a, b)``: the protocol's value if a mask is empty, else None and both masks (bool) cut to
    the box of their union plus ``margin`` voxels. One pass over each volume decides both."""
    a, b = _mask_pair(a, b)
    occupancy_a, occupancy_b = _occupancy(a), _occupancy(b)
    a_empty, b_empty = not occupancy_a[0].any(), not occupancy_b[0].any()
    if a_empty and b_empty:
        return float(if_both_empty), a, b
    if a_empty or b_empty:
        return float(if_one_empty), a, b
    box = _box(occupancy_a, occupancy_b, margin)
    return None, a[box], b[box]


def union_box(a: np.ndarray, b: np.ndarray, *, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of ``a | b`` (not both empty) grown by ``margin`` voxels per side, clipped to the array."""
    return _box(_occupancy(a), _occupancy(b), margin)


def _occupancy(mask: np.ndarray) -> list[np.ndarray]:
    """Per axis, which slices hold a voxel of ``mask``, in one pass over the volume in any memory order.

    Reducing over the axis of largest stride combines contiguous slabs (fast in C and Fortran order
    alike); the profile along that axis is then read inside the rectangle found, not the whole volume.
    """
    slowest = int(np.argmax(mask.strides))
    others = tuple(axis for axis in range(3) if axis != slowest)
    plane = mask.any(axis=slowest)
    profiles = {others[0]: plane.any(axis=1), others[1]: plane.any(axis=0)}
    window = [slice(None)] * 3
    for axis in others:
        hits = np.flatnonzero(profiles[axis])
        window[axis] = slice(int(hits[0]), int(hits[-1]) + 1) if len(hits) else slice(0, 0)
    profiles[slowest] = mask[tuple(window)].any(axis=others)
    return [profiles[axis] for axis in range(3)]


def _box(occupancy_a: list[np.ndarray], occupancy_b: list[np.ndarray], margin: int) -> tuple[slice, slice, slice]:
    box = []
    for profile_a, profile_b in zip(occupancy_a, occupancy_b):
        hits = np.flatnonzero(profile_a | profile_b)
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + 1 + margin))
    return tuple(box)


# -- surfel variant (DeepMind ``surface-distance``, BraTS 2023+ scorer; challenges.md §1.2) ------------

_SURFEL_PIECES = (
    "0000000 0000001 0000001 0002000 0000001 0000200 0000002 1000003 "
    "0000001 0000002 0000200 1000003 0002000 1000003 1000003 2000000 "
    "0000001 0000020 0000002 0100003 0000002 0010003 0000003 0000006 "
    "0000002 0000021 0000201 0000114 0002001 0001014 1000004 1000003 "
    "0000001 0000002 0000020 0100003 0000002 0000201 0000021 0000114 "
    "0000002 0000003 0010003 0000006 0002001 1000004 0001014 1000003 "
    "0002000 0100003 0100003 0200000 0002001 0001104 0100004 0100003 "
    "0002001 0100004 0001104 0100003 0004000 0002001 0002001 0002000 "
    "0000001 0000002 0000002 0002001 0000020 0010003 0000021 0001014 "
    "0000002 0000003 0000201 1000004 0100003 0000006 0000114 1000003 "
    "0000200 0010003 0000201 0001104 0010003 0020000 0010004 0010003 "
    "0000201 0010004 0000400 0000201 0001104 0010003 0000201 0000200 "
    "0000002 0000003 0000021 0100004 0000021 0010004 0000040 0000021 "
    "0000003 0000004 0010004 0000003 0100004 0000003 0000021 0000002 "
    "1000003 0000006 0000114 0100003 0001014 0010003 0000021 0000020 "
    "1000004 0000003 0000201 0000002 0002001 0000002 0000002 0000001"
)
"""Marching-cubes surface pieces per 2×2×2 neighbour code 0–127 (code c ≥ 128 has those of 255 − c).

Seven digits per code, counting: half unit squares normal to x, y, z; triangles of area √2/8 whose
normal is the (x, y), (x, z), (y, z) face diagonal; and eighths of the (1, 1, 1) triangle of area
√3/8 (normal along a body diagonal). These are the triangles of the lookup table in DeepMind's
``surface_distance/lookup_tables.py`` grouped by orientation, which is all that the area of a
triangle under an anisotropic voxel size depends on.
"""


@lru_cache(maxsize=32)
def _surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Surface area (mm²) of the marching-cubes surface inside each of the 256 neighbour codes."""
    sx, sy, sz = spacing
    yz, xz, xy = sy * sz, sx * sz, sx * sy
    piece_area = np.array([
        0.5 * yz, 0.5 * xz, 0.5 * xy,
        0.25 * math.hypot(yz, xz), 0.25 * math.hypot(yz, xy), 0.25 * math.hypot(xz, xy),
        0.125 * math.sqrt(yz * yz + xz * xz + xy * xy),
    ])
    counts = np.array([[int(digit) for digit in code] for code in _SURFEL_PIECES.split()], dtype=np.float64)
    half = counts @ piece_area
    return np.concatenate((half, half[::-1]))


def surfel_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Surfel distances as ``surface_distance.compute_surface_distances``, both masks non-empty.

    The surface points are the corners of the voxel grid whose 2×2×2 neighbourhood is mixed; each
    carries the marching-cubes surface area (mm²) of that neighbourhood. Returns ``(d_ab, area_a,
    d_ba, area_b)``: distances (mm) from each surface point of ``a`` to the nearest of ``b`` and back,
    each sorted ascending (ties by area) with the matching areas. Only the union bounding box is
    visited, and nearest points are found by :func:`_corner_distances`, not a distance transform.
    """
    return _surfel_distances(*_checked_crop(a, b, margin=0), spacing)


def _surfel_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`surfel_distances` of two masks already cropped to their union box (cropping is exact:
    the corner grid of the box, padded by one voxel, holds every surface point)."""
    sampling = np.array([float(s) for s in spacing])
    areas = _surfel_area_table(tuple(sampling))
    code_a = _neighbour_codes(a)
    code_b = _neighbour_codes(b)
    surface_a = (code_a != 0) & (code_a != 255)
    surface_b = (code_b != 0) & (code_b != 255)
    d_ab = _corner_distances(surface_a, surface_b, sampling)
    d_ba = _corner_distances(surface_b, surface_a, sampling)
    return (
        *_sorted_by_distance(d_ab, areas[code_a[surface_a]]),
        *_sorted_by_distance(d_ba, areas[code_b[surface_b]]),
    )


def robust_hausdorff(
    a: np.ndarray,
    b: np.ndarray,
    spacing: Sequence[float],
    *,
    percentile: float = 95.0,
    if_both_empty: float,
    if_one_empty: float,
) -> float:
    """``compute_robust_hausdorff``: per direction, the first distance whose cumulative surface-area
    fraction reaches ``percentile``/100; the larger of the two directions, in mm."""
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=0)
    if empty is not None:
        return empty
    d_ab, area_a, d_ba, area_b = _surfel_distances(a, b, spacing)
    return max(_area_percentile(d_ab, area_a, percentile), _area_percentile(d_ba, area_b, percentile))


def surfel_average_distance(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float], *, if_both_empty: float, if_one_empty: float
) -> float:
    """Mean of the two area-weighted directed averages of ``compute_average_surface_distance``, in mm."""
    empty, a, b = _crop_or_empty(a, b, if_both_empty, if_one_empty, margin=0)
    if empty is not None:
        return empty
    d_ab, area_a, d_ba, area_b = _surfel_distances(a, b, spacing)
    return float((np.average(d_ab, weights=area_a) + np.average(d_ba, weights=area_b)) / 2)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Neighbour code (uint8) of every grid corner; shape = ``mask.shape`` + 1 per axis.

    Corner ``i`` lies between voxels ``i − 1`` and ``i``; the code weights the voxel at offset
    (i, j, k) ∈ {0, 1}³ around it by 2^(7 − 4i − 2j − k) (128 for (0, 0, 0) … 1 for (1, 1, 1)), as
    DeepMind's kernel. The weights factor per axis, so the code is built one axis at a time.
    """
    padded = np.zeros(tuple(n + 2 for n in mask.shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    code = (padded[:, :, :-1] << 1) | padded[:, :, 1:]
    code = (code[:, :-1, :] << 2) | code[:, 1:, :]
    return (code[:-1] << 4) | code[1:]


_SEARCH_RADII = tuple(range(1, 11))
"""Radii (voxels) of the blocks searched around a surface point before falling back to a KD-tree."""

_ALWAYS_SEARCHED = 3
"""Radii up to this are searched for every point; the wider blocks only while few points are left."""

_MAX_WIDE_LOOKUPS = 1 << 18
"""Most offsets (points × block) looked up per radius past :data:`_ALWAYS_SEARCHED`: a few misses 4–10
voxels wide (the usual case) then cost under half a KD-tree, and far-off blobs go straight to it."""


def _corner_distances(source: np.ndarray, target: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """Distance (mm) from each ``source`` point to the nearest ``target`` point, in ``source`` C order.

    Points are the True cells of two boolean grids of one shape (boundary voxels, or surfel corners).

    Exact, without a distance transform: shared points are 0; otherwise the (2r+1)³ block around a
    point is searched for r = 1, 2, … (:data:`_SEARCH_RADII`; past r = 3 only while few points are
    left), and the shortest offset found is final if it is no longer than (r+1)·min(spacing), which no
    target outside the block can beat; the points left query a KD-tree. Each distance is √Σ(Δi·s)² of
    its integer offset, so equal offsets give equal distances.
    """
    distances = np.zeros(int(np.count_nonzero(source)))
    apart = ~target[source]
    if not apart.any():
        return distances
    indices = np.flatnonzero(source & ~target)
    found = np.full(len(indices), np.inf)
    reach = _SEARCH_RADII[-1]
    padded = np.zeros(tuple(n + 2 * reach for n in target.shape), dtype=bool)
    padded[reach:-reach, reach:-reach, reach:-reach] = target
    steps = np.array(padded.strides) // padded.itemsize
    _, ny, nz = target.shape
    centres = (indices // (ny * nz) + reach) * steps[0] + (indices // nz % ny + reach) * steps[1]
    centres += indices % nz + reach
    flat = padded.ravel()
    open_ = np.arange(len(indices))
    for radius, (offsets, lengths) in zip(_SEARCH_RADII, _search_blocks(tuple(sampling))):
        if radius > _ALWAYS_SEARCHED and len(open_) * len(offsets) > _MAX_WIDE_LOOKUPS:
            break
        hits = flat[centres[open_, None] + offsets @ steps]
        first = hits.argmax(axis=1)
        hit = hits[np.arange(len(open_)), first]
        found[open_[hit]] = lengths[first[hit]]
        open_ = open_[~hit]
        if len(open_) == 0:
            break
    if len(open_):
        targets = np.argwhere(target)
        tree = cKDTree(targets * sampling, leafsize=64, balanced_tree=False, compact_nodes=False)
        points = np.column_stack(np.unravel_index(indices[open_], target.shape))
        _, nearest = tree.query(points * sampling, k=1)
        found[open_] = _lengths(points - targets[nearest], sampling)
    distances[apart] = found
    return distances


@lru_cache(maxsize=32)
def _search_blocks(sampling: tuple[float, float, float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per search radius r: the offsets of the (2r+1)³ block no longer than (r+1)·min(spacing) mm,
    shortest first, with their lengths, less those of radius r − 1 (a point reaching radius r missed
    them all), so each offset is looked at once."""
    blocks = []
    for radius in _SEARCH_RADII:
        offsets = np.argwhere(np.ones((2 * radius + 1,) * 3, dtype=bool)) - radius
        lengths = _lengths(offsets, np.asarray(sampling))
        order = np.argsort(lengths, kind="stable")
        kept = (lengths[order] > 0) & (lengths[order] <= (radius + 1) * min(sampling))
        searched = (np.abs(offsets[order]).max(axis=1) < radius) & (lengths[order] <= radius * min(sampling))
        keep = order[kept & ~searched]
        blocks.append((offsets[keep], lengths[keep]))
    return blocks


def _lengths(offsets: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    return np.sqrt(((offsets * sampling) ** 2).sum(axis=1))


def _sorted_by_distance(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sorted by (distance, area), as the package's ``sorted(zip(...))``; the points shared by both
    surfaces (distance 0, most of them on a good segmentation) need only a sort of their areas."""
    shared = distances == 0
    apart = ~shared
    order = np.lexsort((areas[apart], distances[apart]))
    return (
        np.concatenate((distances[shared], distances[apart][order])),
        np.concatenate((np.sort(areas[shared]), areas[apart][order])),
    )


def _area_percentile(distances: np.ndarray, areas: np.ndarray, percentile: float) -> float:
    cumulative = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percentile / 100.0))
    return float(distances[min(index, len(distances) - 1)])
