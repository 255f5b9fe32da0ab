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
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from brainbench.challenges.base import (Case, Edition, Layout, Synthetic, Unranked, collect, find_volume,
                                        read_channels, with_label)
from brainbench.errors import BrainbenchDataError

MRBRAINS_SPACING = (0.958, 0.958, 3.0)
MRBRAINS13_FILES = {"t1": "T1", "t1_ir": "T1_IR", "t2_flair": "T2_FLAIR", "t1_1mm": "T1_1mm"}
MRBRAINS13_SPLITS = {"TrainingData": "train", "TestData": "test"}
"""Split folder → case-id prefix (test ids restart at 1)."""
STRUCTURES_8 = {
    "cortical_gm": 1, "basal_ganglia": 2, "wm": 3, "wm_lesions": 4,
    "extracerebral_csf": 5, "ventricles": 6, "cerebellum": 7, "brainstem": 8,
}
STRUCTURE_NAMES = {
    1: "cortical grey matter", 2: "basal ganglia", 3: "white matter", 4: "white-matter lesions",
    5: "extracerebral CSF", 6: "ventricles", 7: "cerebellum", 8: "brain stem",
}
"""Names of the eight structures (MRBrainS13 ``LabelsForTraining`` §5, MRBrainS18 labels 1–8 §6; [V] S-28, S-33)."""
MRBRAINS13_LABELS = {0: "background", 1: "cerebrospinal fluid (CSF)", 2: "grey matter (GM)", 3: "white matter (WM)"}
"""MRBrainS13 ``LabelsForTesting`` (challenges.md §5, [V] S-29): CSF incl. ventricles, GM incl. basal ganglia,
WM incl. lesions; cerebellum and brainstem are background."""
MRBRAINS18_LABELS = {0: "background", **STRUCTURE_NAMES, 9: "infarction", 10: "other pathology"}
"""MRBrainS18 labels 0–10 (challenges.md §6, [V] S-33, S-30); 9 and 10 are masked out of evaluation."""
TISSUE_OF_STRUCTURE = {1: 2, 2: 2, 3: 3, 4: 3, 5: 1, 6: 1, 7: 0, 8: 0}
"""Official merge ``LabelsForTraining`` → ``LabelsForTesting`` (1+2→GM, 3+4→WM, 5+6→CSF; 7, 8 → 0)."""
MRBRAINS18_FILES = {"flair": "pre/FLAIR", "t1": "pre/reg_T1", "ir": "pre/reg_IR"}
MRBRAINS18_EXCLUDED = (9, 10)
"""Infarction and other pathology: masked out of every metric (spec §6)."""
TISSUE_SYNTH = "brainbench.data.synth.tissue"


@dataclass(frozen=True)
class NumberedCaseLayout(Layout):
    """``<root>[/<split folder>]/<n>/<channel file>`` with numeric case folders (MRBrainS).

    Attributes:
        files: channel → file stem below the case folder (the first one marks a case folder).
        label: label map stem (MRBrainS13 ``LabelsForTesting``; MRBrainS18 ``segm``).
        splits: split folder → case-id prefix; training releases read only the first split when labels
            are required. Case ids are ``<prefix>_<n>`` when ``prefix_ids``, else ``<n>``.
        extra_labels: meta key → stem of further label maps kept in ``Case.meta`` (MRBrainS13's
            8-structure ``LabelsForTraining``).
    """

    files: Mapping[str, str]
    label: str
    splits: Mapping[str, str]
    prefix_ids: bool
    extra_labels: Mapping[str, str] | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.files)

    @property
    def expected(self) -> str:
        return f"<n>/{next(iter(self.files.values()))}.nii"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        return collect([partial(self._read, folder, split, edition.modalities, require_labels)
                        for folder, split in self._case_folders(root, require_labels)])

    def _case_folders(self, root: Path, require_labels: bool) -> list[tuple[Path, str]]:
        splits = dict(list(self.splits.items())[:1]) if require_labels else self.splits
        parents = [(root / name, prefix) for name, prefix in splits.items() if (root / name).is_dir()]
        if not parents:
            parents = [(root, self.splits.get(root.name, root.name))]
        first = next(iter(self.files.values()))
        return [(folder, prefix) for parent, prefix in parents for folder in sorted(parent.iterdir())
                if re.fullmatch(r"\d+", folder.name) and find_volume(folder, first) is not None]

    def _read(self, folder: Path, split: str, modalities, require_labels: bool) -> Case:
        case_id = f"{split}_{folder.name}" if self.prefix_ids else folder.name
        extra = {key: find_volume(folder, stem) for key, stem in (self.extra_labels or {}).items()}
        return with_label(Case(
            case_id=case_id,
            images=read_channels(folder, self.files, modalities, case_id),
            label=find_volume(folder, self.label),
            meta={"folder": str(folder), "split": split, "release_id": folder.name,
                  **{key: str(path) for key, path in extra.items() if path}},
        ), require_labels)


EDITIONS: dict[str, Edition] = {edition.name: edition for edition in (
    Edition(
        name="mrbrains13", challenge="mrbrains", modalities=("t1", "t1_ir", "t2_flair"),
        label_values=tuple(MRBRAINS13_LABELS), label_names=MRBRAINS13_LABELS,
        regions={"CSF": (1,), "GM": (2,), "WM": (3,)}, protocol="mrbrains13", ranking="mrbrains13-rank-sum",
        layout=NumberedCaseLayout(MRBRAINS13_FILES, label="LabelsForTesting", splits=MRBRAINS13_SPLITS,
                                  prefix_ids=True, extra_labels={"labels_8": "LabelsForTraining"}),
        source="challenges.md §5 (official readme S-28/S-29; NIfTI archive tree S-34c)",
        synthetic=Synthetic(f"{TISSUE_SYNTH}.synthesize_mrbrains13", n_cases=12, spacing_mm=MRBRAINS_SPACING,
                            options={"n_test": 0}),
        reference_grid="t2_flair", spacing_mm=MRBRAINS_SPACING,
    ),
    Edition(
        name="mrbrains18", challenge="mrbrains", modalities=tuple(MRBRAINS18_FILES),
        label_values=tuple(MRBRAINS18_LABELS), label_names=MRBRAINS18_LABELS,
        regions={name: (value,) for name, value in STRUCTURES_8.items()},
        protocol="mrbrains18",
        ranking=Unranked("the spec found no verified MRBrainS18 ranking rule (§6); scores are reported unranked"),
        layout=NumberedCaseLayout(MRBRAINS18_FILES, label="segm", splits={"training": "training"},
                                  prefix_ids=False),
        source="challenges.md §6 (mrbrains18.isi.uu.nl/data S-33; evaluation.py S-30; loaders S-68)",
        synthetic=Synthetic(f"{TISSUE_SYNTH}.synthesize_mrbrains18", n_cases=12, spacing_mm=MRBRAINS_SPACING),
        spacing_mm=MRBRAINS_SPACING,
    ),
)}
