"""Synthetic BraTS cases in the layout and label era of every edition: four MR contrasts and a glioma map.

Synthetic data, for tests and smoke runs without patient data. Each subject is the MNI ICBM152
2009a template (Fonov et al., NeuroImage 2011; see :mod:`brainbench.data.synth.anatomy`) under its
own smooth random warp (:mod:`brainbench.data.synth.subject`), with a white-matter tumour made of
necrotic core (label 1), enhancing rim (label 4) and oedema (label 2), the BraTS 2017–2021 label
values. Intensities come from tissue fractions with textbook relative contrasts, then a
multiplicative bias field and Rician noise.

Other editions get the same subject relabelled to their era (challenges.md §2.4): 2012–2016 split
the solid core into non-enhancing (3) and enhancing (4) parts; 2023 GLI renumbers enhancing 4 → 3.
Files follow each edition's official layout (§2.2), written by :func:`case_files`:

- ``brats2012``/``brats2013``: ``Image_Data/{HG,LG}/NNNN`` and ``Synthetic_Data/HG/NNNN`` with VSD
  ``.mha`` objects ``VSD.Brain.XX.O.MR_<mod>/VSD.Brain.XX.O.MR_<mod>.<id>.mha``, ground truth
  ``VSD.Brain_{3,2}more.XX.XX.OT`` (real) or ``VSD.Brain_1more.XX.O.OT`` plus the extra tissue map
  ``VSD.Gray_matter_of_neuraxis_5more.XX.O.OT`` (synthetic part), int16.
- ``brats2015``/``brats2016``: ``{HGG,LGG}/brats_2013_patNNNN_1`` or ``brats_tcia_patNNN_MMMM`` with
  ``VSD.Brain.XX.O.MR_<mod>.<id>/<same>.mha``; LGG ground truth is ``Brain_2more``; every fourth case
  uses the later ``SMIR.`` prefix.
- ``brats2017``–``brats2019``: ``{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``.
- ``brats2020``: ``BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii.gz``.
- ``brats2021``: ``BraTS2021_NNNNN/…`` with even (non-contiguous) ids.
- ``brats2023_gli``: ``BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

Case ``i`` (0-based) is drawn from ``numpy.random.default_rng([seed, i])`` alone (its era relabelling
from ``[seed, i, 1]``), so any prefix of a run is reproduced exactly by a shorter or longer run with
the same seed and spacing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from brainbench.challenges.brats import EDITIONS, VSD_CHANNELS, CaseFolderLayout
from brainbench.challenges.vsd import VsdLayout
from brainbench.io import Grid, save_volume
from brainbench.data.synth.anatomy import template_tissues
from brainbench.data.synth.subject import SynthConfig as SynthBratsConfig
from brainbench.data.synth.subject import (
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

GENERATOR = "brainbench.synth.brats"
MODALITIES = ("flair", "t1", "t1ce", "t2")
FILE_KEYS = (*MODALITIES, "seg")
SYNTH_CHANNEL = {"t1c": "t1ce", "t1n": "t1", "t2w": "t2", "t2f": "flair"}
"""Synthesized contrast behind each modality name of the other eras (2012–2016 ``t1c``, 2023 GLI)."""
def real_data_glob(edition: str) -> str:
    """Entries at the root of a real release, whose presence without a generator record means real data."""
    layout = EDITIONS[edition].layout
    if isinstance(layout, VsdLayout):
        return "*_Data" if layout.id_from_path else "?GG"
    return re.sub(r"\{.*", "*", layout.case_ids) if layout.case_ids else "?GG"


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

WT_VOLUME_ML = (30.0, 120.0)
"""Whole-tumour volume range sampled log-uniformly; BraTS whole tumours span roughly 20–150 ml."""
MIN_TUMOUR_Z_MM = -5.0
"""Tumour centres lie above this MNI z (supratentorial), where most adult gliomas grow."""


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


def _is_vsd(edition: str) -> bool:
    return isinstance(EDITIONS[edition].layout, VsdLayout)


def _is_graded(edition: str) -> bool:
    layout = EDITIONS[edition].layout
    return isinstance(layout, CaseFolderLayout) and layout.graded


def case_id(index: int, edition: str = "brats2020") -> str:
    """Case id the adapter gives the 0-based case ``index`` of ``edition``: ``BraTS20_Training_001`` for 0
    (the folder name; BRATS-2's path below the root, e.g. ``Image_Data_HG_0001``)."""
    if _is_vsd(edition):
        folder = _vsd_case_folder(index, edition)
        return folder.replace("/", "_") if EDITIONS[edition].layout.id_from_path else folder.split("/")[-1]
    if _is_graded(edition):
        prefix = {"brats2017": "Brats17", "brats2018": "Brats18", "brats2019": "BraTS19"}[edition]
        return f"{prefix}_TCIA_{100 + index:03d}_1" if _grade(index) == "LGG" else f"{prefix}_2013_{index + 2}_1"
    return EDITIONS[edition].layout.case_ids.format(n=index + 1, even=2 * index)


def case_files(root: str | Path, index: int, edition: str = "brats2020") -> dict[str, Path]:
    """The file paths of case ``index`` under ``root``, keyed by ``edition``'s modalities and ``seg``
    (plus ``tissue`` for the synthetic part of BRATS 2012/2013)."""
    root = Path(root)
    keys = (*EDITIONS[edition].modalities, "seg")
    if _is_vsd(edition):
        return _vsd_files(root / _vsd_case_folder(index, edition), index, edition)
    name = case_id(index, edition)
    folder = root / (_grade(index) if _is_graded(edition) else "") / name
    separator = EDITIONS[edition].layout.separator
    return {key: folder / f"{name}{separator}{key}.nii.gz" for key in keys}


def synthesize_brats(
    root: str | Path,
    n_cases: int = 12,
    spacing_mm: float = 2.0,
    seed: int = 0,
    overwrite: bool = False,
    edition: str = "brats2020",
) -> list[Path]:
    """Writes the cases of ``edition``, returns the case folders; skips a case whose files exist unless overwrite.

    Also writes ``brainbench_synthetic.json`` at ``root`` first (see :func:`prepare_root`); refuses,
    unless ``overwrite``, a root holding another run or unrecorded case folders (likely real data).
    """
    if edition not in EDITIONS:
        raise BrainbenchConfigError(f"unknown BraTS edition '{edition}'; choose one of {sorted(EDITIONS)}")
    config = SynthBratsConfig(n_cases=n_cases, spacing_mm=spacing_mm, seed=seed)
    root = Path(root)
    generator = GENERATOR if edition == "brats2020" else f"{GENERATOR}.{edition}"
    prepare_root(root, generator, config, overwrite, real_data_glob(edition))
    folders = []
    for index in track(range(int(n_cases)), f"Synthesising {edition}"):
        files = case_files(root, index, edition)
        if overwrite or not all(path.is_file() for path in files.values()):
            _write_case(synthesize_case(int(seed), index, float(spacing_mm)), files, edition, int(seed), index)
        folders.append(files["seg"].parent.parent if _is_vsd(edition) else files["seg"].parent)
    return folders


def synthesize_case(seed: int, index: int, spacing_mm: float = 2.0) -> SynthCase:
    """Build case ``index`` (0-based) of the run ``seed`` in memory; depends on nothing else."""
    anatomy = template_tissues(float(spacing_mm))
    rng = np.random.default_rng([seed, index])
    gm, wm, csf, brain_mask = subject_tissues(anatomy, rng)
    seg = _grow_tumour(rng, gm, wm, csf, brain_mask, anatomy.grid)
    images = _render(rng, gm, wm, csf, seg, brain_mask, anatomy.grid.spacing[0])
    return SynthCase(images=images, seg=seg, gm=gm, wm=wm, csf=csf, brain_mask=brain_mask, grid=anatomy.grid)


def era_labels(seg: np.ndarray, edition: str, seed: int, index: int, spacing_mm: float) -> np.ndarray:
    """``seg`` (2017–2021 values 0/1/2/4) in ``edition``'s label era (challenges.md §2.4).

    2012–2016: the part of the enhancing core where a smooth random field is high becomes
    non-enhancing tumour (3), about a third of it; 2023 GLI: enhancing 4 → 3; otherwise unchanged.
    """
    values = EDITIONS[edition].label_values
    if 3 in values and 4 in values:
        field = smooth_field(np.random.default_rng([seed, index, 1]), seg.shape, spacing_mm, 8.0)
        return np.where((seg == LABELS["enhancing"]) & (field > 0.4), 3, seg).astype(seg.dtype)
    if 4 not in values:
        return np.where(seg == LABELS["enhancing"], 3, seg).astype(seg.dtype)
    return seg


def _write_case(case: SynthCase, files: dict[str, Path], edition: str, seed: int, index: int) -> None:
    """Save ``case`` under ``files``: VSD eras as int16 ``.mha`` (as released), later ones as NIfTI."""
    image_dtype, label_dtype = (np.int16, np.int16) if _is_vsd(edition) else (np.float32, np.uint8)
    for modality in EDITIONS[edition].modalities:
        image = case.images[SYNTH_CHANNEL.get(modality, modality)]
        save_volume(np.round(image) if image_dtype == np.int16 else image, case.grid, files[modality], image_dtype)
    seg = era_labels(case.seg, edition, seed, index, case.grid.spacing[0])
    save_volume(seg, case.grid, files["seg"], dtype=label_dtype)
    if "tissue" in files:
        tissue = np.argmax(np.stack([case.csf, case.gm, case.wm]), axis=0) + 1
        save_volume(np.where(case.brain_mask, tissue, 0), case.grid, files["tissue"], dtype=np.int16)


def _vsd_case_folder(index: int, edition: str) -> str:
    """Relative case folder of a VSD-era case: BRATS-2 groups for 2012/2013, HGG/LGG patients for 2015/2016."""
    if EDITIONS[edition].layout.id_from_path:  # BRATS-2 (2012/2013) groups
        group = ("Image_Data/HG", "Image_Data/LG", "Synthetic_Data/HG")[index % 3]
        return f"{group}/{index // 3 + 1:04d}"
    name = f"brats_2013_pat{index + 1:04d}_1" if index % 2 == 0 else f"brats_tcia_pat{100 + index:03d}_{7 * index:04d}"
    return f"{_grade(index)}/{name}"


def _grade(index: int) -> str:
    """Every third case (index 1, 4, 7, …) is low grade, so that small runs hold both grades."""
    return "LGG" if index % 3 == 1 else "HGG"


def _vsd_files(folder: Path, index: int, edition: str) -> dict[str, Path]:
    """VSD object paths of one case: one sub-folder per object, holding ``<object>.<id>.mha``."""
    first_id = 54512 + 10 * index
    if EDITIONS[edition].layout.id_from_path:  # BRATS-2 (2012/2013) groups
        synthetic = index % 3 == 2
        truth = "VSD.Brain_1more.XX.O.OT" if synthetic else f"VSD.Brain_{2 if index % 3 == 1 else 3}more.XX.XX.OT"
        objects = {m: f"VSD.Brain.XX.O.{VSD_CHANNELS[m]}" for m in EDITIONS[edition].modalities}
        objects["seg"] = truth
        if synthetic:
            objects["tissue"] = "VSD.Gray_matter_of_neuraxis_5more.XX.O.OT"
        return {key: folder / name / f"{name}.{first_id + k}.mha" for k, (key, name) in enumerate(objects.items())}
    prefix = "SMIR" if index % 4 == 3 else "VSD"
    names = {m: f"{prefix}.Brain.XX.O.{VSD_CHANNELS[m]}" for m in EDITIONS[edition].modalities}
    names["seg"] = f"{prefix}.Brain_{2 if _grade(index) == 'LGG' else 3}more.XX.O.OT"
    paths = {}
    for k, (key, name) in enumerate(names.items()):
        stem = f"{name}.{first_id + k}"
        paths[key] = folder / stem / f"{stem}.mha"
    return paths


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

    box, box_shape, offsets = lesion_box(centre, int(np.ceil(2.0 * radius_mm * aniso.max() / spacing)), grid)

    rotation = random_rotation(rng)
    lobes = smooth_field(rng, box_shape, spacing, rng.uniform(6.0, 12.0))
    rim = smooth_field(rng, box_shape, spacing, 5.0)
    spread = smooth_field(rng, box_shape, spacing, 10.0)
    shift_mm = rng.normal(0.0, 0.15 * radius_mm, size=(3, 1, 1, 1)).astype(np.float32)

    core_radius = ellipsoid_radius(offsets, rotation, core_ratio * radius_mm * aniso) * np.exp(0.2 * lobes)
    oedema_radius = (
        ellipsoid_radius(offsets - shift_mm, rotation, radius_mm * aniso)
        * np.exp(0.3 * spread)
        * (1.0 + 0.6 * gm[box])
    )
    inside = brain_mask[box]
    core = (core_radius < 1.0) & inside
    necrosis_count = int(round(necrosis_fraction * core.sum()))
    necrosis = lowest(core_radius * np.exp(0.12 * rim), ndimage.binary_erosion(core), necrosis_count)
    oedema_count = int(round(wt_ml / voxel_ml)) - int(core.sum())
    oedema = lowest(oedema_radius, inside & (csf[box] < 0.5) & ~core, oedema_count)
    oedema |= ndimage.binary_dilation(core) & inside & ~core
    components, _ = ndimage.label(oedema | core)
    oedema &= np.isin(components, np.unique(components[core]))

    seg = np.zeros(grid.shape, dtype=np.uint8)
    local = seg[box]
    local[oedema] = LABELS["oedema"]
    local[core] = LABELS["enhancing"]
    local[necrosis] = LABELS["necrosis"]
    return seg


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

    Tumour compartments replace healthy tissue with a half-voxel partial-volume blur; see
    :func:`~brainbench.data.synth.subject.render` for gain, bias and noise.
    """
    tumour = [
        ndimage.gaussian_filter((seg == LABELS[name]).astype(np.float32), sigma=0.5) for name in CLASSES[3:]
    ]
    healthy = np.clip(1.0 - sum(tumour), 0.0, 1.0)
    fractions = [csf * healthy, gm * healthy, wm * healthy, *tumour]
    return render(rng, fractions, {m: CONTRASTS[m] for m in MODALITIES}, 3, brain_mask, spacing_mm)
