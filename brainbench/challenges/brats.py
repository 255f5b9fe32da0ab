"""BRATS / BraTS, every edition from 2012 to 2023 GLI, each declared as data.

Layouts (../shared/specs/challenges.md §2.2; tags there):

- 2012, 2013 (VSD "BRATS-2", ``.mha``): ``<root>/{Image_Data,Synthetic_Data}/{HG,LG}/NNNN/`` with objects
  ``VSD.Brain.XX.O.MR_{Flair,T1,T1c,T2}/<same>.<id>.mha`` and ground truth
  ``VSD.Brain_{1,2,3}more.XX.{XX,O}.OT/...`` (all three counts and both ``XX``/``O`` accepted [P]).
  The synthetic part's extra ``VSD.Gray_matter_of_neuraxis_5more...`` tissue map is ignored. Case ids
  are the path below the root (``Image_Data_HG_0001``), as numbers repeat across groups. The 2012
  on-site 2-label truth and the MIDAS ``BRATS_HG0001_*.mha`` naming are not read.
- 2015, 2016 (SMIR/VSD ``.mha``): ``<root>/{HGG,LGG}/brats_2013_patNNNN_1|brats_tcia_patNNN_MMMM/``
  with ``{VSD,SMIR}.Brain.XX.O.MR_<mod>.<id>/<same>.mha`` and ``...Brain_{2,3}more.XX.O.OT.<id>``
  (LGG ships ``Brain_2more``; the ``SMIR.`` prefix is a single observation [P], accepted).
  ``MR_T1`` is matched as a whole token, never as a prefix of ``MR_T1c``.
- 2017–2019: ``<root>/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` with case prefixes
  ``Brats17_``, ``Brats18_``, ``BraTS19_``; the grade comes from the folder.
- 2020: flat ``<root>/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii(.gz)``.
  Known defect: case 355 ships its mask as ``W39_1998.09.19_Segm.nii``. Mirrors store ``.nii``.
- 2021: flat ``<root>/BraTS2021_NNNNN/BraTS2021_NNNNN_*.nii.gz``.
- 2023 GLI: flat ``<root>/BraTS-GLI-NNNNN-NNN/BraTS-GLI-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}.nii.gz``.

Label eras (§2.4): 2012–2016 labels 0–4 (1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing),
regions complete {1,2,3,4} / core {1,3,4} / enhancing {4} (region definition [R], Menze et al. TMI
2015); 2017–2021 labels 0/1/2/4, WT {1,2,4} / TC {1,4} / ET {4}; 2023 GLI labels 0/1/2/3, WT {1,2,3}
/ TC {1,3} / ET {3}. Geometry: 1 mm isotropic throughout; 240×240×155 from 2015, per-case sizes before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from brainbench.challenges.base import Case, Edition, Layout, Synthetic, collect, find_volume, read_channels
from brainbench.challenges.vsd import VsdLayout
from brainbench.errors import BrainbenchDataError
from brainbench.io import NIFTI_SUFFIXES

VSD_LABELS = {0: "background", 1: "necrosis", 2: "oedema", 3: "non-enhancing tumour", 4: "enhancing tumour"}
"""BRATS 2012–2016 label names (challenges.md §2.1 and §2.4, [V] S-11)."""
LEGACY_LABELS = {0: "background", 1: "necrotic / non-enhancing tumour core (NCR/NET)",
                 2: "peritumoural oedema (ED)", 4: "GD-enhancing tumour (ET)"}
"""BraTS 2017–2021 label names (challenges.md §2.1 and §2.4, [V] S-06, S-07)."""
GLI2023_LABELS = {0: "background", 1: "non-enhancing tumour core (NETC)",
                  2: "surrounding non-enhancing FLAIR hyperintensity (SNFH)", 3: "enhancing tissue (ET)"}
"""BraTS 2023 label names, one map for all sub-challenges: the abbreviations are challenges.md §2.1 and
§2.4 ([V] S-03, S-04b); the expansions are the BraTS 2023/2024 challenge papers' wording."""
LEGACY_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
VSD_REGIONS = {"complete": (1, 2, 3, 4), "core": (1, 3, 4), "enhancing": (4,)}
VSD_CHANNELS = {"flair": "MR_Flair", "t1": "MR_T1", "t1c": "MR_T1c", "t2": "MR_T2"}
"""Channel name → VSD token of the 2012–2016 exports."""
ONE_MM = (1.0, 1.0, 1.0)
SYNTHESIZE = "brainbench.data.synth.brats.synthesize_brats"


@dataclass(frozen=True)
class CaseFolderLayout(Layout):
    """``<root>[/{HGG,LGG}]/<case>/<case><separator><channel>.nii[.gz]`` and ``...<separator>seg``.

    Attributes:
        channels: the release's channel names as they appear in file names.
        separator: between case id and channel (``_``; BraTS 2023 ``-``).
        graded: case folders may sit in ``HGG``/``LGG`` folders (2017–2019); the grade goes to ``meta``.
        misnamed_masks: case id → mask file stem the release ships instead (BraTS 2020 case 355).
        case_ids: how a flat release numbers its cases, for look-alikes: a format of ``n`` (1, 2, …)
            and ``even`` (0, 2, 4, …), e.g. ``BraTS20_Training_{n:03d}``; None for graded releases.
    """

    channels: tuple[str, ...]
    separator: str = "_"
    graded: bool = False
    misnamed_masks: Mapping[str, str] = field(default_factory=dict)
    case_ids: str | None = None

    @property
    def expected(self) -> str:
        return f"<case>/<case>{self.separator}{self.channels[0]}.nii.gz"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        return collect([partial(self._read_case, folder, grade, edition.modalities, require_labels)
                        for folder, grade in self._case_folders(root)])

    def _case_folders(self, root: Path) -> list[tuple[Path, str | None]]:
        if self.graded and any((root / g).is_dir() for g in ("HGG", "LGG")):
            return [(folder, grade) for grade in ("HGG", "LGG") if (root / grade).is_dir()
                    for folder in sorted((root / grade).iterdir()) if folder.is_dir()]
        return [(folder, None) for folder in sorted(root.iterdir())
                if folder.is_dir() and any(folder.glob(f"{folder.name}{self.separator}*.nii*"))]

    def _read_case(self, folder: Path, grade: str | None, modalities, require_labels: bool) -> Case:
        case_id, sep = folder.name, self.separator
        images = read_channels(folder, {m: f"{case_id}{sep}{m}" for m in modalities}, modalities, case_id,
                               NIFTI_SUFFIXES)
        label = find_volume(folder, f"{case_id}{sep}seg", NIFTI_SUFFIXES)
        if label is None and case_id in self.misnamed_masks:
            label = find_volume(folder, self.misnamed_masks[case_id], NIFTI_SUFFIXES)
        if label is None and require_labels:
            raise BrainbenchDataError(folder / f"{case_id}{sep}seg.nii.gz", f"missing label map of case {case_id}")
        return Case(case_id=case_id, images=images, label=label, meta={"grade": grade} if grade else {})


def _vsd_edition(year: int) -> Edition:
    return Edition(
        name=f"brats{year}", challenge="brats", modalities=tuple(VSD_CHANNELS), label_values=tuple(VSD_LABELS),
        label_names=VSD_LABELS, regions=VSD_REGIONS, protocol="brats-vsd-2012-2016",
        ranking="vsd-mean-of-metric-ranks",  # the VSD online table (§2.7); 2016 ran on the 2015 platform
        layout=VsdLayout(VSD_CHANNELS, truth_object=r"Brain_[123]more", id_from_path=year <= 2013),
        source="challenges.md §2.1–§2.4, §2.7, §8 (VSD/SMIR exports as read by public loaders; labels per VSD docs)",
        synthetic=Synthetic(SYNTHESIZE, n_cases=12, spacing_mm=2.0, options={"edition": f"brats{year}"}),
        spacing_mm=ONE_MM,
    )


def _brats2023_edition(subchallenge: str, tumour: str) -> Edition:
    """A BraTS 2023 sub-challenge: the GLI layout and labels under its own prefix, its lesion-wise rules."""
    name = f"brats2023_{subchallenge.lower()}"
    return Edition(
        name=name, challenge="brats", modalities=("t1n", "t1c", "t2w", "t2f"),
        label_values=tuple(GLI2023_LABELS), label_names=GLI2023_LABELS,
        regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}, protocol=f"brats-2023-{subchallenge.lower()}",
        ranking="brats2023-lesionwise-rank-then-aggregate",
        layout=CaseFolderLayout(("t1n", "t1c", "t2w", "t2f"), separator="-",
                                case_ids=f"BraTS-{subchallenge}-{{even:05d}}-000"),
        source=f"challenges.md §2.2, §2.4, §2.6 ({tumour}; Synapse release; official BraTS-2023-Metrics scorer, "
               "whose one label map serves all five sub-challenges [P] S-05)",
        synthetic=Synthetic(SYNTHESIZE, n_cases=12, spacing_mm=2.0, options={"edition": name}),
        spacing_mm=ONE_MM,
    )


def _legacy_edition(year: int, layout: CaseFolderLayout) -> Edition:
    return Edition(
        name=f"brats{year}", challenge="brats", modalities=layout.channels, label_values=tuple(LEGACY_LABELS),
        label_names=LEGACY_LABELS, regions=LEGACY_REGIONS, protocol="brats-legacy-2017-2021",
        ranking="brats-rank-then-aggregate", layout=layout,
        source="challenges.md §2.2, §2.4, §2.5, §2.7 (CBICA/Synapse releases; nnU-Net converters)",
        synthetic=Synthetic(SYNTHESIZE, n_cases=12, spacing_mm=2.0, options={"edition": f"brats{year}"}),
        spacing_mm=ONE_MM,
    )


LEGACY_CHANNELS = ("flair", "t1", "t1ce", "t2")
EDITIONS: dict[str, Edition] = {edition.name: edition for edition in (
    *(_vsd_edition(year) for year in (2012, 2013, 2015, 2016)),
    *(_legacy_edition(year, CaseFolderLayout(LEGACY_CHANNELS, graded=True)) for year in (2017, 2018, 2019)),
    _legacy_edition(2020, CaseFolderLayout(LEGACY_CHANNELS, case_ids="BraTS20_Training_{n:03d}",
                                           misnamed_masks={"BraTS20_Training_355": "W39_1998.09.19_Segm"})),
    _legacy_edition(2021, CaseFolderLayout(LEGACY_CHANNELS, case_ids="BraTS2021_{even:05d}")),
    _brats2023_edition("GLI", "adult glioma"),
    _brats2023_edition("SSA", "glioma in Sub-Saharan Africa"),
    _brats2023_edition("MEN", "meningioma"),
    _brats2023_edition("MET", "brain metastases"),
)}
