"""Synthetic multiple-sclerosis cases in the MSSEG 2016, ISBI 2015 and MICCAI 2008 layouts.

Synthetic data (no patient data): the template subject of :mod:`brainbench.data.synth.common` with
ellipsoidal white-matter lesions, half periventricular (within 8 mm of a ventricle), half
juxtacortical (within 4 mm of cortical grey matter), bright on FLAIR/T2/PD, dark on T1, a fifth of
them enhancing on T1-Gd. The true lesions are never written: each rater draws a perturbation of them
(misses lesions — small ones, ≤ 40 mm³, often — and has a habit of outlining one voxel wider or
tighter). MSSEG's consensus is the **majority vote**
(≥ 4 of 7 raters), a stand-in for the LOP STAPLE consensus of the real release. ISBI and MICCAI 2008
get two raters; the label is rater 1.

Case ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone (ISBI time point ``t`` from
``[seed, i, t]`` with the subject's anatomy and lesion history from ``[seed, i]``), so runs with the
same seed and spacing agree case by case whatever their length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.challenges.msseg import (
    ISBI_RATERS, MICCAI2008_FILES, MICCAI2008_SECOND_RATER, MSSEG_FLAT, MSSEG_PREPROCESSED, MSSEG_RATERS,
)
from brainbench.io import LPS_TO_RAS, Grid, save_volume, write_atomic
from brainbench.data.synth.common import (
    ADULT_LABELS, JUXTACORTICAL, PERIVENTRICULAR, Subject, check_count, check_spacing, class_fractions,
    needs_writing, release_grid, sample_subject, start_run,
)
from brainbench.data.synth.subject import ellipsoid_radius, random_rotation, render
from brainbench.errors import BrainbenchConfigError
from brainbench.progress import track

CLASSES = ("csf", "gm", "wm", "lesion", "enhancing")
CONTRASTS = {
    "flair": (150.0, 750.0, 550.0, 1300.0, 1300.0),
    "t1": (300.0, 620.0, 900.0, 420.0, 450.0),
    "t1gd": (320.0, 650.0, 900.0, 430.0, 1350.0),
    "pd": (1000.0, 900.0, 750.0, 1150.0, 1150.0),
    "t2": (1600.0, 850.0, 600.0, 1300.0, 1300.0),
}
"""Mean signal of each class of :data:`CLASSES` (arbitrary units); lesions are T2/FLAIR/PD
hyperintense and T1 hypointense, enhancing lesions bright on T1-Gd only."""
CHANNEL_CONTRAST = {
    "msseg2016": {"flair": "flair", "t1": "t1", "gado": "t1gd", "dp": "pd", "t2": "t2"},
    "isbi2015": {"flair": "flair", "mprage": "t1", "pd": "pd", "t2": "t2"},
    "miccai2008": {"flair": "flair", "t1": "t1", "t2": "t2"},
}
FOV_MM = {"msseg2016": (180.0, 216.0, 180.0), "isbi2015": (181.0, 217.0, 181.0), "miccai2008": (256.0, 256.0, 256.0)}
"""Field of view of each release (ISBI: MNI 181×217×181 at 1 mm; MICCAI 2008: 512³ at 0.5 mm)."""
N_LESIONS = (6, 16)
SMALL_LESION_MM3 = 40.0
MISS_SMALL, MISS_LARGE = 0.35, 0.04
"""Probability that a rater misses a small / a larger lesion."""
MSSEG_CENTERS = (1, 7, 8)
"""Centres of the MSSEG 2016 training set (spec §4.3); cases cycle through them."""
GENERATOR = "brainbench.synth.ms"


def grow_lesions(rng: np.random.Generator, subject: Subject, n_lesions: int) -> np.ndarray:
    """Lesion id map (int16, 0 = none, ``grid.shape``): ``n_lesions`` ellipsoids kept inside white matter.

    Periventricular lesions (semi-axes 2–7 mm, elongated) and juxtacortical ones (1.5–4 mm) alternate,
    centred in the subject's lesion zones (:class:`~brainbench.data.synth.common.TemplateLabels`).
    A lesion never overwrites an earlier one; one whose ellipsoid holds no white matter is dropped.
    """
    grid = subject.grid
    wm = subject.structure == ADULT_LABELS["wm"]
    pools = [np.flatnonzero(wm & (subject.lesion_zone == zone)) for zone in (PERIVENTRICULAR, JUXTACORTICAL)]
    ids = np.zeros(grid.shape, dtype=np.int16)
    spacing = np.asarray(grid.spacing)
    for k in range(n_lesions):
        pool = pools[k % 2] if pools[k % 2].size else np.flatnonzero(wm)
        centre = np.array(np.unravel_index(pool[rng.integers(pool.size)], grid.shape))
        semi_axes = rng.uniform(2.0, 7.0, 3) * [1.0, 1.0, 1.6] if k % 2 == 0 else rng.uniform(1.5, 4.0, 3)
        half = np.ceil(semi_axes.max() / spacing).astype(int) + 1
        lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, grid.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        offsets = np.stack(np.meshgrid(*(np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)), indexing="ij"))
        offsets = offsets.astype(np.float32) * spacing[:, None, None, None].astype(np.float32)
        inside = (ellipsoid_radius(offsets, random_rotation(rng), semi_axes) < 1.0) & wm[box] & (ids[box] == 0)
        if inside.any():
            ids[box][inside] = ids.max() + 1
    return ids


def simulate_raters(rng: np.random.Generator, lesion_ids: np.ndarray, grid: Grid, n_raters: int) -> list[np.ndarray]:
    """``n_raters`` binary masks (uint8): each misses some lesions, then dilates, erodes or keeps the rest.

    Erosion spares lesions it would erase entirely (a rater who outlines tightly still marks them);
    missing lesions is the miss probability's job.
    """
    n = int(lesion_ids.max())
    volumes = np.bincount(lesion_ids.ravel(), minlength=n + 1)[1:] * grid.voxel_volume_mm3
    miss = np.where(volumes <= SMALL_LESION_MM3, MISS_SMALL, MISS_LARGE)
    cross = ndimage.generate_binary_structure(3, 1)
    masks = []
    for _ in range(n_raters):
        kept = np.flatnonzero(rng.random(n) >= miss) + 1
        mask = np.isin(lesion_ids, kept)
        habit = rng.choice(("dilate", "keep", "keep", "erode"))
        if habit == "dilate":
            mask = ndimage.binary_dilation(mask, cross)
        elif habit == "erode":
            eroded = ndimage.binary_erosion(mask, cross)
            components, _ = ndimage.label(mask, cross)
            mask = eroded | (mask & ~np.isin(components, components[eroded]))
        masks.append(mask.astype(np.uint8))
    return masks


def majority_vote(masks: list[np.ndarray]) -> np.ndarray:
    """Voxels marked by more than half of the raters (uint8 0/1)."""
    return (2 * np.sum(masks, axis=0) > len(masks)).astype(np.uint8)


def _images(rng: np.random.Generator, subject: Subject, lesion_ids: np.ndarray, edition: str) -> dict[str, np.ndarray]:
    """Channel images of ``edition`` named as its adapter names them."""
    classes = subject.tissue.copy()
    enhancing = np.flatnonzero(rng.random(int(lesion_ids.max())) < 0.2) + 1
    classes[lesion_ids > 0] = CLASSES.index("lesion") + 1
    classes[np.isin(lesion_ids, enhancing)] = CLASSES.index("enhancing") + 1
    contrasts = CHANNEL_CONTRAST[edition]
    rendered = render(rng, class_fractions(classes, len(CLASSES)), {c: CONTRASTS[c] for c in contrasts.values()},
                      n_healthy=3, brain_mask=classes > 0, spacing_mm=min(subject.grid.spacing))
    return {channel: rendered[contrast] for channel, contrast in contrasts.items()}


def _start(root: str | Path, edition: str, n_cases: int, spacing_mm, seed: int, overwrite: bool,
           release_marker: str, **extra) -> tuple[Path, Grid, int, int]:
    spacing = check_spacing(spacing_mm, 0.5, 4.0)
    root, seed, n_cases = start_run(root, f"{GENERATOR}.{edition}", n_cases, seed, overwrite, release_marker,
                                    spacing_mm=spacing, **extra)
    return root, release_grid(FOV_MM[edition], spacing), seed, n_cases


def synthesize_msseg2016(root: str | Path, n_cases: int = 6, spacing_mm=2.0, seed: int = 0,
                         layout: str = "original", overwrite: bool = False) -> list[Path]:
    """MSSEG 2016 training cases; ``layout`` ``original`` (``Center_NN/Patient_NN``) or ``flat``
    (``<CC><PPP>SYNT/`` as the re-release). Returns the case folders; complete cases are kept."""
    if layout not in ("original", "flat"):
        raise BrainbenchConfigError(f"layout must be 'original' or 'flat', got {layout!r}")
    root, grid, seed, n_cases = _start(root, "msseg2016", n_cases, spacing_mm, seed, overwrite,
                                "Center_*" if layout == "original" else "*/Consensus.nii*", layout=layout)
    folders = []
    for index in track(range(n_cases), "Synthesising msseg2016"):
        center, patient = MSSEG_CENTERS[index % 3], index // 3 + 1
        if layout == "original":
            folder = root / f"Center_{center:02d}" / f"Patient_{patient:02d}"
            images = {m: folder / "Preprocessed_Data" / f"{stem}.nii.gz" for m, stem in MSSEG_PREPROCESSED.items()}
            masks, suffix = folder / "Masks", ".nii.gz"
        else:
            folder = root / f"{center:02d}{patient:03d}SYNT"
            images = {m: folder / f"{stem}.nii" for m, stem in MSSEG_FLAT.items()}
            masks, suffix = folder, ".nii"
        raters = [masks / f"ManualSegmentation_{k}{suffix}" for k in range(1, MSSEG_RATERS + 1)]
        consensus = masks / f"Consensus{suffix}"
        if needs_writing([*images.values(), *raters, consensus], overwrite):
            rng = np.random.default_rng([seed, index])
            subject = sample_subject(rng, grid)
            ids = grow_lesions(rng, subject, int(rng.integers(*N_LESIONS)))
            rater_masks = simulate_raters(rng, ids, grid, MSSEG_RATERS)
            for channel, image in _images(rng, subject, ids, "msseg2016").items():
                save_volume(image, grid, images[channel], dtype=np.float32)
            for path, mask in zip(raters, rater_masks):
                save_volume(mask, grid, path)
            save_volume(majority_vote(rater_masks), grid, consensus)
        folders.append(folder)
    return folders


def synthesize_isbi2015(root: str | Path, n_cases: int = 2, spacing_mm=2.0, seed: int = 0,
                        n_timepoints: int = 3, overwrite: bool = False) -> list[Path]:
    """ISBI 2015 training subjects ``training/trainingNN`` with ``n_timepoints`` visits each.

    A subject keeps its anatomy; each lesion has an onset visit, so the load grows over time.
    """
    n_timepoints = check_count("n_timepoints", n_timepoints, 9)
    root, grid, seed, n_cases = _start(root, "isbi2015", n_cases, spacing_mm, seed, overwrite, "training/training*",
                                n_timepoints=n_timepoints)
    folders = []
    for index in track(range(n_cases), "Synthesising isbi2015"):
        name = f"training{index + 1:02d}"
        folder = root / "training" / name
        rng = np.random.default_rng([seed, index])
        subject, lesions, onsets = None, None, None
        for t in range(1, n_timepoints + 1):
            case = f"{name}_{t:02d}"
            images = {c: folder / "preprocessed" / f"{case}_{c}_pp.nii" for c in CHANNEL_CONTRAST["isbi2015"]}
            masks = [folder / "masks" / f"{case}_mask{k}.nii" for k in range(1, ISBI_RATERS + 1)]
            if not needs_writing([*images.values(), *masks], overwrite):
                continue
            if subject is None:
                subject = sample_subject(rng, grid)
                lesions = grow_lesions(rng, subject, int(rng.integers(*N_LESIONS)))
                onsets = np.concatenate([[0], rng.integers(1, n_timepoints + 1, size=int(lesions.max()))])
                onsets[1 : 1 + max(1, int(lesions.max()) // 2)] = 1
            visit = np.where(onsets[lesions] <= t, lesions, 0).astype(np.int16)
            visit_rng = np.random.default_rng([seed, index, t])
            for path, mask in zip(masks, simulate_raters(visit_rng, visit, grid, ISBI_RATERS)):
                save_volume(mask, grid, path)
            for channel, image in _images(visit_rng, subject, visit, "isbi2015").items():
                save_volume(image, grid, images[channel], dtype=np.float32)
        folders.append(folder)
    return folders


def synthesize_miccai2008(root: str | Path, n_cases: int = 4, spacing_mm=2.0, seed: int = 0,
                          overwrite: bool = False) -> list[Path]:
    """MICCAI 2008 training cases as NRRD with detached headers, alternating CHB and UNC.

    CHB cases carry one rater; UNC cases carry the UNC rater in the case folder and a second (CHB)
    rater in ``UNC_train_lesion_byCHB``.
    """
    root, grid, seed, n_cases = _start(root, "miccai2008", n_cases, spacing_mm, seed, overwrite, "*_train_Part*")
    folders = []
    for index in track(range(n_cases), "Synthesising miccai2008"):
        site = ("CHB", "UNC")[index % 2]
        case = f"{site}_train_Case{index // 2 + 1:02d}"
        folder = root / f"{site}_train_Part1" / case
        files = {m: folder / f"{case}_{token}.nhdr" for m, token in MICCAI2008_FILES.items()}
        raters = [folder / f"{case}_lesion.nhdr"]
        if site == "UNC":
            raters.append(root / MICCAI2008_SECOND_RATER / case / f"{case}_lesion_byCHB.nhdr")
        if needs_writing([*files.values(), *raters], overwrite):
            rng = np.random.default_rng([seed, index])
            subject = sample_subject(rng, grid)
            ids = grow_lesions(rng, subject, int(rng.integers(*N_LESIONS)))
            for path, mask in zip(raters, simulate_raters(rng, ids, grid, len(raters))):
                save_nrrd_detached(mask, grid, path)
            for channel, image in _images(rng, subject, ids, "miccai2008").items():
                save_nrrd_detached(image, grid, files[channel])
        folders.append(folder)
    return folders


NRRD_TYPES = {np.dtype(np.uint8): "uint8", np.dtype(np.int16): "short", np.dtype(np.float32): "float"}


def save_nrrd_detached(array: np.ndarray, grid: Grid, path: Path) -> Path:
    """Write ``path`` (``.nhdr``, LPS space as 3D Slicer writes it) and its ``.raw`` data, both atomically.

    The raw file comes first, so a header on disk always points at complete data. Axes are the
    ``(X, Y, Z)`` array's (NRRD's fastest axis first, i.e. Fortran order).
    """
    data = np.asarray(array)
    direction = LPS_TO_RAS @ grid.affine[:3, :3]
    origin = LPS_TO_RAS @ grid.affine[:3, 3]
    raw = path.with_suffix(".raw")
    little_endian = data.astype(data.dtype.newbyteorder("<"))
    write_atomic(raw, lambda tmp: tmp.write_bytes(little_endian.tobytes(order="F")))
    vectors = " ".join("(" + ",".join(f"{v:.6g}" for v in direction[:, k]) + ")" for k in range(3))
    header = (
        "NRRD0004\n"
        f"type: {NRRD_TYPES[data.dtype]}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {' '.join(str(n) for n in data.shape)}\n"
        f"space directions: {vectors}\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: raw\n"
        f"space origin: ({','.join(f'{v:.6g}' for v in origin)})\n"
        f"data file: {raw.name}\n"
    )
    return write_atomic(path, lambda tmp: tmp.write_text(header))
