"""Reading and writing volumes with header checks, and atomic writes.

Arrays are returned in nibabel voxel order ``(X, Y, Z)``; spacing is in mm as ``(sx, sy, sz)``.
NIfTI goes through nibabel; MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``), used by the
VSD-era challenges, go through SimpleITK and come back in the same order with a RAS affine (see
:func:`_itk_affine` for the LPS→RAS conversion).
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
import SimpleITK as sitk

from brainbench.errors import BrainbenchDataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
"""Formats read through SimpleITK (the detached ``.mhd``/``.nhdr`` headers point at their raw data)."""
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_UMASK = os.umask(0)
os.umask(_UMASK)
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


def existing_dir(path: str | Path) -> Path:
    """``path`` resolved, or an error naming it when it is not a folder."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise BrainbenchDataError(path, "folder not found")
    return root


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
    if path.name.lower().endswith(ITK_SUFFIXES):
        shape, affine = _read_itk_header(path)
    else:
        try:
            image = nib.load(str(path))
        except Exception as error:  # nibabel raises many types for corrupt files
            raise BrainbenchDataError(path, f"not a readable NIfTI file ({_short(error)})") from None
        shape, affine = tuple(int(s) for s in image.shape), image.affine
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise BrainbenchDataError(path, f"expected a 3D volume, found shape {shape}")
    if any(s < 1 for s in shape) or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise BrainbenchDataError(path, f"implausible dimensions {shape} in header")
    return Grid(shape=shape, affine=np.asarray(affine, dtype=np.float64))


def load_volume(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, Grid]:
    """Load a 3D NIfTI/MetaImage/NRRD volume as ``(X, Y, Z)`` array of ``dtype`` with its grid.

    Raises:
        BrainbenchDataError: unreadable or truncated file, not 3D, or non-finite values.
    """
    path = Path(path)
    grid = read_grid(path)
    if path.name.lower().endswith(ITK_SUFFIXES):
        data = _read_itk_voxels(path)
    else:
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
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_volume(array: np.ndarray, grid: Grid, path: str | Path, dtype: type | None = None) -> Path:
    """Write ``array`` (X, Y, Z) on ``grid`` atomically; ``dtype`` defaults to the array's.

    NIfTI by default; ``.mha`` and ``.nrrd`` (single-file ITK formats) through SimpleITK, with the
    RAS affine converted back to ITK's LPS origin/spacing/direction (inverse of :func:`_itk_affine`).
    """
    array = np.asarray(array)
    if tuple(array.shape) != grid.shape:
        raise BrainbenchDataError(path, f"array shape {array.shape} does not match grid {grid.shape}")
    data = array.astype(dtype or array.dtype, copy=False)
    if str(path).lower().endswith((".mha", ".nrrd")):
        return write_atomic(path, lambda tmp: sitk.WriteImage(_itk_image(data, grid), str(tmp)))
    image = nib.Nifti1Image(data, grid.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(grid.affine, code=1)
    image.set_sform(grid.affine, code=1)
    return write_atomic(path, lambda tmp: nib.save(image, str(tmp)))


def _itk_affine(origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """RAS 4×4 affine of an ITK image, matching what nibabel reports for the same image saved as NIfTI.

    ITK maps index ``(i, j, k)`` to the LPS point ``origin + D @ diag(spacing) @ (i, j, k)`` (mm); RAS
    flips the first two world axes, so both the linear part and the origin are premultiplied by
    ``diag(-1, -1, 1)``. The index order ``(i, j, k)`` is already nibabel's ``(X, Y, Z)``.
    """
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    return affine


def _itk_image(data: np.ndarray, grid: Grid) -> sitk.Image:
    """SimpleITK image of the ``(X, Y, Z)`` array ``data`` on ``grid``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    spacing = np.asarray(grid.spacing)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(LPS_TO_RAS @ grid.affine[:3, 3]))
    image.SetDirection(tuple((LPS_TO_RAS @ grid.affine[:3, :3] / spacing[None, :]).ravel()))
    return image


def _read_itk_header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape ``(X, Y, Z[, T])`` and RAS affine of a MetaImage/NRRD file, reading its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise BrainbenchDataError(path, f"not a readable {path.suffix} file ({_short(error)})") from None
    shape = tuple(int(s) for s in reader.GetSize())
    if len(shape) not in (3, 4):
        raise BrainbenchDataError(path, f"expected a 3D volume, found shape {shape}")
    if reader.GetNumberOfComponents() != 1:
        raise BrainbenchDataError(path, f"expected a scalar volume, found {reader.GetNumberOfComponents()} components")
    dimension = len(shape)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dimension, dimension)[:3, :3]
    spatial = (np.asarray(reader.GetOrigin()[:3]), np.asarray(reader.GetSpacing()[:3]), direction)
    return shape, _itk_affine(*spatial)


def _read_itk_voxels(path: Path) -> np.ndarray:
    """Voxel data of a MetaImage/NRRD file; SimpleITK's ``(Z, Y, X)`` array is reversed to ``(X, Y, Z)``."""
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as error:
        raise BrainbenchDataError(path, f"cannot read voxel data ({_short(error)})") from None
    return array.transpose(tuple(reversed(range(array.ndim))))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
