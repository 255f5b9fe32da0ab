"""NeoBrainS12 (MICCAI 2012, UMC Utrecht): neonatal brain-tissue segmentation, three image sets.

Each image set is its own edition, since results are ranked per set (../shared/specs/challenges.md §7,
[V] S-71): ``neobrains12_axial40`` (40 weeks, axial, 512×512×50 at 0.35×0.35×2 mm),
``neobrains12_coronal30`` (30 weeks, coronal, 384×384×50 at 0.34×0.34×2 mm) and ``neobrains12_coronal40``
(40 weeks, coronal; its parameters were not found, the 30-week coronal geometry is assumed for
synthetic data and no nominal spacing is declared). Channels T1 and T2.

Labels 1 cortical GM, 2 basal ganglia and thalami, 3 unmyelinated WM, 4 myelinated WM, 5 brainstem,
6 cerebellum, 7 ventricles, 8 extracerebral CSF ([V] class list; that these are the *values* in
``manualSegm`` is [I]). The merged classes are regions: ``WM`` = 3 + 4, ``CSF`` = 7 + 8.

The layout is **low-confidence** ([P] S-72, third-party loaders, possibly a user re-organisation); the
adapter accepts every variant the spec lists:

- training: ``<root>/{40wAxial,30wCoronal,40wCoronal}/<example>/{T1,T2,manualSegm}.nii.gz``, with T1/T2
  also accepted as ``T1_<anything>`` / ``T2_<anything>`` (``T2_1-1.nii.gz``, ``T1_1-2.nii.gz``);
  ``40wCoronal`` is inferred by analogy; ``<root>`` may also be the set folder itself;
- test: ``<root>/{scans_axial_40,scans_cor_30,scans_cor_40}/set<k>_<id>_{t1,t2}.nii.gz`` (no labels),
  case id ``set<k>_<id>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from brainbench.challenges.base import (Case, Edition, Layout, Synthetic, Unranked, collect, find_volume,
                                        read_channels, with_label)
from brainbench.errors import BrainbenchDataError
from brainbench.io import VOLUME_SUFFIXES, strip_nifti_suffix

NEO_LABELS = {
    "cortical_gm": 1, "basal_ganglia_thalami": 2, "unmyelinated_wm": 3, "myelinated_wm": 4,
    "brainstem": 5, "cerebellum": 6, "ventricles": 7, "extracerebral_csf": 8,
}
NEO_LABEL_NAMES = {
    0: "background", 1: "cortical grey matter", 2: "basal ganglia and thalami", 3: "unmyelinated white matter",
    4: "myelinated white matter", 5: "brainstem", 6: "cerebellum", 7: "ventricles", 8: "extracerebral CSF",
}
"""The tissue classes as the organisers name them (challenges.md §7, [V] S-71; values 1–8 in this order [I])."""
MODALITIES = ("t1", "t2")


@dataclass(frozen=True)
class ImageSet:
    """One NeoBrainS12 image set: age (weeks), voxel axes → RAS world axes (coronal: the slice axis
    is anterior–posterior), release shape and spacing (mm), folder names and test file prefix."""

    weeks: int
    axes: tuple[int, int, int]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    training_folder: str
    test_folder: str
    test_prefix: str


IMAGE_SETS = {
    "axial40": ImageSet(40, (0, 1, 2), (512, 512, 50), (0.35, 0.35, 2.0), "40wAxial", "scans_axial_40", "set1"),
    "coronal30": ImageSet(30, (0, 2, 1), (384, 384, 50), (0.34, 0.34, 2.0), "30wCoronal", "scans_cor_30", "set2"),
    "coronal40": ImageSet(40, (0, 2, 1), (384, 384, 50), (0.34, 0.34, 2.0), "40wCoronal", "scans_cor_40", "set3"),
}
DECLARED_SPACING = {"axial40": (0.35, 0.35, 2.0), "coronal30": (0.34, 0.34, 2.0), "coronal40": None}

@dataclass(frozen=True)
class NeoBrainSLayout(Layout):
    """One NeoBrainS12 image set: training examples ``<set folder>/<example>/{T1,T2,manualSegm}`` (T1/T2 also
    as ``T1_<anything>``) and/or test scans ``<test folder>/set<k>_<id>_{t1,t2}`` (no labels); ``root`` may
    be the set folder itself."""

    image_set: ImageSet
    channels: tuple[str, ...] = MODALITIES

    @property
    def expected(self) -> str:
        image_set = self.image_set
        return (f"{image_set.training_folder}/<example>/T1.nii.gz or "
                f"{image_set.test_folder}/{image_set.test_prefix}_<id>_t1.nii.gz")

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        image_set = self.image_set
        training = root if root.name == image_set.training_folder else root / image_set.training_folder
        test = root if root.name == image_set.test_folder else root / image_set.test_folder
        readers = []
        if training.is_dir():
            readers += [partial(self._training_case, f, edition.modalities, require_labels)
                        for f in sorted(training.iterdir()) if f.is_dir() and _variant(f, "T1")]
        if test.is_dir():
            pattern = re.compile(rf"({re.escape(image_set.test_prefix)}_.+)_t1")
            for path in sorted(test.iterdir()):
                match = pattern.fullmatch(strip_nifti_suffix(path.name))
                if match:
                    readers.append(partial(self._test_case, test, match.group(1), edition.modalities,
                                           require_labels))
        return collect(readers)

    def _training_case(self, folder: Path, modalities, require_labels: bool) -> Case:
        images = {}
        for modality in modalities:
            path = _variant(folder, modality.upper())
            if path is None:
                raise BrainbenchDataError(
                    folder / f"{modality.upper()}.nii.gz", f"missing {modality} channel of case {folder.name}"
                )
            images[modality] = path
        return with_label(Case(case_id=folder.name, images=images, label=find_volume(folder, "manualSegm"),
                               meta={"folder": str(folder), "weeks": self.image_set.weeks}), require_labels)

    def _test_case(self, folder: Path, case_id: str, modalities, require_labels: bool) -> Case:
        images = read_channels(folder, {m: f"{case_id}_{m}" for m in MODALITIES}, modalities, case_id)
        return with_label(Case(case_id=case_id, images=images,
                               meta={"folder": str(folder), "weeks": self.image_set.weeks}), require_labels)


EDITIONS: dict[str, Edition] = {
    f"neobrains12_{name}": Edition(
        name=f"neobrains12_{name}", challenge="neobrains", modalities=MODALITIES,
        label_values=tuple(NEO_LABEL_NAMES), label_names=NEO_LABEL_NAMES,
        regions={**{key: (value,) for key, value in NEO_LABELS.items()}, "WM": (3, 4), "CSF": (7, 8)},
        protocol="neobrains12",
        ranking=Unranked("the spec found no verified NeoBrainS12 ranking rule (§7); scores are reported unranked"),
        layout=NeoBrainSLayout(image_set),
        source="challenges.md §7 (neobrains12.isi.uu.nl S-70/S-71; loaders S-72)",
        synthetic=Synthetic("brainbench.data.synth.tissue.synthesize_neobrains12", n_cases=12, spacing_mm=1.0,
                            options={"sets": [name]}),
        spacing_mm=DECLARED_SPACING[name],
    )
    for name, image_set in IMAGE_SETS.items()
}


def _variant(folder: Path, token: str) -> Path | None:
    """``<token>.<suffix>``, else the first ``<token>_*.<suffix>`` in ``folder`` (e.g. ``T2_1-1.nii.gz``)."""
    exact = find_volume(folder, token)
    if exact is not None:
        return exact
    return next((p for p in sorted(folder.glob(f"{token}_*")) if p.name.lower().endswith(VOLUME_SUFFIXES)), None)
