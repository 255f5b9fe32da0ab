"""Labelled subjects on a release's own grid, for the MS, MRBrainS and NeoBrainS generators.

A subject is the MNI152 template (:mod:`brainbench.data.synth.anatomy`) cut into hard structure labels
once per template spacing, then sampled through a random per-subject warp onto the release's grid
(any shape and anisotropic spacing, e.g. MRBrainS 0.958×0.958×3 mm), so that every family gets its
official geometry from one anatomy. Images are rendered by :func:`brainbench.data.synth.subject.render`
from the labels (see :func:`class_fractions`).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.io import Grid
from brainbench.data.synth.anatomy import template_tissues
from brainbench.data.synth.subject import WARP_SCALE_MM, WARP_STD_MM, mark_root, smooth_field
from brainbench.errors import BrainbenchConfigError

ADULT_LABELS = {
    "cortical_gm": 1, "basal_ganglia": 2, "wm": 3, "wm_lesion": 4,
    "extracerebral_csf": 5, "ventricles": 6, "cerebellum": 7, "brainstem": 8,
}
"""The MRBrainS label values (spec §5), used as the template's structure map."""
TISSUES = {"csf": 1, "gm": 2, "wm": 3}
VENTRICLE_DEPTH_MM = 14.0
"""CSF at least this deep inside the intracranial mask (and near the midline) is ventricular."""
DEEP_GM_DEPTH_MM = 20.0
PERIVENTRICULAR, JUXTACORTICAL = 1, 2


@dataclass(frozen=True)
class TemplateLabels:
    """Hard labels of the template on its isotropic grid, each ``grid.shape`` ``(X, Y, Z)`` uint8.

    ``structure`` holds :data:`ADULT_LABELS` (no lesions); ``tissue`` holds :data:`TISSUES`, the
    argmax of the template's CSF/GM/WM fractions inside the brain (cerebellum and brainstem keep
    their grey/white distinction there, for rendering); ``lesion_zone`` marks where MS lesions
    grow: :data:`PERIVENTRICULAR` white matter (within 8 mm of a ventricle) and
    :data:`JUXTACORTICAL` white matter (within 4 mm of cortical grey matter).
    """

    structure: np.ndarray
    tissue: np.ndarray
    lesion_zone: np.ndarray
    grid: Grid


@dataclass(frozen=True)
class Subject:
    """One warped subject on its release grid: the maps of :class:`TemplateLabels`, each ``grid.shape``."""

    structure: np.ndarray
    tissue: np.ndarray
    lesion_zone: np.ndarray
    grid: Grid


@functools.lru_cache(maxsize=4)
def template_labels(spacing_mm: float = 2.0) -> TemplateLabels:
    """Cut the template into structures by tissue, depth and MNI coordinates (mm), once per spacing.

    Rules (MNI RAS world mm, approximate but anatomically placed): brainstem = non-CSF with
    |x| < 13, −42 < y < −8, z < −8; cerebellum = other non-CSF with y < −40, z < −15; basal ganglia
    and thalami = GM deeper than 20 mm with |x| < 32, −35 < y < 25, −12 < z < 20; ventricles = CSF
    deeper than 14 mm with |x| < 35, z > −15; the rest of the CSF is extracerebral.
    """
    anatomy = template_tissues(float(spacing_mm))
    grid, brain = anatomy.grid, anatomy.brain_mask
    tissue = np.where(brain, np.argmax(np.stack([anatomy.csf, anatomy.gm, anatomy.wm]), axis=0) + 1, 0)
    depth = ndimage.distance_transform_edt(brain, sampling=grid.spacing)
    x, y, z = np.meshgrid(*(grid.affine[a, 3] + grid.spacing[a] * np.arange(n) for a, n in enumerate(grid.shape)),
                          indexing="ij", sparse=True)
    csf, gm = tissue == TISSUES["csf"], tissue == TISSUES["gm"]
    brainstem = brain & ~csf & (np.abs(x) < 13) & (y > -42) & (y < -8) & (z < -8)
    cerebellum = brain & ~csf & ~brainstem & (y < -40) & (z < -15)
    deep_gm = gm & (depth > DEEP_GM_DEPTH_MM) & (np.abs(x) < 32) & (y > -35) & (y < 25) & (z > -12) & (z < 20)
    ventricles = csf & (depth > VENTRICLE_DEPTH_MM) & (np.abs(x) < 35) & (z > -15)
    structure = np.select(
        [brainstem, cerebellum, ventricles, csf, deep_gm, gm, tissue == TISSUES["wm"]],
        [ADULT_LABELS[k] for k in ("brainstem", "cerebellum", "ventricles", "extracerebral_csf",
                                   "basal_ganglia", "cortical_gm", "wm")],
        0,
    ).astype(np.uint8)
    wm = structure == ADULT_LABELS["wm"]
    near_ventricle = ndimage.distance_transform_edt(~ventricles, sampling=grid.spacing) <= 8.0
    near_cortex = ndimage.distance_transform_edt(structure != ADULT_LABELS["cortical_gm"], sampling=grid.spacing) <= 4.0
    zone = np.select([wm & near_ventricle, wm & near_cortex], [PERIVENTRICULAR, JUXTACORTICAL], 0).astype(np.uint8)
    tissue = tissue.astype(np.uint8)
    for array in (structure, tissue, zone):
        array.setflags(write=False)
    return TemplateLabels(structure=structure, tissue=tissue, lesion_zone=zone, grid=grid)


def release_grid(fov_mm: Sequence[float], spacing_mm: Sequence[float], axes: Sequence[int] = (0, 1, 2)) -> Grid:
    """Grid of ``spacing_mm`` (mm) covering ``fov_mm`` (mm, both per voxel axis), centred on the world origin.

    Voxel axis ``a`` runs along RAS world axis ``axes[a]``: ``(0, 1, 2)`` for axial slices,
    ``(0, 2, 1)`` for coronal ones (the slice axis is anterior–posterior).
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    shape = tuple(int(max(1, round(f / s))) for f, s in zip(fov_mm, spacing))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, world in enumerate(axes):
        affine[world, axis] = spacing[axis]
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return Grid(shape=shape, affine=affine)


def sample_subject(rng: np.random.Generator, grid: Grid, scale: float = 1.0) -> Subject:
    """Template labels through a random warp onto ``grid``; ``scale`` shrinks the head (neonates ≈ 0.6).

    A voxel at world ``w`` (mm, from ``grid.affine``) reads the template at ``c + w / (scale · s) + d``:
    ``c`` the template brain's centre, ``s`` a per-axis scaling in ±6 %, ``d`` a smooth displacement
    (:data:`WARP_STD_MM` over :data:`WARP_SCALE_MM`, both in template mm). Nearest-neighbour sampling
    keeps labels hard. The template spacing follows the grid's finest spacing, within 1–4 mm.
    """
    finest = min(grid.spacing) / scale
    labels = template_labels(float(np.clip(round(finest * 2) / 2, 1.0, 4.0)))
    tgrid = labels.grid
    centre_world = tgrid.affine[:3, 3] + tgrid.spacing[0] * np.array(ndimage.center_of_mass(labels.structure > 0))
    stretch = scale * rng.uniform(0.94, 1.06, size=3)
    ramps = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in grid.shape), indexing="ij", sparse=True)
    coords = np.empty((3, *grid.shape), dtype=np.float32)
    for world_axis in range(3):
        world = grid.affine[world_axis, 3] + sum(grid.affine[world_axis, a] * ramps[a] for a in range(3))
        template_mm = centre_world[world_axis] + world / stretch[world_axis] - tgrid.affine[world_axis, 3]
        displacement = smooth_field(rng, grid.shape, float(min(grid.spacing)), WARP_SCALE_MM * scale)
        coords[world_axis] = template_mm / tgrid.spacing[0] + displacement * (WARP_STD_MM / tgrid.spacing[0])
    structure, tissue, zone = (
        ndimage.map_coordinates(volume, coords, order=0, mode="constant", cval=0, prefilter=False)
        for volume in (labels.structure, labels.tissue, labels.lesion_zone)
    )
    return Subject(structure=structure, tissue=tissue, lesion_zone=zone, grid=grid)


def class_fractions(classes: np.ndarray, n_classes: int) -> list[np.ndarray]:
    """Partial-volume fraction of each class ``1..n_classes`` of a hard class map: the one-hot maps
    blurred by half a voxel (float32, ``classes.shape``), ready for ``subject.render``."""
    return [ndimage.gaussian_filter((classes == k).astype(np.float32), sigma=0.5) for k in range(1, n_classes + 1)]


def check_count(name: str, value: object, high: int) -> int:
    """``value`` as an int in 1–``high``; a config error naming ``name`` otherwise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 1 <= value <= high:
        raise BrainbenchConfigError(f"{name} must be an integer in 1–{high}, got {value!r}")
    return int(value)


def check_seed(seed: object) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise BrainbenchConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_spacing(spacing_mm: object, low: float, high: float) -> tuple[float, float, float]:
    """A number (isotropic) or three numbers, each within ``low``–``high`` mm, as a 3-tuple of floats."""
    values = list(spacing_mm) if isinstance(spacing_mm, Sequence) and not isinstance(spacing_mm, str) else [spacing_mm]
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and low <= float(v) <= high for v in values
    ):
        raise BrainbenchConfigError(
            f"spacing_mm must be one or three numbers within {low}–{high} mm, got {spacing_mm!r}"
        )
    return tuple(float(v) for v in values)


def start_run(root: str | Path, generator: str, n_cases: object, seed: object, overwrite: bool,
              release_marker: str, **extra) -> tuple[Path, int, int]:
    """Checked ``(root, seed, n_cases)``, after recording the run (``extra``: geometry, options) at ``root``."""
    n_cases, seed = check_count("n_cases", n_cases, 99), check_seed(seed)
    root = Path(root)
    mark_root(root, {"generator": generator, "seed": seed, "n_cases": n_cases, **extra}, overwrite, release_marker)
    return root, seed, n_cases


def needs_writing(paths: Sequence[Path], overwrite: bool) -> bool:
    """True unless every file of a case is already there (and ``overwrite`` is off)."""
    return overwrite or not all(path.is_file() for path in paths)

