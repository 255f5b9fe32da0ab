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

from pathlib import Path

from brainbench.challenges.base import Case, ChallengeAdapter, Edition, find_volume
from brainbench.challenges.vsd import VsdLayout, read_vsd_cases
from brainbench.data.io import NIFTI_SUFFIXES
from brainbench.errors import BrainbenchDataError

MODALITIES = ("flair", "t1", "t1ce", "t2")
LEGACY_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
MISNAMED_MASKS = {"BraTS20_Training_355": "W39_1998.09.19_Segm"}
"""Masks the official release ships under another name (spec §2.2)."""
VSD_CHANNELS = {"flair": "MR_Flair", "t1": "MR_T1", "t1c": "MR_T1c", "t2": "MR_T2"}
"""Channel name → VSD token of the 2012–2016 exports."""
ONE_MM = (1.0, 1.0, 1.0)


def _legacy_edition(year: int) -> Edition:
    return Edition(
        name=f"brats{year}",
        challenge="brats",
        modalities=MODALITIES,
        label_values=(0, 1, 2, 4),
        regions=LEGACY_REGIONS,
        protocol="brats-legacy-2017-2021",
        source="challenges.md §2.2, §2.4, §2.5 (CBICA/Synapse releases; nnU-Net converters)",
        spacing_mm=ONE_MM,
    )


def _vsd_edition(year: int) -> Edition:
    return Edition(
        name=f"brats{year}",
        challenge="brats",
        modalities=tuple(VSD_CHANNELS),
        label_values=(0, 1, 2, 3, 4),
        regions={"complete": (1, 2, 3, 4), "core": (1, 3, 4), "enhancing": (4,)},
        protocol="brats-vsd-2012-2016",
        source="challenges.md §2.1–§2.4, §8 (VSD/SMIR exports as read by public loaders; labels per VSD docs)",
        spacing_mm=ONE_MM,
    )


EDITIONS: dict[str, Edition] = {
    **{f"brats{year}": _vsd_edition(year) for year in (2012, 2013, 2015, 2016)},
    **{f"brats{year}": _legacy_edition(year) for year in range(2017, 2022)},
    "brats2023_gli": Edition(
        name="brats2023_gli",
        challenge="brats",
        modalities=("t1n", "t1c", "t2w", "t2f"),
        label_values=(0, 1, 2, 3),
        regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
        protocol="brats-2023-gli",
        source="challenges.md §2.2, §2.4, §2.6 (Synapse release; official BraTS-2023-Metrics scorer)",
        spacing_mm=ONE_MM,
    ),
}
GRADED_EDITIONS = {"brats2017", "brats2018", "brats2019"}
VSD_ERA = {"brats2012", "brats2013", "brats2015", "brats2016"}
VSD_LAYOUTS = {
    **{
        e: VsdLayout(VSD_CHANNELS, truth_object=r"Brain_[123]more", id_from_path=True)
        for e in ("brats2012", "brats2013")
    },
    **{e: VsdLayout(VSD_CHANNELS, truth_object=r"Brain_[123]more") for e in ("brats2015", "brats2016")},
}
NAME_SEPARATOR = {"brats2023_gli": "-"}
"""Between case id and channel in file names; ``_`` unless listed."""


class BratsAdapter(ChallengeAdapter):
    """Reads a BRATS/BraTS training or validation folder as released.

    Args:
        edition: one of :data:`EDITIONS` (``brats2012`` … ``brats2021``, ``brats2023_gli``).
        require_labels: training data must have a mask per case; validation releases have none.
    """

    def __init__(self, edition: str = "brats2020", require_labels: bool = True):
        if edition not in EDITIONS:
            raise BrainbenchDataError(edition, f"unknown BraTS edition; choose one of {sorted(EDITIONS)}")
        self.edition = EDITIONS[edition]
        self.require_labels = require_labels

    def discover(self, root: str | Path) -> list[Case]:
        if self.edition.name in VSD_LAYOUTS:
            return read_vsd_cases(root, VSD_LAYOUTS[self.edition.name], self.edition.name, self.require_labels)
        root = Path(root)
        if not root.is_dir():
            raise BrainbenchDataError(root, "data folder not found")
        cases = [self._read_case(folder, grade) for folder, grade in self._case_folders(root)]
        if not cases:
            raise BrainbenchDataError(
                root,
                f"no {self.edition.name} case folders found "
                f"(expected <case>/<case>{self._separator}{self.edition.modalities[0]}.nii.gz)",
            )
        return sorted(cases, key=lambda case: case.case_id)

    def scan(self, root: str | Path) -> tuple[list[Case], list[str]]:
        """Like :meth:`discover`, but a case folder that cannot be read becomes a problem line."""
        if self.edition.name in VSD_LAYOUTS or not Path(root).is_dir():
            return super().scan(root)
        cases, problems = [], []
        for folder, grade in self._case_folders(Path(root)):
            try:
                cases.append(self._read_case(folder, grade))
            except BrainbenchDataError as error:
                problems.append(str(error))
        if not cases and not problems:
            return super().scan(root)
        return sorted(cases, key=lambda case: case.case_id), problems

    def _case_folders(self, root: Path) -> list[tuple[Path, str | None]]:
        if self.edition.name in GRADED_EDITIONS and any((root / g).is_dir() for g in ("HGG", "LGG")):
            return [
                (folder, grade)
                for grade in ("HGG", "LGG")
                if (root / grade).is_dir()
                for folder in sorted((root / grade).iterdir())
                if folder.is_dir()
            ]
        return [
            (folder, None)
            for folder in sorted(root.iterdir())
            if folder.is_dir() and any(folder.glob(f"{folder.name}{self._separator}*.nii*"))
        ]

    @property
    def _separator(self) -> str:
        return NAME_SEPARATOR.get(self.edition.name, "_")

    def _read_case(self, folder: Path, grade: str | None) -> Case:
        case_id = folder.name
        sep = self._separator
        images = {modality: find_volume(folder, f"{case_id}{sep}{modality}", NIFTI_SUFFIXES) for modality in self.edition.modalities}
        for modality, path in images.items():
            if path is None:
                raise BrainbenchDataError(
                    folder / f"{case_id}{sep}{modality}.nii.gz", f"missing {modality} channel of case {case_id}"
                )
        label = find_volume(folder, f"{case_id}{sep}seg", NIFTI_SUFFIXES)
        if label is None and case_id in MISNAMED_MASKS:
            label = find_volume(folder, MISNAMED_MASKS[case_id], NIFTI_SUFFIXES)
        if label is None and self.require_labels:
            raise BrainbenchDataError(folder / f"{case_id}{sep}seg.nii.gz", f"missing label map of case {case_id}")
        meta = {"grade": grade} if grade else {}
        return Case(case_id=case_id, images=images, label=label, meta=meta)
