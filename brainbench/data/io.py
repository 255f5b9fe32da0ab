"""Reading and writing volumes with header checks, and atomic writes.

Arrays are returned in nibabel voxel order ``(X, Y, Z)``; spacing is in mm as ``(sx, sy, sz)``.
Every failure raises :class:`~brainbench.errors.BrainbenchDataError` naming the file, so that the
CLI can report it in one line. This module must not import torch: evaluation uses it on submitted
files alone.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brainbench.errors import BrainbenchDataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_VOXELS = 512**3
"""Refuse to load a header announcing more voxels than this (a corrupt or hostile header)."""


@dataclass(frozen=True)
class Grid:
    """The voxel grid of a volume: shape ``(X, Y, Z)``, 4×4 affine (mm) and spacing (mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def matches(self, other: Grid, atol: float = 1e-3) -> bool:
        """True when both grids have the same shape and affines equal within ``atol`` mm."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))


def strip_nifti_suffix(name: str) -> str:
    """``case_seg.nii.gz`` → ``case_seg``; names without a NIfTI suffix are returned unchanged."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_grid(path: str | Path) -> Grid:
    """Read only the header and check it describes a sane 3D volume."""
    path = Path(path)
    if not path.is_file():
        raise BrainbenchDataError(path, "file not found")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for corrupt files
        raise BrainbenchDataError(path, f"not a readable NIfTI file ({_short(error)})") from None
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise BrainbenchDataError(path, f"expected a 3D volume, found shape {shape}")
    if any(s < 1 for s in shape) or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise BrainbenchDataError(path, f"implausible dimensions {shape} in header")
    return Grid(shape=shape, affine=np.asarray(image.affine, dtype=np.float64))


def load_volume(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, Grid]:
    """Load a 3D NIfTI volume as ``(X, Y, Z)`` array of ``dtype`` with its grid.

    Raises:
        BrainbenchDataError: unreadable or truncated file, not 3D, or non-finite values.
    """
    path = Path(path)
    grid = read_grid(path)
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as error:
        raise BrainbenchDataError(path, f"cannot read voxel data ({_short(error)})") from None
    data = np.asarray(data).reshape(grid.shape).astype(dtype, copy=False)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise BrainbenchDataError(path, "contains NaN or infinite values")
    return data, grid


def load_label(path: str | Path, allowed: set[int] | None = None) -> tuple[np.ndarray, Grid]:
    """Load an integer label map; check that every value is in ``allowed`` when given."""
    raw, grid = load_volume(path, dtype=np.float64)
    if not np.array_equal(raw, np.round(raw)):
        raise BrainbenchDataError(path, "label map holds non-integer values")
    labels = raw.astype(np.int16)
    if allowed is not None:
        unexpected = sorted(set(np.unique(labels).tolist()) - set(allowed))
        if unexpected:
            raise BrainbenchDataError(
                path, f"label values {unexpected} are not allowed (expected a subset of {sorted(allowed)})"
            )
    return labels, grid


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or error inside the block leaves any previous ``path`` untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_volume(array: np.ndarray, grid: Grid, path: str | Path, dtype: type | None = None) -> Path:
    """Write ``array`` (X, Y, Z) on ``grid`` as NIfTI, atomically; ``dtype`` defaults to the array's."""
    array = np.asarray(array)
    if tuple(array.shape) != grid.shape:
        raise BrainbenchDataError(path, f"array shape {array.shape} does not match grid {grid.shape}")
    data = array.astype(dtype or array.dtype, copy=False)
    image = nib.Nifti1Image(data, grid.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(grid.affine, code=1)
    image.set_sform(grid.affine, code=1)
    return write_atomic(path, lambda tmp: nib.save(image, str(tmp)))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
