"""Synthetic ISLES cases: an ischemic stroke on the template anatomy, in each edition's official layout.

Synthetic data, for tests and smoke runs without patient data. Each subject is the MNI ICBM152 2009a
template under its own warp (:mod:`brainbench.data.synth.subject`). The infarct core is a lobulated
blob of grey and white matter in one hemisphere, lateral and supratentorial (middle-cerebral-artery
territory), never in CSF; a larger hypoperfused rim around it stands for the penumbra. Contrasts follow
the textbook picture of acute/sub-acute stroke: core bright on DWI (b = 1000), dark on ADC, bright on
FLAIR and T2, dark on T1; on perfusion maps the core and penumbra have long Tmax/TTP/MTT and low
CBF, the core also low CBV while the penumbra keeps most of it. Units are nominal (s, ml/100 g/min,
×10⁻⁶ mm²/s) and only relative values matter.

Labels: 1 = core, plus 2 = penumbra for 2015 SPES (the [R] reading of its label values); 2016/2017
label the final infarct, here the core. Layouts (challenges.md §3.2), written by :func:`case_files`:

- ``isles2015_siss`` / ``isles2015_spes``: ``<root>/<n>/VSD.Brain.XX.O.MR_<mod>.<id>/<same>.nii`` and
  ``VSD.Brain.XX.O.OT.<id>/<same>.nii`` (uncompressed).
- ``isles2016`` / ``isles2017``: the same under ``training_<n>``, perfusion maps; 2017 skips ids
  3, 17, 25, 29, 34 as the release does. The 4-D ``MR_4DPWI`` is not written.
- ``isles2022``: BIDS ``sub-strokecaseNNNN/ses-0001/{anat,dwi}/…`` with the mask in ``derivatives/``;
  FLAIR on its own grid (half the in-plane spacing, 2.5× the slice thickness, shifted origin), as in
  the release; DWI, ADC and mask on the isotropic grid.

Case ``i`` (0-based) is drawn from ``numpy.random.default_rng([seed, i])`` alone, so a shorter run is
a prefix of a longer one with the same seed and spacing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.challenges.isles import (
    EDITIONS,
    ISLES2017_MISSING_IDS,
    PERFUSION_CHANNELS,
    SISS_CHANNELS,
    SPES_CHANNELS,
)
from brainbench.io import Grid, save_volume, write_atomic
from brainbench.data.synth.anatomy import template_tissues
from brainbench.data.synth.subject import (
    SynthConfig,
    ellipsoid_radius,
    lesion_box,
    lowest,
    prepare_root,
    random_rotation,
    render,
    smooth_field,
    subject_tissues,
)
from brainbench.errors import BrainbenchConfigError
from brainbench.progress import track

GENERATOR = "brainbench.synth.isles"
STRUCTURAL = {
    "dwi": (100.0, 650.0, 550.0, 1600.0),
    "adc": (3000.0, 850.0, 750.0, 450.0),
    "flair": (150.0, 750.0, 550.0, 1150.0),
    "t1": (300.0, 620.0, 900.0, 450.0),
    "t1c": (320.0, 650.0, 900.0, 500.0),
    "t2": (1600.0, 850.0, 600.0, 1300.0),
}
"""Mean signal of CSF, GM, WM and infarct core per structural channel."""
PERFUSION = {
    "tmax": (0.5, 1.0, 1.5, 12.0, 7.5),
    "ttp": (10.0, 12.0, 13.5, 22.0, 18.0),
    "mtt": (2.0, 4.0, 5.0, 11.0, 8.0),
    "cbf": (5.0, 60.0, 25.0, 6.0, 30.0),
    "cbv": (0.5, 4.0, 2.0, 1.0, 3.5),
}
"""Mean value of CSF, GM, WM, core and penumbra per perfusion map (s; ml/100 g/min; ml/100 g)."""
RELATIVE = {"rcbf": "cbf", "rcbv": "cbv"}
"""2016/2017 ship relative CBF/CBV maps; rendered like SPES's absolute ones."""
CORE_VOLUME_ML = (4.0, 60.0)
"""Core volume range, sampled log-uniformly; ISLES lesions span from a few ml to a hemisphere."""
PENUMBRA_RATIO = (1.0, 2.5)
"""Penumbra volume as a multiple of the core's."""
MIDLINE_MARGIN_MM = 3.0
"""Lesions stay this far (mm) from the MNI midline x = 0: one vascular territory, one hemisphere."""
FLAIR_GRID = (0.5, 0.5, 2.5)
"""ISLES 2022 FLAIR voxel size as a multiple of the DWI spacing (finer in-plane, thicker slices)."""
CASE_FOLDERS = {
    "isles2015_siss": "{n}",
    "isles2015_spes": "{n}",
    "isles2016": "training_{n}",
    "isles2017": "training_{n}",
}
REAL_DATA_GLOBS = {**{e: "[0-9]*" for e in ("isles2015_siss", "isles2015_spes")}, "isles2016": "training_*",
                   "isles2017": "training_*", "isles2022": "sub-*"}
TOKENS = {**SISS_CHANNELS, **SPES_CHANNELS, **PERFUSION_CHANNELS}


@dataclass(frozen=True)
class StrokeCase:
    """One synthetic subject: ``images`` per channel and ``seg`` (uint8, 1 core, 2 penumbra) on ``grid``."""

    images: dict[str, np.ndarray]
    seg: np.ndarray
    brain_mask: np.ndarray
    grid: Grid


def case_number(index: int, edition: str) -> int:
    """Release number of the 0-based case ``index``: ``index + 1``, skipping the ids ISLES 2017 lacks."""
    if edition != "isles2017":
        return index + 1
    present = [n for n in range(1, index + len(ISLES2017_MISSING_IDS) + 2) if n not in ISLES2017_MISSING_IDS]
    return present[index]


def case_files(root: str | Path, index: int, edition: str) -> dict[str, Path]:
    """Paths of case ``index`` under ``root``, keyed by ``edition``'s channels and ``seg``."""
    root = Path(root)
    n = case_number(index, edition)
    if edition == "isles2022":
        subject, session = f"sub-strokecase{n:04d}", "ses-0001"
        stem = f"{subject}_{session}"
        raw = root / subject / session
        return {
            "dwi": raw / "dwi" / f"{stem}_dwi.nii.gz",
            "adc": raw / "dwi" / f"{stem}_adc.nii.gz",
            "flair": raw / "anat" / f"{stem}_FLAIR.nii.gz",
            "seg": root / "derivatives" / subject / session / f"{stem}_msk.nii.gz",
        }
    folder = root / CASE_FOLDERS[edition].format(n=n)
    first_id = 70613 + 10 * index
    names = {c: f"VSD.Brain.XX.O.{TOKENS[c]}" for c in EDITIONS[edition].modalities}
    names["seg"] = "VSD.Brain.XX.O.OT"
    return {
        key: folder / f"{name}.{first_id + k}" / f"{name}.{first_id + k}.nii"
        for k, (key, name) in enumerate(names.items())
    }


def synthesize_isles(
    root: str | Path,
    edition: str = "isles2022",
    n_cases: int = 6,
    spacing_mm: float = 2.0,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``n_cases`` cases of ``edition`` under ``root``; returns the case folders.

    Skips a case whose files all exist unless ``overwrite``; records the run in
    ``brainbench_synthetic.json`` first and refuses a root holding another run or unrecorded
    case folders (see :func:`~brainbench.data.synth.subject.prepare_root`).
    """
    if edition not in EDITIONS:
        raise BrainbenchConfigError(f"unknown ISLES edition '{edition}'; choose one of {sorted(EDITIONS)}")
    config = SynthConfig(n_cases=n_cases, spacing_mm=spacing_mm, seed=seed)
    root = Path(root)
    prepare_root(root, f"{GENERATOR}.{edition}", config, overwrite, REAL_DATA_GLOBS[edition])
    if edition == "isles2022":
        _write_bids_metadata(root)
    channels = EDITIONS[edition].modalities
    folders = []
    for index in track(range(int(n_cases)), f"Synthesising {edition}"):
        files = case_files(root, index, edition)
        if overwrite or not all(path.is_file() for path in files.values()):
            case = synthesize_stroke_case(int(seed), index, float(spacing_mm), channels)
            _write_case(case, files, edition)
        folders.append(files["dwi"].parents[2] if edition == "isles2022" else files["seg"].parents[1])
    return folders


def synthesize_stroke_case(seed: int, index: int, spacing_mm: float, channels: tuple[str, ...]) -> StrokeCase:
    """Build case ``index`` of the run ``seed`` in memory with the requested ``channels``."""
    anatomy = template_tissues(float(spacing_mm))
    rng = np.random.default_rng([seed, index])
    gm, wm, csf, brain_mask = subject_tissues(anatomy, rng)
    seg = _grow_stroke(rng, gm, wm, brain_mask, anatomy.grid)
    spacing = anatomy.grid.spacing[0]
    core, penumbra = (ndimage.gaussian_filter((seg == v).astype(np.float32), sigma=0.5) for v in (1, 2))
    structural_healthy = np.clip(1.0 - core, 0.0, 1.0)
    perfusion_healthy = np.clip(1.0 - core - penumbra, 0.0, 1.0)
    structural = [csf * structural_healthy, gm * structural_healthy, wm * structural_healthy, core]
    perfusion = [csf * perfusion_healthy, gm * perfusion_healthy, wm * perfusion_healthy, core, penumbra]
    images = render(rng, structural, {c: STRUCTURAL[c] for c in channels if c in STRUCTURAL}, 3, brain_mask, spacing)
    maps = {c: PERFUSION[RELATIVE.get(c, c)] for c in channels if c not in STRUCTURAL}
    images.update(render(rng, perfusion, maps, 3, brain_mask, spacing))
    return StrokeCase(images=images, seg=seg, brain_mask=brain_mask, grid=anatomy.grid)


def flair_grid(grid: Grid) -> Grid:
    """The ISLES 2022 FLAIR grid over the same field of view as ``grid`` (DWI), origin shifted by a quarter voxel."""
    factors = np.array(FLAIR_GRID)
    shape = tuple(int(np.ceil(n / f)) for n, f in zip(grid.shape, factors))
    affine = grid.affine.copy()
    affine[:3, :3] = grid.affine[:3, :3] @ np.diag(factors)
    affine[:3, 3] = grid.affine[:3, 3] + grid.affine[:3, :3] @ (factors / 4.0)
    return Grid(shape=shape, affine=affine)


def _grow_stroke(
    rng: np.random.Generator, gm: np.ndarray, wm: np.ndarray, brain_mask: np.ndarray, grid: Grid
) -> np.ndarray:
    """Label map (uint8): core 1 and penumbra 2, lobulated ellipsoids in the grey and white matter of
    one hemisphere, centred at least 20 mm lateral and above MNI z = −5 mm."""
    spacing = grid.spacing[0]
    voxel_ml = grid.voxel_volume_mm3 / 1000.0
    core_ml = float(np.exp(rng.uniform(*np.log(CORE_VOLUME_ML))))
    radius_mm = (3.0 * core_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    side_x = rng.choice((-1.0, 1.0)) * (grid.affine[0, 3] + spacing * np.arange(grid.shape[0]))
    tissue = brain_mask & ((gm + wm) > 0.5) & (side_x > MIDLINE_MARGIN_MM)[:, None, None]
    world_z = grid.affine[2, 3] + spacing * np.arange(grid.shape[2])
    candidates = tissue & (side_x > 20.0)[:, None, None] & (world_z > -5.0)[None, None, :]
    flat = np.flatnonzero(candidates)
    centre = np.array(np.unravel_index(flat[rng.integers(flat.size)], grid.shape))

    box, box_shape, offsets = lesion_box(centre, int(np.ceil(3.5 * radius_mm / spacing)), grid)
    aniso = rng.uniform(0.7, 1.4, size=3)
    aniso /= np.cbrt(aniso.prod())
    rotation = random_rotation(rng)
    core_lobes = np.exp(0.25 * smooth_field(rng, box_shape, spacing, 6.0))
    outer_lobes = np.exp(0.2 * smooth_field(rng, box_shape, spacing, 10.0))
    core_radius = ellipsoid_radius(offsets, rotation, radius_mm * aniso) * core_lobes
    outer_radius = ellipsoid_radius(offsets, rotation, 1.6 * radius_mm * aniso) * outer_lobes
    inside = tissue[box]
    core = lowest(core_radius, inside, int(round(core_ml / voxel_ml)))
    penumbra_count = int(round(rng.uniform(*PENUMBRA_RATIO) * core.sum()))
    penumbra = lowest(outer_radius, inside & ~core, penumbra_count)
    components, _ = ndimage.label(core | penumbra)
    penumbra &= np.isin(components, np.unique(components[core]))
    seg = np.zeros(grid.shape, dtype=np.uint8)
    local = seg[box]
    local[penumbra] = 2
    local[core] = 1
    return seg


def _write_case(case: StrokeCase, files: dict[str, Path], edition: str) -> None:
    """Save ``case`` under ``files``; ISLES 2022 FLAIR is resampled onto :func:`flair_grid` first."""
    for channel in EDITIONS[edition].modalities:
        image, grid = case.images[channel], case.grid
        if channel == "flair" and edition == "isles2022":
            grid = flair_grid(case.grid)
            matrix = np.linalg.solve(case.grid.affine, grid.affine)
            image = ndimage.affine_transform(
                image, matrix[:3, :3], offset=matrix[:3, 3], output_shape=grid.shape, order=1, mode="constant", cval=0.0
            )
        save_volume(image, grid, files[channel], dtype=np.float32)
    labels = case.seg if 2 in EDITIONS[edition].label_values else (case.seg == 1)
    save_volume(labels, case.grid, files["seg"], dtype=np.uint8)


def _write_bids_metadata(root: Path) -> None:
    """The dataset-level BIDS files of the ISLES 2022 release (contents minimal and marked synthetic)."""
    description = {"Name": "ISLES 2022 synthetic look-alike (brainbench)", "BIDSVersion": "1.6.0", "DatasetType": "raw"}
    text = json.dumps(description, indent=2) + "\n"
    write_atomic(root / "dataset_description.json", lambda tmp: tmp.write_text(text))
