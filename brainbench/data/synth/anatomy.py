"""Healthy-brain anatomy for synthetic data, taken from the MNI ICBM152 2009a template.

The template is the nonlinear symmetric average of 152 adult T1 scans (Fonov et al., NeuroImage
2011, doi:10.1016/j.neuroimage.2010.07.033), with its grey- and white-matter probability maps. The
copies used are the ones shipped inside the ``nilearn`` wheel (``nilearn/datasets/data/``, uint8
0–255, 197×233×189 at 1 mm, RAS), read from the installed package so that nothing is downloaded.
Everything built from it is synthetic: an atlas average, not a subject.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainbench.io import Grid
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
CROP_MARGIN_MM = 12.0
"""Room kept around the brain's bounding box, so that per-subject warps do not cut the brain."""


@dataclass(frozen=True)
class TemplateAnatomy:
    """The template on one isotropic grid; every array is ``grid.shape`` ``(X, Y, Z)`` and read-only.

    ``t1`` is the template T1 scaled to 0–1; ``gm``, ``wm`` and ``csf`` are tissue fractions (0–1,
    summing to at most 1) inside ``brain_mask`` (the intracranial volume) and 0 outside it.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    grid: Grid


def template_path(name: str) -> Path:
    """Path of the template file ``name`` (``t1``, ``gm`` or ``wm``) inside the installed nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise BrainbenchDataError("nilearn", "package not installed; it ships the MNI152 template")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_FILES[name]
    if not path.is_file():
        raise BrainbenchDataError(path, "MNI152 2009a template file missing from the nilearn package")
    return path


@functools.lru_cache(maxsize=4)
def template_tissues(spacing_mm: float = 2.0) -> TemplateAnatomy:
    """The template resampled to isotropic ``spacing_mm`` (mm) and cropped around the brain.

    Computed once per spacing and process: the result is shared, hence read-only. The CSF fraction
    is what the intracranial mask (the template T1's skull-stripped support, holes filled) leaves
    after grey and white matter.
    """
    spacing_mm = float(spacing_mm)
    if not 0.5 <= spacing_mm <= 8.0:
        raise BrainbenchConfigError(f"template spacing must be within 0.5–8 mm, got {spacing_mm} mm")
    volumes, affine = _load_template()
    intracranial = ndimage.binary_fill_holes(volumes["t1"] > 0)
    lo, hi = _bounding_box(intracranial)
    lo = np.maximum(lo - CROP_MARGIN_MM, 0.0)
    hi = np.minimum(hi + CROP_MARGIN_MM, np.array(intracranial.shape) - 1.0)
    shape = tuple(int(n) for n in np.floor((hi - lo) / spacing_mm) + 1)
    new_affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    new_affine[:3, 3] = affine[:3, 3] + lo

    def resample(volume: np.ndarray) -> np.ndarray:
        return _resample(volume, lo, spacing_mm, shape)

    icv = np.clip(resample(intracranial.astype(np.float32)), 0.0, 1.0)
    brain_mask = icv > 0.5
    gm = np.where(brain_mask, np.clip(resample(volumes["gm"]), 0.0, 1.0), 0.0).astype(np.float32)
    wm = np.where(brain_mask, np.clip(resample(volumes["wm"]), 0.0, 1.0), 0.0).astype(np.float32)
    overfull = np.maximum(gm + wm, 1.0)
    gm, wm = gm / overfull, wm / overfull
    csf = np.where(brain_mask, np.clip(icv - gm - wm, 0.0, 1.0), 0.0).astype(np.float32)
    t1 = np.clip(resample(volumes["t1"]), 0.0, 1.0).astype(np.float32)
    arrays = [t1, gm, wm, csf, brain_mask]
    for array in arrays:
        array.setflags(write=False)
    return TemplateAnatomy(*arrays, grid=Grid(shape=shape, affine=new_affine))


def _load_template() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The three 1 mm volumes as float32 in 0–1, and their common affine (checked axis-aligned, 1 mm)."""
    volumes, affine = {}, None
    for name in TEMPLATE_FILES:
        path = template_path(name)
        image = nib.load(str(path))
        if affine is None:
            affine = np.asarray(image.affine, dtype=np.float64)
        if not np.allclose(image.affine, affine) or not np.allclose(affine[:3, :3], np.eye(3)):
            raise BrainbenchDataError(path, "expected the 1 mm RAS grid shared by the MNI152 files")
        volumes[name] = np.asarray(image.dataobj, dtype=np.float32) / 255.0
    return volumes, affine


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest voxel index of ``mask`` per axis, as float arrays."""
    idx = np.nonzero(mask)
    return np.array([i.min() for i in idx], float), np.array([i.max() for i in idx], float)


def _resample(
    volume: np.ndarray, origin_vox: np.ndarray, spacing_mm: float, shape: tuple[int, ...]
) -> np.ndarray:
    """Sample the 1 mm ``volume`` at ``origin_vox + spacing_mm * index``, low-passed first when shrinking.

    The Gaussian pre-filter (FWHM sqrt(s² − 1) mm) keeps thin structures as partial volumes instead
    of aliasing them.
    """
    if spacing_mm > 1.0:
        volume = ndimage.gaussian_filter(volume, sigma=np.sqrt(spacing_mm**2 - 1.0) / 2.355)
    return ndimage.affine_transform(
        volume,
        np.full(3, spacing_mm),
        offset=origin_vox,
        output_shape=shape,
        order=1,
        mode="constant",
        cval=0.0,
    ).astype(np.float32)
