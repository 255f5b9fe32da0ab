"""Cerebral-microbleed (CMB) detection: VALDO 2021 Task 2 and the Dou et al. 2016 public release.

Layouts (neither verified against a downloaded release):

- VALDO 2021 Task 2: the BIDS-like layout named in the issue, ``<root>/sub-XXX/
  sub-XXX_space-T2S_desc-masked_{T2S,T1,T2}.nii.gz`` and the label ``sub-XXX_space-T2S_CMB.nii.gz``
  (0/1); every file is in T2S space, the sequence on which microbleeds are defined, so T2S is the
  reference grid. Case id ``sub-XXX``. VALDO's ranking rule was not verified: unranked.
- Dou et al. 2016 (architectures.md §5.1): the authors' 20-scan SWI release, ``<root>/nii/<study>.nii``
  and ``<root>/ground_truth/<study>.mat`` holding CMB centroids, not a mask. The label map is grown
  from the points (:class:`DouLayout`): a sphere of ``radius_mm`` around each centroid on the SWI grid,
  written as a NIfTI file in the user's cache (:func:`cache_dir`), never in the release folder, because
  every consumer (preprocessing cache, ``brainbench data check``, ``brainbench evaluate --ref``) opens
  label maps as files. Assumptions, unverified: the ``.mat`` holds one numeric N×3 array (one centroid
  per row, columns along the NIfTI's first, second and third voxel axes, the order MATLAB indexes a
  volume read from NIfTI), its indices are 1-based (``index_base``), and the sphere radius (2.5 mm,
  :data:`DEFAULT_RADIUS_MM`) is a reconstruction, not the authors' value.

Labels are binary (0/1, region ``cmb``). Subjects without any microbleed are legitimate in both
releases, so an empty label map is data, not an error (``Edition.empty_labels``); the grown Dou masks
are accepted by ``brainbench evaluate --ref`` from the cache folder (``DouLayout.derived_labels``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import scipy.io

from brainbench.challenges.base import (Case, Edition, Layout, Synthetic, Unranked, collect, find_volume,
                                        read_channels)
from brainbench.errors import BrainbenchDataError
from brainbench.io import NIFTI_SUFFIXES, Grid, read_grid, save_volume, strip_nifti_suffix

CMB = {"cmb": (1,)}
CMB_LABELS = {0: "background", 1: "cerebral microbleed (CMB)"}
"""Binary microbleed masks of VALDO 2021 Task 2 and of the Dou et al. 2016 masks grown from centroids."""
VALDO_FILES = {"t2s": "T2S", "t1": "T1", "t2": "T2"}
"""Channel → contrast token of ``sub-XXX_space-T2S_desc-masked_<token>.nii.gz``; T2S first."""
VALDO_LABEL = "CMB"
DOU_IMAGES, DOU_POINTS = "nii", "ground_truth"
DEFAULT_RADIUS_MM = 2.5
"""Radius of the sphere grown around each Dou centroid: half of 5 mm, the usual upper diameter of a
microbleed on T2*/SWI (Greenberg et al. 2009, Lancet Neurol. 8:165); a reconstruction, not the authors'."""
CACHE_ENV = "BRAINBENCH_CACHE_DIR"
"""Environment variable naming the folder for derived files; default ``~/.cache/brainbench``."""
MASKS_FOLDER = "masks_from_points"
CMB_SYNTH = "brainbench.data.synth.cmb"


def valdo_stem(case_id: str, token: str) -> str:
    """``sub-XXX_space-T2S_desc-masked_<token>`` (a channel) or ``sub-XXX_space-T2S_CMB`` (the label)."""
    return f"{case_id}_space-T2S_{token}" if token == VALDO_LABEL else f"{case_id}_space-T2S_desc-masked_{token}"


@dataclass(frozen=True)
class ValdoLayout(Layout):
    """VALDO 2021 Task 2: one ``sub-*`` folder per subject, every file in T2S space."""

    channels: tuple[str, ...] = tuple(VALDO_FILES)
    expected: str = "sub-XXX/sub-XXX_space-T2S_desc-masked_T2S.nii.gz and sub-XXX_space-T2S_CMB.nii.gz"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        return collect([partial(self._read, folder, edition.modalities, require_labels)
                        for folder in sorted(root.glob("sub-*")) if folder.is_dir()])

    def _read(self, folder: Path, modalities: Sequence[str], require_labels: bool) -> Case:
        case_id = folder.name
        stems = {m: valdo_stem(case_id, token) for m, token in VALDO_FILES.items()}
        images = read_channels(folder, stems, modalities, case_id)
        label = find_volume(folder, valdo_stem(case_id, VALDO_LABEL))
        if label is None and require_labels:
            raise BrainbenchDataError(folder / f"{valdo_stem(case_id, VALDO_LABEL)}.nii.gz",
                                      f"missing CMB label map of case {case_id}")
        return Case(case_id=case_id, images=images, label=label, meta={"folder": str(folder)})


@dataclass(frozen=True)
class DouLayout(Layout):
    """Dou et al. 2016 release: ``nii/<study>.nii`` SWI scans and ``ground_truth/<study>.mat`` centroids.

    Attributes:
        radius_mm: radius (mm) of the sphere grown around each centroid into the label map.
        index_base: the first voxel's index in the ``.mat`` (1: MATLAB), an assumption.
    """

    channels: tuple[str, ...] = ("swi",)
    expected: str = "nii/<study>.nii and ground_truth/<study>.mat"
    radius_mm: float = DEFAULT_RADIUS_MM
    index_base: int = 1

    def derived_labels(self) -> Path:
        return cache_dir() / MASKS_FOLDER

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        images = root / DOU_IMAGES
        scans = sorted(p for p in images.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES)) \
            if images.is_dir() else []
        return collect([partial(self._read, root, scan, require_labels) for scan in scans])

    def _read(self, root: Path, image: Path, require_labels: bool) -> Case:
        study = strip_nifti_suffix(image.name)
        points = root / DOU_POINTS / f"{study}.mat"
        if not points.is_file():
            if require_labels:
                raise BrainbenchDataError(points, f"missing CMB centroids of case {study}")
            return Case(case_id=study, images={"swi": image}, meta={"folder": str(image.parent)})
        return Case(
            case_id=study,
            images={"swi": image},
            label=mask_from_points(points, image, self.radius_mm, self.index_base),
            meta={"folder": str(image.parent), "points": str(points), "radius_mm": self.radius_mm},
        )


def cache_dir() -> Path:
    """Folder for files brainbench derives from a release: ``$BRAINBENCH_CACHE_DIR`` or ``~/.cache/brainbench``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "brainbench")


def read_centroids(path: Path) -> np.ndarray:
    """The N×3 float64 array of the ``.mat`` file ``path``, whatever its variable name.

    An empty matrix (``[]``, shape 0×0) means no microbleed. Raises naming ``path`` when the file is
    unreadable or does not hold exactly one numeric N×3 array (a 3×N array is refused rather than
    guessed: with N = 3 the two readings cannot be told apart).
    """
    try:
        content = scipy.io.loadmat(str(path))
    except (OSError, ValueError, NotImplementedError, TypeError) as error:
        raise BrainbenchDataError(path, f"not a readable MATLAB file ({error})") from None
    arrays = {name: value for name, value in content.items()
              if not name.startswith("__") and isinstance(value, np.ndarray)
              and (np.issubdtype(value.dtype, np.number) or value.size == 0)}
    if len(arrays) != 1:
        raise BrainbenchDataError(path, f"expected one numeric N×3 array of CMB centroids, found variables "
                                        f"{sorted(name for name in content if not name.startswith('__'))}")
    name, value = next(iter(arrays.items()))
    if value.size == 0:
        return np.zeros((0, 3))
    if value.ndim != 2 or value.shape[1] != 3:
        raise BrainbenchDataError(path, f"variable {name!r} has shape {value.shape}; expected N×3 "
                                        "(one CMB centroid per row)")
    return value.astype(np.float64)


def sphere_mask(grid: Grid, centres: np.ndarray, radii_mm: Sequence[float]) -> np.ndarray:
    """Boolean ``grid.shape`` mask of the voxels whose centre lies within ``radii_mm[k]`` mm of
    ``centres[k]`` (0-based voxel coordinates, shape (N, 3)), plus the voxel nearest each centre, so
    that a point never vanishes. Distances are in world mm through the grid's affine (anisotropic
    voxels give anisotropic voxel spheres)."""
    mask = np.zeros(grid.shape, dtype=bool)
    linear = grid.affine[:3, :3]
    for centre, radius in zip(np.asarray(centres, dtype=np.float64), radii_mm):
        half = np.ceil(radius / np.asarray(grid.spacing)).astype(int) + 1
        nearest = np.round(centre).astype(int)
        lo, hi = np.maximum(nearest - half, 0), np.minimum(nearest + half + 1, grid.shape)
        axes = [np.arange(a, b) for a, b in zip(lo, hi)]
        offsets = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float64) - centre[:, None, None, None]
        distance = np.linalg.norm(np.tensordot(linear, offsets, axes=1), axis=0)
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] |= distance <= radius
        mask[tuple(nearest)] = True
    return mask


def mask_from_points(points: Path, image: Path, radius_mm: float, index_base: int) -> Path:
    """The label map grown from the centroids in ``points`` on ``image``'s grid (uint8 0/1), as a NIfTI
    file under ``cache_dir()/masks_from_points/``, named by a digest of the ``.mat`` bytes, the image
    grid, ``radius_mm`` and ``index_base``; written atomically once and reused afterwards.

    Raises naming ``points`` when a centroid lies outside the image.
    """
    grid = read_grid(image)
    key = json.dumps({"shape": grid.shape, "affine": np.round(grid.affine, 6).tolist(), "radius_mm": radius_mm,
                      "index_base": index_base}, sort_keys=True)
    digest = hashlib.sha256(points.read_bytes() + key.encode()).hexdigest()[:20]
    target = cache_dir() / MASKS_FOLDER / f"{strip_nifti_suffix(image.name)}-{digest}.nii.gz"
    if target.is_file():
        return target
    centres = read_centroids(points) - index_base
    outside = np.flatnonzero(np.any((np.round(centres) < 0) | (np.round(centres) > np.array(grid.shape) - 1), axis=1))
    if outside.size:
        first = centres[outside[0]] + index_base
        raise BrainbenchDataError(
            points, f"{outside.size} CMB centroid(s) outside the {'×'.join(map(str, grid.shape))} image {image.name}, "
                    f"first: row {outside[0] + 1} at {first.tolist()} (indices taken as {index_base}-based)")
    return save_volume(sphere_mask(grid, centres, [radius_mm] * len(centres)).astype(np.uint8), grid, target)


_UNRANKED = "{} did not give a ranking rule the spec could verify; scores are reported per metric, unranked"

EDITIONS: dict[str, Edition] = {edition.name: edition for edition in (
    Edition(
        name="valdo2021", challenge="microbleeds", modalities=tuple(VALDO_FILES), label_values=tuple(CMB_LABELS),
        label_names=CMB_LABELS, regions=CMB,
        protocol="valdo-2021-task2", ranking=Unranked(_UNRANKED.format("VALDO 2021 Task 2")), layout=ValdoLayout(),
        source="the BIDS-like VALDO 2021 Task 2 layout named in the issue; unverified against the release",
        synthetic=Synthetic(f"{CMB_SYNTH}.synthesize_valdo2021", n_cases=8, spacing_mm=(1.0, 1.0, 2.0)),
        reference_grid="t2s", empty_labels=True,
    ),
    Edition(
        name="dou2016", challenge="microbleeds", modalities=("swi",), label_values=tuple(CMB_LABELS),
        label_names=CMB_LABELS, regions=CMB,
        protocol="dou-2016", ranking=Unranked(_UNRANKED.format("Dou et al. 2016 (a paper, not a challenge)")),
        layout=DouLayout(),
        source="architectures.md §5.1 (the authors' 20-scan SWI release with CMB coordinates); file layout "
               "and .mat conventions unverified",
        synthetic=Synthetic(f"{CMB_SYNTH}.synthesize_dou2016", n_cases=8, spacing_mm=(1.0, 1.0, 2.0)),
        empty_labels=True,
    ),
)}
