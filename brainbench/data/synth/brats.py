"""Synthetic BraTS-2020-style cases: four skull-stripped MR contrasts and a glioma label map.

Synthetic data, for tests and smoke runs without patient data. Each subject is the MNI ICBM152
2009a template (Fonov et al., NeuroImage 2011; see :mod:`brainbench.data.synth.anatomy`) under its
own smooth random warp, with a white-matter tumour made of necrotic core (label 1), enhancing rim
(label 4) and oedema (label 2), the BraTS 2017–2021 label values. Intensities come from tissue
fractions with textbook relative contrasts, then a multiplicative bias field and Rician noise.

Files follow the BraTS 2020 training layout
``<root>/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz``. Case ``i``
(0-based, folder number ``i + 1``) is drawn from ``numpy.random.default_rng([seed, i])`` alone, so
any prefix of a run is reproduced exactly by a shorter or longer run with the same seed and spacing.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.data.io import Grid, save_volume, write_atomic
from brainbench.data.synth.anatomy import TemplateAnatomy, template_tissues
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

GENERATOR = "brainbench.synth.brats"
METADATA_FILE = "brainbench_synthetic.json"
MODALITIES = ("flair", "t1", "t1ce", "t2")
FILE_KEYS = (*MODALITIES, "seg")
LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4}

CLASSES = ("csf", "gm", "wm", "necrosis", "enhancing", "oedema")
CONTRASTS = {
    "t1": (300.0, 620.0, 900.0, 350.0, 650.0, 550.0),
    "t1ce": (320.0, 650.0, 900.0, 330.0, 1450.0, 600.0),
    "t2": (1600.0, 850.0, 600.0, 1450.0, 950.0, 1250.0),
    "flair": (150.0, 750.0, 550.0, 600.0, 900.0, 1300.0),
}
"""Mean signal of each class in :data:`CLASSES` (arbitrary units, WM ≈ 600–900): T1 WM > GM > CSF,
T2 CSF > GM > WM, FLAIR GM > WM with CSF suppressed; oedema bright on T2/FLAIR, enhancing rim bright
on T1ce, necrosis dark on T1/T1ce and bright on T2."""

WARP_STD_MM = 2.0
"""Standard deviation of each displacement component of the per-subject warp."""
WARP_SCALE_MM = 30.0
BIAS_STD = 0.12
"""Standard deviation of the log bias field (about ±25 % across the brain)."""
BIAS_SCALE_MM = 70.0
WT_VOLUME_ML = (30.0, 120.0)
"""Whole-tumour volume range sampled log-uniformly; BraTS whole tumours span roughly 20–150 ml."""
MIN_TUMOUR_Z_MM = -5.0
"""Tumour centres lie above this MNI z (supratentorial), where most adult gliomas grow."""


@dataclass(frozen=True)
class SynthBratsConfig:
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


@dataclass(frozen=True)
class SynthCase:
    """One synthetic subject on ``grid``; every array is ``grid.shape`` ``(X, Y, Z)``.

    ``images`` maps each of :data:`MODALITIES` to float32 signal (0 outside ``brain_mask``); ``seg``
    is uint8 with values 0/1/2/4; ``gm``/``wm``/``csf`` are the subject's tissue fractions before the
    tumour replaced them (kept so that tests can check where the tumour grew).
    """

    images: dict[str, np.ndarray]
    seg: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    grid: Grid


def case_id(index: int) -> str:
    """BraTS 2020 training id of the 0-based case ``index``: ``BraTS20_Training_001`` for 0."""
    return f"BraTS20_Training_{index + 1:03d}"


def case_files(root: str | Path, index: int) -> dict[str, Path]:
    """The five file paths of case ``index`` under ``root``, keyed by modality and ``seg``."""
    name = case_id(index)
    return {key: Path(root) / name / f"{name}_{key}.nii.gz" for key in FILE_KEYS}


def synthesize_brats(
    root: str | Path, n_cases: int = 12, spacing_mm: float = 2.0, seed: int = 0, overwrite: bool = False
) -> list[Path]:
    """Writes the cases, returns the case folders. Skips a case whose 5 files already exist unless overwrite.

    Also writes ``brainbench_synthetic.json`` at ``root`` (atomically, before the cases, so that a rerun
    after a crash recognises the folder). Refuses, unless ``overwrite``, a root whose marker records a
    different seed or spacing, or that holds BraTS case folders but no marker (likely real data).
    """
    checked = SynthBratsConfig(n_cases=n_cases, spacing_mm=spacing_mm, seed=seed)
    n_cases, spacing_mm, seed = int(checked.n_cases), float(checked.spacing_mm), int(checked.seed)
    root = Path(root)
    if not overwrite:
        _check_root(root, seed, spacing_mm)
    metadata = {
        "generator": GENERATOR,
        "seed": seed,
        "spacing_mm": spacing_mm,
        "n_cases": n_cases,
        "data_source": "synthetic",
    }
    write_atomic(root / METADATA_FILE, lambda tmp: tmp.write_text(json.dumps(metadata, indent=2) + "\n"))
    folders = []
    for index in range(n_cases):
        files = case_files(root, index)
        if overwrite or not all(path.is_file() for path in files.values()):
            case = synthesize_case(seed, index, spacing_mm)
            for modality in MODALITIES:
                save_volume(case.images[modality], case.grid, files[modality], dtype=np.float32)
            save_volume(case.seg, case.grid, files["seg"], dtype=np.uint8)
        folders.append(files["seg"].parent)
    return folders


def synthesize_case(seed: int, index: int, spacing_mm: float = 2.0) -> SynthCase:
    """Build case ``index`` (0-based) of the run ``seed`` in memory; depends on nothing else."""
    anatomy = template_tissues(float(spacing_mm))
    rng = np.random.default_rng([seed, index])
    gm, wm, csf = _warp_tissues(anatomy, rng)
    brain_mask = (gm + wm + csf) > 0.5
    gm, wm, csf = (np.where(brain_mask, t, 0.0).astype(np.float32) for t in (gm, wm, csf))
    seg = _grow_tumour(rng, gm, wm, csf, brain_mask, anatomy.grid)
    images = _render(rng, gm, wm, csf, seg, brain_mask, anatomy.grid.spacing[0])
    return SynthCase(images=images, seg=seg, gm=gm, wm=wm, csf=csf, brain_mask=brain_mask, grid=anatomy.grid)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_root(root: Path, seed: int, spacing_mm: float) -> None:
    """Raise when writing cases of ``seed`` and ``spacing_mm`` to ``root`` would mix them with other data."""
    marker = root / METADATA_FILE
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError) as error:
            raise BrainbenchDataError(marker, f"unreadable generator record ({error})") from None
        if not isinstance(previous, dict):
            raise BrainbenchDataError(marker, "generator record is not a JSON object")
        recorded = (previous.get("generator"), previous.get("seed"), previous.get("spacing_mm"))
        if recorded != (GENERATOR, seed, spacing_mm):
            raise BrainbenchDataError(
                root,
                f"holds synthetic cases with generator/seed/spacing {recorded}, not "
                f"{(GENERATOR, seed, spacing_mm)}; use another folder or overwrite=True",
            )
    elif root.is_dir() and any(root.glob("BraTS20_Training_*")):
        raise BrainbenchDataError(
            root, f"holds BraTS case folders but no {METADATA_FILE}; refusing to mix in synthetic cases"
        )


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing_mm: float, scale_mm: float
) -> np.ndarray:
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


def _warp_tissues(anatomy: TemplateAnatomy, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
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
        displacement = _smooth_field(rng, shape, spacing, WARP_SCALE_MM) * (WARP_STD_MM / spacing)
        coords[axis] = ramp.reshape(view) + displacement
    return tuple(
        ndimage.map_coordinates(tissue, coords, order=1, mode="constant", cval=0.0, prefilter=False)
        for tissue in (anatomy.gm, anatomy.wm, anatomy.csf)
    )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


def _ellipsoid_radius(offsets_mm: np.ndarray, rotation: np.ndarray, semi_axes_mm: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) at ``offsets_mm`` (3, ...) from its centre."""
    local = np.tensordot(rotation.T, offsets_mm, axes=1)
    return np.sqrt(sum((local[k] / semi_axes_mm[k]) ** 2 for k in range(3)))


def _grow_tumour(
    rng: np.random.Generator,
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    brain_mask: np.ndarray,
    grid: Grid,
) -> np.ndarray:
    """Label map (uint8, 0/1/2/4) of one tumour centred in deep supratentorial white matter.

    Core and oedema are ellipsoids whose radius is modulated by smooth noise (irregular, lobulated
    borders); oedema spreads less into grey matter, not into CSF and never outside the brain.
    Necrosis and oedema are the voxels of lowest (noisy) radius up to a sampled volume, so both are
    never empty; oedema islands cut off from the core are then dropped.
    """
    spacing = grid.spacing[0]
    voxel_ml = grid.voxel_volume_mm3 / 1000.0
    wt_ml = float(np.exp(rng.uniform(*np.log(WT_VOLUME_ML))))
    radius_mm = (3.0 * wt_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aniso = rng.uniform(0.75, 1.3, size=3)
    aniso /= np.cbrt(aniso.prod())
    core_ratio = rng.uniform(0.55, 0.8)
    necrosis_fraction = rng.uniform(0.15, 0.45)

    depth_mm = ndimage.distance_transform_edt(brain_mask, sampling=spacing)
    deep_wm = ndimage.gaussian_filter(wm, sigma=3.0 / spacing)
    world_z = grid.affine[2, 3] + spacing * np.arange(grid.shape[2])
    supratentorial = (world_z > MIN_TUMOUR_Z_MM)[None, None, :]
    candidates = (deep_wm > 0.7) & supratentorial & (depth_mm >= core_ratio * radius_mm + 4.0)
    if not candidates.any():
        eligible = (deep_wm > 0.5) & supratentorial
        candidates = eligible & (depth_mm >= 0.9 * depth_mm[eligible].max())
    flat = np.flatnonzero(candidates)
    centre = np.array(np.unravel_index(flat[rng.integers(flat.size)], grid.shape))

    half = int(np.ceil(2.0 * radius_mm * aniso.max() / spacing))
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, grid.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    offsets = np.stack(np.meshgrid(*(np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)), indexing="ij"))
    offsets = offsets.astype(np.float32) * spacing

    rotation = _random_rotation(rng)
    lobes = _smooth_field(rng, box_shape, spacing, rng.uniform(6.0, 12.0))
    rim = _smooth_field(rng, box_shape, spacing, 5.0)
    spread = _smooth_field(rng, box_shape, spacing, 10.0)
    shift_mm = rng.normal(0.0, 0.15 * radius_mm, size=(3, 1, 1, 1)).astype(np.float32)

    core_radius = _ellipsoid_radius(offsets, rotation, core_ratio * radius_mm * aniso) * np.exp(0.2 * lobes)
    oedema_radius = (
        _ellipsoid_radius(offsets - shift_mm, rotation, radius_mm * aniso)
        * np.exp(0.3 * spread)
        * (1.0 + 0.6 * gm[box])
    )
    inside = brain_mask[box]
    core = (core_radius < 1.0) & inside
    necrosis_count = int(round(necrosis_fraction * core.sum()))
    necrosis = _lowest(core_radius * np.exp(0.12 * rim), ndimage.binary_erosion(core), necrosis_count)
    oedema_count = int(round(wt_ml / voxel_ml)) - int(core.sum())
    oedema = _lowest(oedema_radius, inside & (csf[box] < 0.5) & ~core, oedema_count)
    oedema |= ndimage.binary_dilation(core) & inside & ~core
    components, _ = ndimage.label(oedema | core)
    oedema &= np.isin(components, np.unique(components[core]))

    seg = np.zeros(grid.shape, dtype=np.uint8)
    local = seg[box]
    local[oedema] = LABELS["oedema"]
    local[core] = LABELS["enhancing"]
    local[necrosis] = LABELS["necrosis"]
    return seg


def _lowest(values: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the (at least one, at most all) ``mask`` voxels with the lowest ``values``."""
    candidates = values[mask]
    if candidates.size == 0:
        return mask.copy()
    rank = min(max(count, 1), candidates.size) - 1
    return mask & (values <= np.partition(candidates, rank)[rank])


def _render(
    rng: np.random.Generator,
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    seg: np.ndarray,
    brain_mask: np.ndarray,
    spacing_mm: float,
) -> dict[str, np.ndarray]:
    """The four contrasts (float32, 0 outside the brain) from tissue fractions and the tumour labels.

    Tumour compartments replace healthy tissue with a half-voxel partial-volume blur. Per case, each
    contrast gets its own overall gain, ±4 % jitter per class, a smooth bias field and Rician noise
    (magnitude of complex Gaussian noise, 1.5–4 % of the brightest healthy tissue); tumour signal
    also varies by about ±8 % over a few mm, as real tumours are not uniform.
    """
    tumour = [
        ndimage.gaussian_filter((seg == LABELS[name]).astype(np.float32), sigma=0.5) for name in CLASSES[3:]
    ]
    healthy = np.clip(1.0 - sum(tumour), 0.0, 1.0)
    fractions = [csf * healthy, gm * healthy, wm * healthy, *tumour]
    texture = 1.0 + 0.08 * _smooth_field(rng, seg.shape, spacing_mm, 4.0)
    noise_fraction = rng.uniform(0.015, 0.04)
    images = {}
    for modality in MODALITIES:
        gain = rng.uniform(0.7, 1.3)
        jitter = rng.uniform(0.96, 1.04, size=len(CLASSES))
        means = (np.array(CONTRASTS[modality]) * gain * jitter).astype(np.float32)
        signal = sum(m * f for m, f in zip(means[:3], fractions[:3]))
        signal = signal + texture * sum(m * f for m, f in zip(means[3:], fractions[3:]))
        signal *= np.exp(BIAS_STD * _smooth_field(rng, seg.shape, spacing_mm, BIAS_SCALE_MM))
        sigma = noise_fraction * means[:3].max()
        real = signal + sigma * rng.standard_normal(seg.shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(seg.shape, dtype=np.float32)
        images[modality] = np.where(brain_mask, np.hypot(real, imaginary), 0.0).astype(np.float32)
    return images
