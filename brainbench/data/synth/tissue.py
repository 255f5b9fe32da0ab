"""Synthetic brain-tissue cases in the MRBrainS13, MRBrainS18 and NeoBrainS12 layouts.

Synthetic data (no patient data). Adults (MRBrainS): the template subject of
:mod:`brainbench.data.synth.common` on the 0.958×0.958×3 mm grid (240×240×48 field of view by
default), its eight structures as the MRBrainS labels 1–8, with periventricular/juxtacortical white-
matter lesions (label 4, from :func:`brainbench.data.synth.ms.grow_lesions`); MRBrainS18 adds one
infarct (9) and one small "other" lesion (10). Contrasts: T1 and T1-IR with WM > GM > CSF, FLAIR with
dark CSF and bright lesions. ``LabelsForTesting`` is the official 3-tissue merge of the 8 labels.

Neonates (NeoBrainS12): the same anatomy shrunk (term ≈ 0.62, 30 weeks ≈ 0.5 of adult size) with the
neonatal classes 1–8; white matter is mostly unmyelinated (3), myelinated (4) only near the basal
ganglia and brainstem (more at 40 than at 30 weeks), and its contrast is inverted against the adult:
darker than grey matter on T1, brighter on T2. Coronal sets are written with the anterior–posterior
axis as the slice axis.

Case ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone (NeoBrainS12: ``[seed, set, i]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.challenges.mrbrains import (
    MRBRAINS13_FILES, MRBRAINS13_SPLITS, MRBRAINS18_FILES, MRBRAINS_SPACING, TISSUE_OF_STRUCTURE,
)
from brainbench.challenges.neobrains import IMAGE_SETS, NEO_LABELS
from brainbench.io import Grid, save_volume
from brainbench.data.synth.common import (
    ADULT_LABELS, Subject, check_count, check_spacing, class_fractions, needs_writing, release_grid,
    sample_subject, start_run,
)
from brainbench.data.synth.ms import grow_lesions
from brainbench.data.synth.subject import ellipsoid_radius, random_rotation, render
from brainbench.errors import BrainbenchConfigError
from brainbench.progress import track

GENERATOR = "brainbench.synth.tissue"
MRBRAINS_FOV_MM = (240 * 0.958, 240 * 0.958, 48 * 3.0)
"""240×240×48 voxels at 0.958×0.958×3 mm (spec §5, S-34c)."""
ADULT_CLASSES = ("csf", "gm", "wm", "deep_gm", "wm_lesion", "infarction", "other")
ADULT_CONTRASTS = {
    "t1": (300.0, 600.0, 900.0, 700.0, 550.0, 350.0, 450.0),
    "t1_ir": (80.0, 450.0, 1000.0, 600.0, 400.0, 120.0, 300.0),
    "flair": (120.0, 750.0, 550.0, 680.0, 1300.0, 400.0, 1000.0),
}
"""Mean signal per class of :data:`ADULT_CLASSES` (arbitrary units): T1-IR has the strongest GM/WM
contrast; FLAIR suppresses CSF and shows lesions bright, the infarct cavity dark."""
MRBRAINS18_IDS = ("1", "4", "5", "7", "14", "070", "148")
"""Official training ids (spec §6), zero-padded ``070`` included; later synthetic ids count on from 149."""
N_WM_LESIONS = (4, 10)

NEO_CONTRASTS = {
    "t1": (500.0, 620.0, 380.0, 750.0, 600.0, 520.0, 150.0, 150.0),
    "t2": (700.0, 550.0, 1100.0, 500.0, 600.0, 750.0, 1700.0, 1700.0),
}
"""Mean signal per neonatal class 1–8 (cortical GM, deep GM, unmyelinated WM, myelinated WM,
brainstem, cerebellum, ventricles, extracerebral CSF): unmyelinated WM is below GM on T1, above on T2."""
NEO_SCALE = {40: 0.62, 30: 0.5}
MYELIN_REACH_MM = {40: 5.0, 30: 1.5}
"""White matter within this distance (mm) of deep grey matter or brainstem is myelinated."""


def adult_subject(rng: np.random.Generator, grid: Grid, pathology: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, classes)`` on ``grid`` (uint8): MRBrainS labels 1–8 (and 9/10 when ``pathology``) and
    the :data:`ADULT_CLASSES` map (1-based) that renders them."""
    subject = sample_subject(rng, grid)
    labels = subject.structure.copy()
    labels[grow_lesions(rng, subject, int(rng.integers(*N_WM_LESIONS))) > 0] = ADULT_LABELS["wm_lesion"]
    if pathology:
        for value, semi_axes in ((9, rng.uniform(5.0, 10.0, 3)), (10, rng.uniform(2.0, 4.0, 3))):
            labels[_blob(rng, subject, semi_axes)] = value
    classes = subject.tissue.copy()
    for value, name in ((2, "deep_gm"), (4, "wm_lesion"), (9, "infarction"), (10, "other")):
        classes[labels == value] = ADULT_CLASSES.index(name) + 1
    return labels, classes


def _blob(rng: np.random.Generator, subject: Subject, semi_axes: np.ndarray) -> np.ndarray:
    """Boolean ellipsoid of ``semi_axes`` (mm) centred in cortical grey or white matter, clipped to them."""
    grid = subject.grid
    tissue = np.isin(subject.structure, (ADULT_LABELS["cortical_gm"], ADULT_LABELS["wm"]))
    pool = np.flatnonzero(tissue)
    centre = np.array(np.unravel_index(pool[rng.integers(pool.size)], grid.shape))
    offsets = np.stack(np.meshgrid(*(np.arange(n) - c for n, c in zip(grid.shape, centre)), indexing="ij"))
    offsets = offsets.astype(np.float32) * np.asarray(grid.spacing, np.float32)[:, None, None, None]
    return (ellipsoid_radius(offsets, random_rotation(rng), semi_axes) < 1.0) & tissue


def _adult_images(rng: np.random.Generator, classes: np.ndarray, grid: Grid) -> dict[str, np.ndarray]:
    return render(rng, class_fractions(classes, len(ADULT_CLASSES)), ADULT_CONTRASTS, n_healthy=4,
                  brain_mask=classes > 0, spacing_mm=min(grid.spacing))


def synthesize_mrbrains13(root: str | Path, n_cases: int = 5, n_test: int = 0, spacing_mm=MRBRAINS_SPACING,
                          seed: int = 0, overwrite: bool = False) -> list[Path]:
    """``TrainingData/<1..n_cases>`` with both label maps and ``TestData/<1..n_test>`` without labels
    (ids restart at 1, as released). ``T1_1mm`` lies on its own isotropic grid of the in-plane spacing,
    at least 1 mm (1 mm at the official geometry). Returns the case folders."""
    n_test = int(n_test) if n_test == 0 else check_count("n_test", n_test, 99)
    spacing = check_spacing(spacing_mm, 0.3, 4.0)
    root, seed, n_cases = start_run(root, f"{GENERATOR}.mrbrains13", n_cases, seed, overwrite, "TrainingData",
                                   spacing_mm=spacing, n_test=n_test)
    grid = release_grid(MRBRAINS_FOV_MM, spacing)
    iso = max(1.0, spacing[0])
    grid_1mm = release_grid(MRBRAINS_FOV_MM, (iso, iso, iso))
    merge = np.zeros(max(TISSUE_OF_STRUCTURE) + 1, dtype=np.uint8)
    merge[list(TISSUE_OF_STRUCTURE)] = list(TISSUE_OF_STRUCTURE.values())
    folders = []
    splits = list(MRBRAINS13_SPLITS)
    for index in track(range(n_cases + n_test), "Synthesising mrbrains13"):
        training = index < n_cases
        folder = root / splits[0 if training else 1] / str(index + 1 if training else index - n_cases + 1)
        images = {m: folder / f"{stem}.nii" for m, stem in MRBRAINS13_FILES.items()}
        labels = [folder / "LabelsForTraining.nii", folder / "LabelsForTesting.nii"] if training else []
        if needs_writing([*images.values(), *labels], overwrite):
            rng = np.random.default_rng([seed, index])
            structure, classes = adult_subject(rng, grid, pathology=False)
            rendered = _adult_images(rng, classes, grid)
            for channel, contrast in (("t1", "t1"), ("t1_ir", "t1_ir"), ("t2_flair", "flair")):
                save_volume(rendered[contrast], grid, images[channel], dtype=np.float32)
            save_volume(_resample(rendered["t1"], grid, grid_1mm), grid_1mm, images["t1_1mm"], dtype=np.float32)
            if training:
                save_volume(structure, grid, labels[0], dtype=np.uint8)
                save_volume(merge[structure], grid, labels[1], dtype=np.uint8)
        folders.append(folder)
    return folders


def _resample(image: np.ndarray, grid: Grid, target: Grid) -> np.ndarray:
    """Trilinear resampling of ``image`` from ``grid`` onto ``target`` (both axis-aligned, same world)."""
    matrix = np.linalg.inv(grid.affine) @ target.affine
    return ndimage.affine_transform(image, matrix[:3, :3], offset=matrix[:3, 3], output_shape=target.shape,
                                    order=1, mode="constant", cval=0.0).astype(np.float32)


def synthesize_mrbrains18(root: str | Path, n_cases: int = 7, spacing_mm=MRBRAINS_SPACING, seed: int = 0,
                          overwrite: bool = False) -> list[Path]:
    """``training/<id>/pre/{FLAIR,reg_T1,reg_IR}.nii.gz`` and ``segm.nii.gz`` (labels 0–10) for the
    official ids 1, 4, 5, 7, 14, 070, 148, then 149, 150, …"""
    spacing = check_spacing(spacing_mm, 0.3, 4.0)
    root, seed, n_cases = start_run(root, f"{GENERATOR}.mrbrains18", n_cases, seed, overwrite, "training",
                                    spacing_mm=spacing)
    grid = release_grid(MRBRAINS_FOV_MM, spacing)
    ids = [*MRBRAINS18_IDS, *(str(149 + k) for k in range(max(0, n_cases - len(MRBRAINS18_IDS))))]
    folders = []
    for index in track(range(n_cases), "Synthesising mrbrains18"):
        folder = root / "training" / ids[index]
        images = {m: folder / f"{stem}.nii.gz" for m, stem in MRBRAINS18_FILES.items()}
        if needs_writing([*images.values(), folder / "segm.nii.gz"], overwrite):
            rng = np.random.default_rng([seed, index])
            labels, classes = adult_subject(rng, grid, pathology=True)
            rendered = _adult_images(rng, classes, grid)
            for channel, contrast in (("flair", "flair"), ("t1", "t1"), ("ir", "t1_ir")):
                save_volume(rendered[contrast], grid, images[channel], dtype=np.float32)
            save_volume(labels, grid, folder / "segm.nii.gz", dtype=np.uint8)
        folders.append(folder)
    return folders


def neonatal_labels(subject: Subject, weeks: int) -> np.ndarray:
    """NeoBrainS12 classes 1–8 (uint8) of an adult-structured ``subject`` at ``weeks`` corrected age."""
    structure = subject.structure
    lookup = np.zeros(max(ADULT_LABELS.values()) + 1, dtype=np.uint8)
    for adult, neo in (("cortical_gm", "cortical_gm"), ("basal_ganglia", "basal_ganglia_thalami"),
                       ("wm", "unmyelinated_wm"), ("wm_lesion", "unmyelinated_wm"), ("brainstem", "brainstem"),
                       ("cerebellum", "cerebellum"), ("ventricles", "ventricles"),
                       ("extracerebral_csf", "extracerebral_csf")):
        lookup[ADULT_LABELS[adult]] = NEO_LABELS[neo]
    labels = lookup[structure]
    seeds = np.isin(structure, (ADULT_LABELS["basal_ganglia"], ADULT_LABELS["brainstem"]))
    reach = ndimage.distance_transform_edt(~seeds, sampling=subject.grid.spacing) <= MYELIN_REACH_MM[weeks]
    labels[reach & (labels == NEO_LABELS["unmyelinated_wm"])] = NEO_LABELS["myelinated_wm"]
    return labels


def synthesize_neobrains12(root: str | Path, n_cases: int = 2, spacing_mm: float | None = 0.7, seed: int = 0,
                           sets: Sequence[str] = tuple(IMAGE_SETS), overwrite: bool = False) -> list[Path]:
    """``<set folder>/example<k>/`` with T1, T2 and ``manualSegm`` for ``n_cases`` cases of each image set.

    ``spacing_mm`` is the **in-plane** spacing replacing the sets' 0.35 / 0.34 mm (``None`` keeps them);
    slices stay 2 mm, the field of view stays the official one. Examples are numbered across sets as in the training
    release; every second one uses the ``T2_1-1`` / ``T1_1-2`` file names seen in the wild.
    """
    unknown = [s for s in sets if s not in IMAGE_SETS]
    if unknown or not sets:
        raise BrainbenchConfigError(f"sets must be among {list(IMAGE_SETS)}, got {list(sets)}")
    spacing = None if spacing_mm is None else check_spacing(spacing_mm, 0.3, 4.0)[0]
    root, seed, n_cases = start_run(root, f"{GENERATOR}.neobrains12", n_cases, seed, overwrite, "*w*",
                                   in_plane_mm=spacing, sets=list(sets))
    folders = []
    for set_index, name in enumerate(IMAGE_SETS):
        if name not in sets:
            continue
        image_set = IMAGE_SETS[name]
        in_plane = image_set.spacing_mm[0] if spacing is None else spacing
        fov = tuple(n * s for n, s in zip(image_set.shape, image_set.spacing_mm))
        grid = release_grid(fov, (in_plane, in_plane, image_set.spacing_mm[2]), image_set.axes)
        for index in track(range(n_cases), f"Synthesising neobrains12 {name}"):
            number = set_index * n_cases + index + 1
            folder = root / image_set.training_folder / f"example{number}"
            names = ("T1", "T2") if number % 2 else ("T1_1-2", "T2_1-1")
            files = [folder / f"{stem}.nii.gz" for stem in (*names, "manualSegm")]
            if needs_writing(files, overwrite):
                rng = np.random.default_rng([seed, set_index, index])
                labels = neonatal_labels(sample_subject(rng, grid, NEO_SCALE[image_set.weeks]), image_set.weeks)
                rendered = render(rng, class_fractions(labels, len(NEO_LABELS)), NEO_CONTRASTS,
                                  n_healthy=len(NEO_LABELS), brain_mask=labels > 0, spacing_mm=min(grid.spacing))
                save_volume(rendered["t1"], grid, files[0], dtype=np.float32)
                save_volume(rendered["t2"], grid, files[1], dtype=np.float32)
                save_volume(labels, grid, files[2], dtype=np.uint8)
            folders.append(folder)
    return folders
