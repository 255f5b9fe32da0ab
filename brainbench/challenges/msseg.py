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
that subset, so models and caches see exactly the channels read. None of the three has a verified
ranking rule beyond MSSEG 2016's separate segmentation/detection scores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from brainbench.challenges.base import (Case, Edition, Layout, Synthetic, Unranked, collect, find_volume,
                                        read_channels, with_label)
from brainbench.errors import BrainbenchDataError

LESION = {"lesion": (1,)}
MS_LABELS = {0: "background", 1: "MS lesion"}
"""Binary white-matter lesion masks of all three challenges (challenges.md §4.1–§4.3)."""

MSSEG_PREPROCESSED = {m: f"{m.upper()}_preprocessed" for m in ("flair", "t1", "gado", "dp", "t2")}
"""Channel → file stem in ``Preprocessed_Data/`` of the original MSSEG 2016 release."""
MSSEG_FLAT = {"flair": "3DFLAIR", "t1": "3DT1", "gado": "3DT1GADO", "dp": "DP", "t2": "T2"}
"""Channel → file stem in a patient folder of the flat re-release."""
MSSEG_RATERS = 7
ISBI_CHANNELS = ("flair", "mprage", "pd", "t2")
ISBI_RATERS = 2
MICCAI2008_FILES = {"flair": "FLAIR", "t1": "T1", "t2": "T2"}
MICCAI2008_SECOND_RATER = "UNC_train_lesion_byCHB"
MS_SYNTH = "brainbench.data.synth.ms"


@dataclass(frozen=True)
class MssegLayout(Layout):
    """MSSEG 2016, original ``Center_NN/Patient_NN`` release or the flat re-release (detected per folder)."""

    channels: tuple[str, ...] = tuple(MSSEG_PREPROCESSED)
    expected: str = "Center_NN/Patient_NN/Preprocessed_Data/ or <patient>/3DFLAIR.nii"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        readers = [partial(self._read, patient, f"{center.name}_{patient.name}", patient / "Preprocessed_Data",
                           MSSEG_PREPROCESSED, patient / "Masks", center.name[-2:], edition.modalities, require_labels)
                   for center in sorted(root.glob("Center_*")) for patient in sorted(center.glob("Patient_*"))
                   if (patient / "Preprocessed_Data").is_dir()]
        readers += [partial(self._read, folder, folder.name, folder, MSSEG_FLAT, folder, folder.name[:2],
                            edition.modalities, require_labels)
                    for folder in sorted(root.iterdir())
                    if folder.is_dir() and find_volume(folder, MSSEG_FLAT["flair"]) is not None]
        return collect(readers)

    def _read(self, folder: Path, case_id: str, images: Path, stems: Mapping[str, str], masks: Path, center: str,
              modalities: Sequence[str], require_labels: bool) -> Case:
        raters = [find_volume(masks, f"ManualSegmentation_{k}") for k in range(1, MSSEG_RATERS + 1)]
        return with_label(Case(
            case_id=case_id,
            images=read_channels(images, stems, modalities, case_id),
            label=find_volume(masks, "Consensus"),
            meta={"folder": str(folder), "center": center, "raters": [str(r) for r in raters if r is not None]},
        ), require_labels)


@dataclass(frozen=True)
class IsbiLayout(Layout):
    """ISBI 2015 longitudinal MS: one case per subject and time point."""

    channels: tuple[str, ...] = ISBI_CHANNELS
    expected: str = "training/trainingNN/preprocessed/trainingNN_TT_flair_pp.nii"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        subjects = [folder for parent in (root, root / "training", root / "testdata_website") if parent.is_dir()
                    for folder in sorted(parent.iterdir())
                    if re.fullmatch(r"(training|test)\d+", folder.name) and (folder / "preprocessed").is_dir()]
        readers = []
        for subject in subjects:
            pattern = re.compile(rf"({re.escape(subject.name)}_\d+)_flair_pp\.nii(\.gz)?")
            for flair in sorted((subject / "preprocessed").iterdir()):
                match = pattern.fullmatch(flair.name)
                if match:
                    readers.append(partial(self._read, subject, match.group(1), edition.modalities, require_labels))
        return collect(readers)

    def _read(self, subject: Path, case_id: str, modalities: Sequence[str], require_labels: bool) -> Case:
        stems = {m: f"{case_id}_{m}_pp" for m in self.channels}
        raters = [find_volume(subject / "masks", f"{case_id}_mask{k}") for k in range(1, ISBI_RATERS + 1)]
        return with_label(Case(
            case_id=case_id,
            images=read_channels(subject / "preprocessed", stems, modalities, case_id),
            label=raters[0],
            meta={"folder": str(subject), "subject": subject.name, "timepoint": int(case_id.rsplit("_", 1)[1]),
                  "raters": [str(r) for r in raters if r is not None]},
        ), require_labels)


@dataclass(frozen=True)
class Miccai2008Layout(Layout):
    """MICCAI 2008 MS lesion challenge (CHB and UNC cases, NRRD with detached headers)."""

    channels: tuple[str, ...] = tuple(MICCAI2008_FILES)
    expected: str = "{CHB,UNC}_train_Part1/<case>/<case>_FLAIR.nhdr"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        folders = [folder for part in sorted(root.iterdir()) if part.is_dir() and part.name != MICCAI2008_SECOND_RATER
                   for folder in sorted(part.iterdir())
                   if re.fullmatch(r"(CHB|UNC)_\w+_Case\d+", folder.name) and folder.is_dir()]
        return collect([partial(self._read, folder, root / MICCAI2008_SECOND_RATER / folder.name, edition.modalities,
                                require_labels) for folder in folders])

    def _read(self, folder: Path, second: Path, modalities: Sequence[str], require_labels: bool) -> Case:
        case_id = folder.name
        stems = {m: f"{case_id}_{token}" for m, token in MICCAI2008_FILES.items()}
        raters = [find_volume(folder, f"{case_id}_lesion"), find_volume(second, f"{case_id}_lesion_byCHB")]
        return with_label(Case(
            case_id=case_id,
            images=read_channels(folder, stems, modalities, case_id),
            label=raters[0],
            meta={"folder": str(folder), "site": case_id.split("_", 1)[0],
                  "raters": [str(r) for r in raters if r is not None]},
        ), require_labels)


_NO_VERIFIED_RULE = ("the spec found no verified ranking rule for this challenge ({}); scores are reported "
                     "per metric, unranked")

EDITIONS: dict[str, Edition] = {edition.name: edition for edition in (
    Edition(
        name="msseg2016", challenge="msseg", modalities=MssegLayout.channels, label_values=tuple(MS_LABELS),
        label_names=MS_LABELS, regions=LESION,
        protocol="msseg-2016", ranking="msseg-separate", layout=MssegLayout(),
        source="challenges.md §4.3 (MSSEG 2016 loaders S-25; flat re-release S-65)",
        synthetic=Synthetic(f"{MS_SYNTH}.synthesize_msseg2016", n_cases=12, spacing_mm=2.0,
                            options={"layout": "original"}),
    ),
    Edition(
        name="isbi2015", challenge="msseg", modalities=ISBI_CHANNELS, label_values=tuple(MS_LABELS),
        label_names=MS_LABELS, regions=LESION,
        protocol="isbi-2015", ranking=Unranked(_NO_VERIFIED_RULE.format("ISBI 2015's score formula, §4.2")),
        layout=IsbiLayout(), source="challenges.md §4.2 (loaders S-61; nnU-Net Task035 converter S-62)",
        synthetic=Synthetic(f"{MS_SYNTH}.synthesize_isbi2015", n_cases=4, spacing_mm=2.0,
                            options={"n_timepoints": 3}),
        spacing_mm=(1.0, 1.0, 1.0),
    ),
    Edition(
        name="miccai2008", challenge="msseg", modalities=tuple(MICCAI2008_FILES), label_values=tuple(MS_LABELS),
        label_names=MS_LABELS, regions=LESION, protocol="miccai-2008",
        ranking=Unranked(_NO_VERIFIED_RULE.format("the inter-rater-normalised score of §4.1 is [R]")),
        layout=Miccai2008Layout(), source="challenges.md §4.1 (openmedlab dataset card S-56)",
        synthetic=Synthetic(f"{MS_SYNTH}.synthesize_miccai2008", n_cases=12, spacing_mm=2.0),
        spacing_mm=(0.5, 0.5, 0.5),
    ),
)}
