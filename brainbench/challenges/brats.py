"""BraTS 2017–2021 (CBICA/Synapse NIfTI releases).

Layouts (../shared/specs/challenges.md §2.2):

- 2017–2019: ``<root>/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` with case prefixes
  ``Brats17_``, ``Brats18_``, ``BraTS19_``; the grade comes from the folder.
- 2020: flat ``<root>/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii(.gz)``.
  Known defect: case 355 ships its mask as ``W39_1998.09.19_Segm.nii``. Mirrors store ``.nii``.
- 2021: flat ``<root>/BraTS2021_NNNNN/BraTS2021_NNNNN_*.nii.gz``.

Labels 0, 1 (necrosis / non-enhancing core), 2 (oedema), 4 (enhancing); regions WT = {1, 2, 4},
TC = {1, 4}, ET = {4} (spec §2.4). Evaluated with the BraTS legacy protocol (spec §2.5).
"""

from __future__ import annotations

from pathlib import Path

from brainbench.challenges.base import Case, ChallengeAdapter, Edition
from brainbench.data.io import NIFTI_SUFFIXES
from brainbench.errors import BrainbenchDataError

MODALITIES = ("flair", "t1", "t1ce", "t2")
LEGACY_REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
MISNAMED_MASKS = {"BraTS20_Training_355": "W39_1998.09.19_Segm"}
"""Masks the official release ships under another name (spec §2.2)."""


def _legacy_edition(year: int) -> Edition:
    return Edition(
        name=f"brats{year}",
        challenge="brats",
        modalities=MODALITIES,
        label_values=(0, 1, 2, 4),
        regions=LEGACY_REGIONS,
        protocol="brats-legacy-2017-2021",
        source="challenges.md §2.2, §2.4, §2.5 (CBICA/Synapse releases; nnU-Net converters)",
    )


EDITIONS: dict[str, Edition] = {f"brats{year}": _legacy_edition(year) for year in range(2017, 2022)}
GRADED_EDITIONS = {"brats2017", "brats2018", "brats2019"}


class BratsAdapter(ChallengeAdapter):
    """Reads a BraTS 2017–2021 training or validation folder as released.

    Args:
        edition: one of ``brats2017`` … ``brats2021``.
        require_labels: training data must have a mask per case; validation releases have none.
    """

    def __init__(self, edition: str = "brats2020", require_labels: bool = True):
        if edition not in EDITIONS:
            raise BrainbenchDataError(edition, f"unknown BraTS edition; choose one of {sorted(EDITIONS)}")
        self.edition = EDITIONS[edition]
        self.require_labels = require_labels

    def discover(self, root: str | Path) -> list[Case]:
        root = Path(root)
        if not root.is_dir():
            raise BrainbenchDataError(root, "data folder not found")
        cases = [self._read_case(folder, grade) for folder, grade in self._case_folders(root)]
        if not cases:
            raise BrainbenchDataError(
                root, f"no {self.edition.name} case folders found (expected <case>/<case>_flair.nii.gz)"
            )
        return sorted(cases, key=lambda case: case.case_id)

    def _case_folders(self, root: Path) -> list[tuple[Path, str | None]]:
        if self.edition.name in GRADED_EDITIONS and any((root / g).is_dir() for g in ("HGG", "LGG")):
            return [
                (folder, grade)
                for grade in ("HGG", "LGG")
                if (root / grade).is_dir()
                for folder in sorted((root / grade).iterdir())
                if folder.is_dir()
            ]
        return [(folder, None) for folder in sorted(root.iterdir()) if folder.is_dir() and _has_images(folder)]

    def _read_case(self, folder: Path, grade: str | None) -> Case:
        case_id = folder.name
        images = {modality: _find_nifti(folder, f"{case_id}_{modality}") for modality in MODALITIES}
        for modality, path in images.items():
            if path is None:
                raise BrainbenchDataError(
                    folder / f"{case_id}_{modality}.nii.gz", f"missing {modality} channel of case {case_id}"
                )
        label = _find_nifti(folder, f"{case_id}_seg")
        if label is None and case_id in MISNAMED_MASKS:
            label = _find_nifti(folder, MISNAMED_MASKS[case_id])
        if label is None and self.require_labels:
            raise BrainbenchDataError(folder / f"{case_id}_seg.nii.gz", f"missing label map of case {case_id}")
        meta = {"grade": grade} if grade else {}
        return Case(case_id=case_id, images=images, label=label, meta=meta)


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _has_images(folder: Path) -> bool:
    return any(folder.glob(f"{folder.name}_*.nii*"))
