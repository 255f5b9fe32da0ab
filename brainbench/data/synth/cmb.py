"""Synthetic cerebral-microbleed cases in the VALDO 2021 Task 2 and Dou et al. 2016 layouts.

Synthetic data (no patient data): the template subject of :mod:`brainbench.data.synth.common`, seen
by a T2*/SWI-like sequence (the ``t2s`` channel; Dou's ``swi``) with T1 and T2 companions.

- **Microbleeds** (labelled): small spheres of 1–2.5 mm radius in brain parenchyma, lobar (cortical
  grey matter, juxtacortical white matter), deep (basal ganglia and thalami, periventricular white
  matter) or infratentorial (brainstem, cerebellum). They are very dark on T2S, darker and larger
  than on T2, where only a core of :data:`T2_CORE` times the radius shows ("blooming" of
  hemosiderin on gradient echo), and invisible on T1. Zero to :data:`MAX_CMBS` per subject; every
  :data:`NO_CMB_EVERY`-th subject has none, as many real subjects have none.
- **Mimics** (never labelled), so that a detector thresholding darkness makes false positives:
  vessel cross-sections, thin dark tubes (radius 0.5–1 mm, 15–40 mm long, gently curved) that look
  like dots in one slice but are elongated in 3D; calcifications, dark on T2S but **bright on T1**,
  in the basal ganglia or beside the ventricles. Mimics keep :data:`CLEARANCE_MM` away from every
  microbleed.

Images come from :func:`brainbench.data.synth.subject.render` (bias field, Rician noise), one channel
at a time because each sees the lesions with its own extent. The label is the T2S microbleed mask
(uint8 0/1). Case ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` (channel ``k`` of
:data:`CONTRASTS` rendered from ``[seed, i, k + 1]``), so runs agree case by case whatever their
length, and a Dou SWI scan equals the VALDO T2S of the same seed, case and spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from scipy import ndimage

from brainbench.challenges.microbleeds import DOU_IMAGES, DOU_POINTS, VALDO_FILES, VALDO_LABEL, sphere_mask, valdo_stem
from brainbench.data.synth.common import (ADULT_LABELS, JUXTACORTICAL, PERIVENTRICULAR, TISSUES, Subject,
                                          check_spacing, class_fractions, needs_writing, release_grid,
                                          sample_subject, start_run)
from brainbench.data.synth.subject import render
from brainbench.io import Grid, save_volume, write_atomic
from brainbench.progress import track

CLASSES = ("csf", "gm", "wm", "cmb", "vessel", "calcification")
CONTRASTS = {
    "t2s": (1100.0, 750.0, 600.0, 110.0, 200.0, 150.0),
    "t1": (300.0, 620.0, 900.0, 0.0, 700.0, 1400.0),
    "t2": (1600.0, 850.0, 600.0, 300.0, 350.0, 420.0),
}
"""Mean signal of each class of :data:`CLASSES` (arbitrary units) per channel. Microbleeds never
appear on T1 (their class is not drawn there), so their T1 entry (0) is unused."""
FOV_MM = (180.0, 216.0, 180.0)
"""Field of view (mm) covering the template brain; the releases' own fields of view are not reproduced."""
CMB_RADIUS_MM = (1.0, 2.5)
T2_CORE = 0.6
"""Radius of a microbleed on T2 relative to T2S (blooming makes it larger on T2S)."""
MAX_CMBS = 8
NO_CMB_EVERY = 4
"""Case ``i`` with ``i % NO_CMB_EVERY == NO_CMB_EVERY - 1`` has no microbleed (a run of 4 holds one)."""
LOCATIONS = {"lobar": 0.6, "deep": 0.3, "infratentorial": 0.1}
"""Probability of each microbleed location."""
N_VESSELS = (3, 9)
VESSEL_RADIUS_MM = (0.5, 1.0)
VESSEL_LENGTH_MM = (15.0, 40.0)
MIN_VESSEL_EXTENT_MM = 10.0
"""A vessel shorter than this once clipped to the parenchyma is drawn again: it must look elongated."""
N_CALCIFICATIONS = (1, 4)
CALCIFICATION_RADIUS_MM = (1.0, 2.0)
CLEARANCE_MM = 3.0
ATTEMPTS = 30
GENERATOR = "brainbench.synth.cmb"


@dataclass(frozen=True)
class CmbCase:
    """One synthetic subject: ``images`` per channel (float32), ``label`` (uint8 0/1), the microbleed
    centres (0-based voxel indices, shape (N, 3)), the mimic masks (bool) and the tissue map (uint8,
    :data:`~brainbench.data.synth.common.TISSUES`); every array ``grid.shape``."""

    images: dict[str, np.ndarray]
    label: np.ndarray
    centres: np.ndarray
    vessels: np.ndarray
    calcifications: np.ndarray
    tissue: np.ndarray
    grid: Grid


def synthesize_cmb_case(seed: int, index: int, grid: Grid, channels: tuple[str, ...] = tuple(CONTRASTS)) -> CmbCase:
    """Case ``index`` of the run ``seed`` on ``grid``, with the images of ``channels`` (names of :data:`CONTRASTS`)."""
    rng = np.random.default_rng([seed, index])
    subject = sample_subject(rng, grid)
    parenchyma = np.isin(subject.tissue, (TISSUES["gm"], TISSUES["wm"]))
    n_cmbs = 0 if index % NO_CMB_EVERY == NO_CMB_EVERY - 1 else int(rng.integers(1, MAX_CMBS + 1))
    centres, radii = place_microbleeds(rng, subject, parenchyma, n_cmbs)
    spacing = np.asarray(grid.spacing)
    cmb = sphere_mask(grid, centres, radii) & parenchyma
    core = sphere_mask(grid, centres, [T2_CORE * r for r in radii]) & parenchyma
    free = parenchyma & (ndimage.distance_transform_edt(~cmb, sampling=spacing) > CLEARANCE_MM)
    vessels = draw_vessels(rng, grid, free, int(rng.integers(*N_VESSELS)))
    calcifications = draw_calcifications(rng, subject, free & ~vessels, int(rng.integers(*N_CALCIFICATIONS)))
    drawn = {"t2s": cmb, "t1": np.zeros_like(cmb), "t2": core}
    images = {}
    for k, channel in enumerate(CONTRASTS):
        if channel not in channels:
            continue
        classes = subject.tissue.copy()
        for mask, name in ((drawn[channel], "cmb"), (vessels, "vessel"), (calcifications, "calcification")):
            classes[mask] = CLASSES.index(name) + 1
        images[channel] = render(np.random.default_rng([seed, index, k + 1]), class_fractions(classes, len(CLASSES)),
                                 {channel: CONTRASTS[channel]}, n_healthy=3, brain_mask=subject.tissue > 0,
                                 spacing_mm=float(min(grid.spacing)))[channel]
    return CmbCase(images=images, label=cmb.astype(np.uint8), centres=centres, vessels=vessels,
                   calcifications=calcifications, tissue=subject.tissue, grid=grid)


def place_microbleeds(rng: np.random.Generator, subject: Subject, parenchyma: np.ndarray,
                      n_cmbs: int) -> tuple[np.ndarray, list[float]]:
    """Centres (0-based voxel indices, (N, 3) int) and radii (mm) of up to ``n_cmbs`` microbleeds.

    Each location of :data:`LOCATIONS` is drawn by its probability; the centre is a voxel of that
    location at least one voxel inside the parenchyma. Microbleeds keep at least 2 mm apart edge to
    edge, and more than a voxel diagonal (√3 × the coarsest spacing), so that no two touch (each is one
    26-connected component, as detection metrics count them).
    """
    structure, zone = subject.structure, subject.lesion_zone
    inner = ndimage.binary_erosion(parenchyma)
    pools = {
        "lobar": inner & ((structure == ADULT_LABELS["cortical_gm"]) | (zone == JUXTACORTICAL)),
        "deep": inner & ((structure == ADULT_LABELS["basal_ganglia"]) | (zone == PERIVENTRICULAR)),
        "infratentorial": inner & np.isin(structure, (ADULT_LABELS["brainstem"], ADULT_LABELS["cerebellum"])),
    }
    pools = {name: np.flatnonzero(pool) for name, pool in pools.items()}
    spacing = np.asarray(subject.grid.spacing)
    gap = max(2.0, np.sqrt(3.0) * spacing.max())
    centres, radii = [], []
    for _ in range(n_cmbs):
        pool = pools[rng.choice(list(LOCATIONS), p=list(LOCATIONS.values()))]
        pool = pool if pool.size else np.flatnonzero(inner)
        radius = float(rng.uniform(*CMB_RADIUS_MM))
        for _ in range(ATTEMPTS):
            centre = np.array(np.unravel_index(pool[rng.integers(pool.size)], subject.grid.shape))
            if all(np.linalg.norm((centre - c) * spacing) > radius + r + gap for c, r in zip(centres, radii)):
                centres.append(centre)
                radii.append(radius)
                break
    return np.array(centres, dtype=int).reshape(-1, 3), radii


def draw_vessels(rng: np.random.Generator, grid: Grid, free: np.ndarray, n_vessels: int) -> np.ndarray:
    """Mask of ``n_vessels`` thin curved tubes inside ``free``, each spanning at least
    :data:`MIN_VESSEL_EXTENT_MM` (a start that gives a shorter tube is drawn again, up to :data:`ATTEMPTS`).

    A tube follows a path walked from a random ``free`` voxel both ways in 0.5-voxel steps along a
    slowly turning direction, until half its length or until it leaves ``free``, then is thickened
    to its radius with :func:`~brainbench.challenges.microbleeds.sphere_mask`.
    """
    spacing = np.asarray(grid.spacing)
    starts = np.flatnonzero(free)
    vessels = np.zeros(grid.shape, dtype=bool)
    step = 0.5 * spacing.min()
    for _ in range(n_vessels):
        for _ in range(ATTEMPTS):
            start = np.array(np.unravel_index(starts[rng.integers(starts.size)], grid.shape)) * spacing
            direction = rng.standard_normal(3)
            half = rng.uniform(*VESSEL_LENGTH_MM) / 2.0
            path = [start]
            for sign in (1.0, -1.0):
                position, heading = start.copy(), sign * direction / np.linalg.norm(direction)
                for _ in range(int(half / step)):
                    heading += 0.05 * rng.standard_normal(3)
                    heading /= np.linalg.norm(heading)
                    position = position + step * heading
                    voxel = np.round(position / spacing).astype(int)
                    if np.any(voxel < 0) or np.any(voxel >= grid.shape) or not free[tuple(voxel)]:
                        break
                    path.append(position)
            points = np.array(path) / spacing
            tube = sphere_mask(grid, points, [rng.uniform(*VESSEL_RADIUS_MM)] * len(points)) & free
            extent = (points.max(axis=0) - points.min(axis=0)) * spacing
            if extent.max() >= MIN_VESSEL_EXTENT_MM:
                vessels |= tube
                break
    return vessels


def draw_calcifications(rng: np.random.Generator, subject: Subject, free: np.ndarray, count: int) -> np.ndarray:
    """Mask of ``count`` calcification spheres (1–2 mm radius) centred in the basal ganglia or in
    periventricular white matter, kept inside ``free``."""
    zone = free & ((subject.structure == ADULT_LABELS["basal_ganglia"]) | (subject.lesion_zone == PERIVENTRICULAR))
    pool = np.flatnonzero(zone) if zone.any() else np.flatnonzero(free)
    centres = np.array([np.unravel_index(pool[rng.integers(pool.size)], subject.grid.shape) for _ in range(count)])
    radii = rng.uniform(*CALCIFICATION_RADIUS_MM, size=count)
    return sphere_mask(subject.grid, centres.reshape(-1, 3), radii) & free


def _start(root: str | Path, edition: str, n_cases: object, spacing_mm: object, seed: object, overwrite: bool,
           release_marker: str) -> tuple[Path, Grid, int, int]:
    spacing = check_spacing(spacing_mm, 0.5, 4.0)
    root, seed, n_cases = start_run(root, f"{GENERATOR}.{edition}", n_cases, seed, overwrite, release_marker,
                                    spacing_mm=spacing)
    return root, release_grid(FOV_MM, spacing), seed, n_cases


def synthesize_valdo2021(root: str | Path, n_cases: int = 8, spacing_mm=(1.0, 1.0, 2.0), seed: int = 0,
                         overwrite: bool = False) -> list[Path]:
    """VALDO 2021 Task 2 subjects ``sub-001`` … as ``sub-XXX/sub-XXX_space-T2S_desc-masked_{T2S,T1,T2}.nii.gz``
    and ``sub-XXX_space-T2S_CMB.nii.gz``. Returns the subject folders; complete ones are kept.

    The default 1×1×2 mm keeps a case at 180×216×90 voxels on the CPU while staying anisotropic,
    as clinical T2* acquisitions are (thick slices, fine in-plane).
    """
    root, grid, seed, n_cases = _start(root, "valdo2021", n_cases, spacing_mm, seed, overwrite, "sub-*")
    folders = []
    for index in track(range(n_cases), "Synthesising valdo2021"):
        case_id = f"sub-{index + 1:03d}"
        folder = root / case_id
        images = {m: folder / f"{valdo_stem(case_id, token)}.nii.gz" for m, token in VALDO_FILES.items()}
        label = folder / f"{valdo_stem(case_id, VALDO_LABEL)}.nii.gz"
        if needs_writing([*images.values(), label], overwrite):
            case = synthesize_cmb_case(seed, index, grid)
            for channel, path in images.items():
                save_volume(case.images[channel], grid, path, dtype=np.float32)
            save_volume(case.label, grid, label)
        folders.append(folder)
    return folders


def synthesize_dou2016(root: str | Path, n_cases: int = 8, spacing_mm=(1.0, 1.0, 2.0), seed: int = 0,
                       overwrite: bool = False) -> list[Path]:
    """Dou et al. 2016 studies ``01`` … as ``nii/<study>.nii`` (the SWI, i.e. the T2S channel) and
    ``ground_truth/<study>.mat`` holding the microbleed centres only (variable ``centroids``, N×3,
    1-based voxel indices along the NIfTI axes; the edition grows the mask). Returns the SWI files.

    Spacing as :func:`synthesize_valdo2021` (SWI, too, is acquired with thicker slices).
    """
    root, grid, seed, n_cases = _start(root, "dou2016", n_cases, spacing_mm, seed, overwrite, DOU_IMAGES)
    scans = []
    for index in track(range(n_cases), "Synthesising dou2016"):
        study = f"{index + 1:02d}"
        scan, points = root / DOU_IMAGES / f"{study}.nii", root / DOU_POINTS / f"{study}.mat"
        if needs_writing([scan, points], overwrite):
            case = synthesize_cmb_case(seed, index, grid, channels=("t2s",))
            save_volume(case.images["t2s"], grid, scan, dtype=np.float32)
            centroids = {"centroids": case.centres.astype(np.float64) + 1.0}
            write_atomic(points, lambda tmp: scipy.io.savemat(str(tmp), centroids))
        scans.append(scan)
    return scans
