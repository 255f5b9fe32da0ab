"""MRBrainS13 and MRBrainS18 (UMC Utrecht): adult brain-tissue segmentation at 0.958×0.958×3 mm.

MRBrainS13 (../shared/specs/challenges.md §5, [V] official readme S-29 and NIfTI archive S-34c):
``<root>/{TrainingData,TestData}/<n>/{T1,T1_1mm,T1_IR,T2_FLAIR,LabelsForTraining,LabelsForTesting}.nii``
(or the ``.mhd`` copy with the same names). ``<root>`` may be the release folder (with labels required,
only ``TrainingData`` is read from it) or one split folder. Test ids restart at 1, so case ids carry
the split: ``train_1``, ``test_1``. The case label is
``LabelsForTesting``, the evaluation map and submission format (1 CSF, 2 GM, 3 WM; cerebellum and
brainstem are 0 and not evaluated); the 8-structure ``LabelsForTraining`` (1 cortical GM, 2 basal
ganglia, 3 WM, 4 WM lesions, 5 extracerebral CSF, 6 ventricles, 7 cerebellum, 8 brainstem) goes to
``meta["labels_8"]``. ``T1``, ``T1_IR`` and ``T2_FLAIR`` share the FLAIR grid; ``T1_1mm`` lies on its
own 1 mm grid and is read only when asked for (``modalities=[..., "t1_1mm"]``), to be resampled
onto the reference (``t2_flair``) grid.

MRBrainS18 (§6, layout [P] S-68): ``<root>/[training/]<id>/pre/{FLAIR,reg_T1,reg_IR}.nii.gz`` and
``<id>/segm.nii.gz``; training ids 1, 4, 5, 7, 14, 070, 148 — the zero-padded ``070`` is kept verbatim
and cases sort by number. Labels 0–10; 9 (infarction) and 10 (other) are masked out of evaluation
(:data:`MRBRAINS18_EXCLUDED`), so no region holds them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from brainbench.challenges.base import Case, ChallengeAdapter, Edition
from brainbench.challenges.base import find_volume
from brainbench.challenges.msseg import read_channels, select_channels
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

MRBRAINS_SPACING = (0.958, 0.958, 3.0)
MRBRAINS13_FILES = {"t1": "T1", "t1_ir": "T1_IR", "t2_flair": "T2_FLAIR", "t1_1mm": "T1_1mm"}
MRBRAINS13_SPLITS = {"TrainingData": "train", "TestData": "test"}
"""Split folder → case-id prefix (test ids restart at 1)."""
STRUCTURES_8 = {
    "cortical_gm": 1, "basal_ganglia": 2, "wm": 3, "wm_lesions": 4,
    "extracerebral_csf": 5, "ventricles": 6, "cerebellum": 7, "brainstem": 8,
}
TISSUE_OF_STRUCTURE = {1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: 0, 8: 0}
"""Official merge ``LabelsForTraining`` → ``LabelsForTesting`` (1+2→GM, 3+4→WM, 5+6→CSF; 7, 8 → 0)."""
MRBRAINS18_FILES = {"flair": "pre/FLAIR", "t1": "pre/reg_T1", "ir": "pre/reg_IR"}
MRBRAINS18_EXCLUDED = (9, 10)
"""Infarction and other pathology: masked out of every metric (spec §6)."""

EDITIONS: dict[str, Edition] = {
    "mrbrains13": Edition(
        name="mrbrains13", challenge="mrbrains", modalities=("t1", "t1_ir", "t2_flair"), label_values=(0, 1, 2, 3),
        regions={"CSF": (1,), "GM": (2,), "WM": (3,)}, protocol="mrbrains13",
        source="challenges.md §5 (official readme S-28/S-29; NIfTI archive tree S-34c)",
        reference_grid="t2_flair", spacing_mm=MRBRAINS_SPACING,
    ),
    "mrbrains18": Edition(
        name="mrbrains18", challenge="mrbrains", modalities=tuple(MRBRAINS18_FILES),
        label_values=tuple(range(11)), regions={name: (value,) for name, value in STRUCTURES_8.items()},
        protocol="mrbrains18",
        source="challenges.md §6 (mrbrains18.isi.uu.nl/data S-33; evaluation.py S-30; loaders S-68)",
        spacing_mm=MRBRAINS_SPACING,
    ),
}


class MrBrainSAdapter(ChallengeAdapter):
    """Reads MRBrainS13 (training and test splits) or the MRBrainS18 training release.

    Args:
        edition: ``mrbrains13`` or ``mrbrains18``.
        modalities: channels to read, a subset of the release's (MRBrainS13 adds ``t1_1mm``).
        require_labels: training needs a label per case; the MRBrainS13 test split has none.
    """

    def __init__(self, edition: str = "mrbrains13", modalities: Sequence[str] | None = None,
                 require_labels: bool = True):
        if edition not in EDITIONS:
            raise BrainbenchConfigError(f"unknown MRBrainS edition '{edition}'; choose one of {sorted(EDITIONS)}")
        self.files = MRBRAINS13_FILES if edition == "mrbrains13" else MRBRAINS18_FILES
        self.edition = select_channels(EDITIONS[edition], modalities, tuple(self.files))
        self.require_labels = require_labels

    def discover(self, root: str | Path) -> list[Case]:
        root = Path(root)
        if not root.is_dir():
            raise BrainbenchDataError(root, "data folder not found")
        reader = self._read13 if self.edition.name == "mrbrains13" else self._read18
        cases = [reader(folder, split) for folder, split in self._case_folders(root)]
        if not cases:
            stem = next(iter(self.files.values()))
            raise BrainbenchDataError(root, f"no {self.edition.name} cases found (expected <id>/{stem}.nii)")
        for case in cases:
            if case.label is None and self.require_labels:
                raise BrainbenchDataError(case.meta["folder"], f"missing label map of case {case.case_id}")
        return sorted(cases, key=lambda c: (c.meta["split"], int(c.meta["release_id"]), c.meta["release_id"]))

    def _case_folders(self, root: Path) -> list[tuple[Path, str]]:
        splits = {"training": "training"} if self.edition.name == "mrbrains18" else (
            {"TrainingData": "train"} if self.require_labels else MRBRAINS13_SPLITS)
        parents = [(root / name, prefix) for name, prefix in splits.items() if (root / name).is_dir()]
        if not parents:
            parents = [(root, MRBRAINS13_SPLITS.get(root.name, root.name))]
        first = next(iter(self.files.values()))
        return [
            (folder, prefix)
            for parent, prefix in parents
            for folder in sorted(parent.iterdir())
            if re.fullmatch(r"\d+", folder.name) and find_volume(folder, first) is not None
        ]

    def _read13(self, folder: Path, split: str) -> Case:
        case_id = f"{split}_{folder.name}"
        labels_8 = find_volume(folder, "LabelsForTraining")
        return Case(
            case_id=case_id,
            images=read_channels(folder, self.files, self.edition.modalities, case_id),
            label=find_volume(folder, "LabelsForTesting"),
            meta={"folder": str(folder), "split": split, "release_id": folder.name,
                  **({"labels_8": str(labels_8)} if labels_8 else {})},
        )

    def _read18(self, folder: Path, split: str) -> Case:
        return Case(
            case_id=folder.name,
            images=read_channels(folder, self.files, self.edition.modalities, folder.name),
            label=find_volume(folder, "segm"),
            meta={"folder": str(folder), "split": split, "release_id": folder.name},
        )
