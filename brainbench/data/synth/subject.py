"""Building blocks shared by every synthetic family: subject warps, lesion shapes, MR rendering, run records.

A synthetic subject is the MNI template anatomy (:mod:`brainbench.data.synth.anatomy`) under its own
smooth random warp; lesions are noisy ellipsoids; images are tissue fractions times per-class mean
signals, under a multiplicative bias field, with Rician noise. Generators for a family (BraTS, ISLES,
…) only choose the lesion classes, the contrast table and the file layout.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.io import Grid, write_atomic
from brainbench.data.synth.anatomy import TemplateAnatomy
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

METADATA_FILE = "brainbench_synthetic.json"
WARP_STD_MM = 2.0
"""Standard deviation of each displacement component of the per-subject warp."""
WARP_SCALE_MM = 30.0
BIAS_STD = 0.12
"""Standard deviation of the log bias field (about ±25 % across the brain)."""
BIAS_SCALE_MM = 70.0


@dataclass(frozen=True)
class SynthConfig:
    """How many cases to synthesize, on which isotropic grid (mm), from which seed (≥ 0)."""

    n_cases: int = 12
    spacing_mm: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_integer(self.n_cases) or not 1 <= self.n_cases <= 999:
            raise BrainbenchConfigError(
                f"n_cases must be an integer in 1–999 (3-digit case ids), got {self.n_cases!r}"
            )
        if not _is_integer(self.seed) or self.seed < 0:
            raise BrainbenchConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.spacing_mm, bool) or not isinstance(self.spacing_mm, numbers.Real):
            raise BrainbenchConfigError(f"spacing_mm must be a number, got {self.spacing_mm!r}")
        if not 1.0 <= float(self.spacing_mm) <= 4.0:
            raise BrainbenchConfigError(f"spacing_mm must be within 1–4 mm, got {self.spacing_mm!r}")


def prepare_root(
    root: Path, generator: str, config: SynthConfig, overwrite: bool, real_data_glob: str
) -> None:
    """:func:`mark_root` with the record of a :class:`SynthConfig` run (isotropic spacing)."""
    record = {"generator": generator, "seed": int(config.seed), "spacing_mm": float(config.spacing_mm),
              "n_cases": int(config.n_cases)}
    mark_root(root, record, overwrite, real_data_glob)


def mark_root(root: Path, record: dict, overwrite: bool, release_marker: str) -> None:
    """Write the generator record ``brainbench_synthetic.json`` at ``root`` before any case.

    The record is written atomically first, so that a rerun after a crash recognises the folder.
    Refuses, unless ``overwrite``, a root whose record differs from ``record`` (other generator, seed
    or geometry; the case count may grow) or that holds ``release_marker`` entries (a glob) but no
    record: likely real data.
    """
    record = json.loads(json.dumps(record))
    marker = root / METADATA_FILE
    if not overwrite and marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError) as error:
            raise BrainbenchDataError(marker, f"unreadable generator record ({error})") from None
        kept = {key: previous.get(key) for key in record if key != "n_cases"} if isinstance(previous, dict) else None
        if kept != {key: value for key, value in record.items() if key != "n_cases"}:
            raise BrainbenchDataError(
                root,
                f"holds synthetic cases recorded as {previous}, not {record}; use another folder or overwrite=True",
            )
    elif not overwrite and root.is_dir() and any(root.glob(release_marker)):
        raise BrainbenchDataError(
            root, f"holds {release_marker} but no {METADATA_FILE}; refusing to mix in synthetic cases"
        )
    payload = json.dumps({**record, "data_source": "synthetic"}, indent=2) + "\n"
    write_atomic(marker, lambda tmp: tmp.write_text(payload))


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing_mm: float, scale_mm: float) -> np.ndarray:
    """Random field of unit standard deviation varying over about ``scale_mm`` (mm), shape ``shape``.

    Gaussian bumps on a lattice every ``scale_mm``, summed axis by axis (three small matrix products),
    which is far cheaper than filtering white noise at full resolution.
    """
    lattice = tuple(int(np.ceil(n * spacing_mm / scale_mm)) + 3 for n in shape)
    field = rng.standard_normal(lattice, dtype=np.float32)
    for axis, n in enumerate(shape):
        knots = (np.arange(lattice[axis], dtype=np.float32) - 1.0) * scale_mm
        positions = np.arange(n, dtype=np.float32) * spacing_mm
        basis = np.exp(-0.5 * ((positions[:, None] - knots[None, :]) / scale_mm) ** 2)
        field = np.moveaxis(np.tensordot(basis, field, axes=(1, axis)), 0, axis)
    field -= field.mean()
    return field / field.std()


def warp_tissues(anatomy: TemplateAnatomy, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Template GM, WM and CSF fractions pulled through a random per-axis scaling (±6 %) about the
    brain centre plus a smooth displacement of a few mm, as a stand-in for inter-subject anatomy."""
    shape, spacing = anatomy.grid.shape, anatomy.grid.spacing[0]
    centre = np.array(ndimage.center_of_mass(anatomy.brain_mask))
    scale = rng.uniform(0.94, 1.06, size=3)
    coords = np.empty((3, *shape), dtype=np.float32)
    for axis in range(3):
        ramp = (np.arange(shape[axis], dtype=np.float32) - centre[axis]) / scale[axis] + centre[axis]
        view = [1, 1, 1]
        view[axis] = shape[axis]
        displacement = smooth_field(rng, shape, spacing, WARP_SCALE_MM) * (WARP_STD_MM / spacing)
        coords[axis] = ramp.reshape(view) + displacement
    return tuple(
        ndimage.map_coordinates(tissue, coords, order=1, mode="constant", cval=0.0, prefilter=False)
        for tissue in (anatomy.gm, anatomy.wm, anatomy.csf)
    )


def subject_tissues(anatomy: TemplateAnatomy, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """One subject's ``(gm, wm, csf, brain_mask)``: warped fractions, zeroed outside the warped brain."""
    gm, wm, csf = warp_tissues(anatomy, rng)
    brain_mask = (gm + wm + csf) > 0.5
    gm, wm, csf = (np.where(brain_mask, t, 0.0).astype(np.float32) for t in (gm, wm, csf))
    return gm, wm, csf, brain_mask


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


def ellipsoid_radius(offsets_mm: np.ndarray, rotation: np.ndarray, semi_axes_mm: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) at ``offsets_mm`` (3, ...) from its centre."""
    local = np.tensordot(rotation.T, offsets_mm, axes=1)
    return np.sqrt(sum((local[k] / semi_axes_mm[k]) ** 2 for k in range(3)))


def lesion_box(centre: np.ndarray, half: int, grid: Grid) -> tuple[tuple[slice, ...], tuple[int, ...], np.ndarray]:
    """The box of ``half`` voxels either side of ``centre`` (clipped to ``grid``): its slices, its
    shape and the offsets from ``centre`` of its voxels in mm, shape ``(3, *box_shape)``."""
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, grid.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    offsets = np.stack(np.meshgrid(*(np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)), indexing="ij"))
    return box, box_shape, offsets.astype(np.float32) * grid.spacing[0]


def lowest(values: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the (at least one, at most all) ``mask`` voxels with the lowest ``values``."""
    candidates = values[mask]
    if candidates.size == 0:
        return mask.copy()
    rank = min(max(count, 1), candidates.size) - 1
    return mask & (values <= np.partition(candidates, rank)[rank])


def render(
    rng: np.random.Generator,
    fractions: Sequence[np.ndarray],
    contrasts: Mapping[str, Sequence[float]],
    n_healthy: int,
    brain_mask: np.ndarray,
    spacing_mm: float,
) -> dict[str, np.ndarray]:
    """One float32 image per entry of ``contrasts`` (0 outside ``brain_mask``) from class fractions.

    ``contrasts[channel][k]`` is the mean signal of class ``k`` of ``fractions``; classes from
    ``n_healthy`` on are lesions. Per case, each channel gets its own overall gain, ±4 % jitter per
    class, a smooth bias field and Rician noise (magnitude of complex Gaussian noise, 1.5–4 % of the
    brightest healthy class); lesion signal also varies by about ±8 % over a few mm, as real lesions
    are not uniform.
    """
    shape = brain_mask.shape
    texture = 1.0 + 0.08 * smooth_field(rng, shape, spacing_mm, 4.0)
    noise_fraction = rng.uniform(0.015, 0.04)
    images = {}
    for channel, table in contrasts.items():
        gain = rng.uniform(0.7, 1.3)
        jitter = rng.uniform(0.96, 1.04, size=len(table))
        means = (np.array(table) * gain * jitter).astype(np.float32)
        signal = sum(m * f for m, f in zip(means[:n_healthy], fractions[:n_healthy]))
        signal = signal + texture * sum(m * f for m, f in zip(means[n_healthy:], fractions[n_healthy:]))
        signal *= np.exp(BIAS_STD * smooth_field(rng, shape, spacing_mm, BIAS_SCALE_MM))
        sigma = noise_fraction * means[:n_healthy].max()
        real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
        images[channel] = np.where(brain_mask, np.hypot(real, imaginary), 0.0).astype(np.float32)
    return images


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
