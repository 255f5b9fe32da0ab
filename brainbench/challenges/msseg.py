"""Multiple-sclerosis lesion challenges: MSSEG 2016, ISBI 2015 longitudinal, MICCAI 2008.

Layouts (../shared/specs/challenges.md §4; all [P]: file names seen in third-party loaders):

- MSSEG 2016 original release: ``<root>/Center_NN/Patient_NN/Preprocessed_Data/
  {FLAIR,T1,GADO,DP,T2}_preprocessed.nii.gz`` and ``Masks/{Consensus,ManualSegmentation_1..7}.nii.gz``;
  ``<root>`` is the ``Training`` (or ``Testing``) folder. Case id ``Center_NN_Patient_NN``.
- MSSEG 2016 flat re-release (all 53 cases with masks): ``<root>/01016SACH/{3DFLAIR,3DT1,3DT1GADO,DP,T2}.nii``,
  ``Consensus.nii``, ``ManualSegmentation_1..7.nii``. Case id = folder name. Either suffix is accepted
  in both layouts. The label is the consensus; the 7 rater masks go to ``Case.meta["raters"]``.
- ISBI 2015: ``<root>/[training/]trainingNN/preprocessed/trainingNN_TT_{flair,mprage,pd,t2}_pp.nii`` with
  ``masks/trainingNN_TT_mask{1,2}.nii``; one case per time point (``trainingNN_TT``); label = rater 1,
  both raters in ``meta["raters"]``. Test subjects (``testNN``, no masks) are read the same way.
- MICCAI 2008: NRRD with detached headers (``.nhdr`` + ``.raw``):
  ``<root>/{CHB,UNC}_train_PartN/<case>/<case>_{FLAIR,T1,T2,lesion}.nhdr``; the UNC cases' second rater
  (CHB) in ``<root>/UNC_train_lesion_byCHB/<case>/<case>_lesion_byCHB.nhdr``. Case id = ``<case>``;
  label = the case's own ``_lesion`` mask, raters = [it, ``_byCHB``] where present.

Labels are binary (0/1, region ``lesion``). Not every copy carries every channel (e.g. a FLAIR/T1/
T1-Gd/T2 set without PD): pass ``modalities`` to read a subset; the adapter's edition then lists
that subset, so models and caches see exactly the channels read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from brainbench.challenges.base import Case, ChallengeAdapter, Edition, find_volume
from brainbench.data.io import VOLUME_SUFFIXES
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

LESION = {"lesion": (1,)}

MSSEG_PREPROCESSED = {m: f"{m.upper()}_preprocessed" for m in ("flair", "t1", "gado", "dp", "t2")}
"""Channel → file stem in ``Preprocessed_Data/`` of the original MSSEG 2016 release."""
MSSEG_FLAT = {"flair": "3DFLAIR", "t1": "3DT1", "gado": "3DT1GADO", "dp": "DP", "t2": "T2"}
"""Channel → file stem in a patient folder of the flat re-release."""
MSSEG_RATERS = 7
ISBI_RATERS = 2
MICCAI2008_FILES = {"flair": "FLAIR", "t1": "T1", "t2": "T2"}
MICCAI2008_SECOND_RATER = "UNC_train_lesion_byCHB"

EDITIONS: dict[str, Edition] = {
    "msseg2016": Edition(
        name="msseg2016", challenge="msseg", modalities=tuple(MSSEG_PREPROCESSED), label_values=(0, 1),
        regions=LESION, protocol="msseg-2016",
        source="challenges.md §4.3 (MSSEG 2016 loaders S-25; flat re-release S-65)",
    ),
    "isbi2015": Edition(
        name="isbi2015", challenge="msseg", modalities=("flair", "mprage", "pd", "t2"), label_values=(0, 1),
        regions=LESION, protocol="isbi-2015",
        source="challenges.md §4.2 (loaders S-61; nnU-Net Task035 converter S-62)", spacing_mm=(1.0, 1.0, 1.0),
    ),
    "miccai2008": Edition(
        name="miccai2008", challenge="msseg", modalities=tuple(MICCAI2008_FILES), label_values=(0, 1),
        regions=LESION, protocol="miccai-2008",
        source="challenges.md §4.1 (openmedlab dataset card S-56)", spacing_mm=(0.5, 0.5, 0.5),
    ),
}


def select_channels(edition: Edition, modalities: Sequence[str] | None, available: Sequence[str]) -> Edition:
    """``edition`` reading ``modalities`` (a subset of ``available``, in the given order) instead of its default.

    The reference grid stays the declared one when it is read, else becomes the first channel read.
    """
    if modalities is None:
        return edition
    chosen = tuple(modalities)
    unknown = [m for m in chosen if m not in available]
    if not chosen or unknown or len(set(chosen)) != len(chosen):
        raise BrainbenchConfigError(
            f"modalities of {edition.name} must be distinct names among {list(available)}, got {list(chosen)}"
        )
    reference = edition.reference_grid
    if reference is not None and reference not in chosen:
        reference = chosen[0]
    return replace(edition, modalities=chosen, reference_grid=reference)


def read_channels(folder: Path, stems: Mapping[str, str], modalities: Sequence[str], case_id: str) -> dict[str, Path]:
    """Path of each channel ``stems[m]`` in ``folder``; raises naming the first missing file."""
    images = {}
    for modality in modalities:
        path = find_volume(folder, stems[modality])
        if path is None:
            raise BrainbenchDataError(
                folder / f"{stems[modality]}{VOLUME_SUFFIXES[0]}", f"missing {modality} channel of case {case_id}"
            )
        images[modality] = path
    return images


class _LesionAdapter(ChallengeAdapter):
    """Shared construction: edition lookup, channel subset, label requirement.

    Args:
        edition: the edition to read; each subclass reads one (its :attr:`default`).
        modalities: channels to read, a subset of the edition's, in the order models receive them.
        require_labels: training needs a label per case; test releases have none.
    """

    default: str = ""

    def __init__(self, edition: str | None = None, modalities: Sequence[str] | None = None,
                 require_labels: bool = True):
        edition = edition or self.default
        if edition != self.default:
            raise BrainbenchConfigError(f"{type(self).__name__} reads '{self.default}', not '{edition}'")
        self.edition = select_channels(EDITIONS[edition], modalities, EDITIONS[edition].modalities)
        self.require_labels = require_labels

    def _root(self, root: str | Path) -> Path:
        root = Path(root)
        if not root.is_dir():
            raise BrainbenchDataError(root, "data folder not found")
        return root

    def _finish(self, cases: list[Case], root: Path, expected: str) -> list[Case]:
        if not cases:
            raise BrainbenchDataError(root, f"no {self.edition.name} cases found (expected {expected})")
        for case in cases:
            if case.label is None and self.require_labels:
                raise BrainbenchDataError(case.meta["folder"], f"missing label map of case {case.case_id}")
        return sorted(cases, key=lambda case: case.case_id)


class MssegAdapter(_LesionAdapter):
    """MSSEG 2016, original ``Center_NN/Patient_NN`` release or the flat re-release (detected per folder)."""

    default = "msseg2016"

    def discover(self, root: str | Path) -> list[Case]:
        root = self._root(root)
        cases = []
        for center in sorted(root.glob("Center_*")):
            for patient in sorted(center.glob("Patient_*")):
                if (patient / "Preprocessed_Data").is_dir():
                    cases.append(self._read(patient, f"{center.name}_{patient.name}", patient / "Preprocessed_Data",
                                            MSSEG_PREPROCESSED, patient / "Masks", center=center.name[-2:]))
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and find_volume(folder, MSSEG_FLAT["flair"]) is not None:
                cases.append(self._read(folder, folder.name, folder, MSSEG_FLAT, folder, center=folder.name[:2]))
        return self._finish(cases, root, "Center_NN/Patient_NN/Preprocessed_Data/ or <patient>/3DFLAIR.nii")

    def _read(self, folder: Path, case_id: str, images: Path, stems: Mapping[str, str], masks: Path,
              center: str) -> Case:
        raters = [find_volume(masks, f"ManualSegmentation_{k}") for k in range(1, MSSEG_RATERS + 1)]
        return Case(
            case_id=case_id,
            images=read_channels(images, stems, self.edition.modalities, case_id),
            label=find_volume(masks, "Consensus"),
            meta={"folder": str(folder), "center": center, "raters": [str(r) for r in raters if r is not None]},
        )


class IsbiAdapter(_LesionAdapter):
    """ISBI 2015 longitudinal MS: one case per subject and time point."""

    default = "isbi2015"

    def discover(self, root: str | Path) -> list[Case]:
        root = self._root(root)
        subjects = [
            folder
            for parent in (root, root / "training", root / "testdata_website")
            if parent.is_dir()
            for folder in sorted(parent.iterdir())
            if re.fullmatch(r"(training|test)\d+", folder.name) and (folder / "preprocessed").is_dir()
        ]
        cases = []
        for subject in subjects:
            pattern = re.compile(rf"({re.escape(subject.name)}_\d+)_flair_pp\.nii(\.gz)?")
            for flair in sorted((subject / "preprocessed").iterdir()):
                match = pattern.fullmatch(flair.name)
                if match:
                    cases.append(self._read(subject, match.group(1)))
        return self._finish(cases, root, "training/trainingNN/preprocessed/trainingNN_TT_flair_pp.nii")

    def _read(self, subject: Path, case_id: str) -> Case:
        stems = {m: f"{case_id}_{m}_pp" for m in EDITIONS["isbi2015"].modalities}
        raters = [find_volume(subject / "masks", f"{case_id}_mask{k}") for k in range(1, ISBI_RATERS + 1)]
        return Case(
            case_id=case_id,
            images=read_channels(subject / "preprocessed", stems, self.edition.modalities, case_id),
            label=raters[0],
            meta={"folder": str(subject), "subject": subject.name, "timepoint": int(case_id.rsplit("_", 1)[1]),
                  "raters": [str(r) for r in raters if r is not None]},
        )


class Miccai2008Adapter(_LesionAdapter):
    """MICCAI 2008 MS lesion challenge (CHB and UNC cases, NRRD with detached headers)."""

    default = "miccai2008"

    def discover(self, root: str | Path) -> list[Case]:
        root = self._root(root)
        folders = [
            folder
            for part in sorted(root.iterdir())
            if part.is_dir() and part.name != MICCAI2008_SECOND_RATER
            for folder in sorted(part.iterdir())
            if re.fullmatch(r"(CHB|UNC)_\w+_Case\d+", folder.name) and folder.is_dir()
        ]
        cases = [self._read(folder, root / MICCAI2008_SECOND_RATER / folder.name) for folder in folders]
        return self._finish(cases, root, "{CHB,UNC}_train_Part1/<case>/<case>_FLAIR.nhdr")

    def _read(self, folder: Path, second: Path) -> Case:
        case_id = folder.name
        stems = {m: f"{case_id}_{token}" for m, token in MICCAI2008_FILES.items()}
        raters = [find_volume(folder, f"{case_id}_lesion"), find_volume(second, f"{case_id}_lesion_byCHB")]
        return Case(
            case_id=case_id,
            images=read_channels(folder, stems, self.edition.modalities, case_id),
            label=raters[0],
            meta={"folder": str(folder), "site": case_id.split("_", 1)[0],
                  "raters": [str(r) for r in raters if r is not None]},
        )


ADAPTERS: dict[str, type[_LesionAdapter]] = {cls.default: cls for cls in (MssegAdapter, IsbiAdapter, Miccai2008Adapter)}
