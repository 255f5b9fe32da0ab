"""ISLES (Ischemic Stroke Lesion Segmentation) 2015 SISS/SPES, 2016, 2017 and 2022, each declared as data.

Layouts (../shared/specs/challenges.md §3.1–§3.2; tags there):

- 2015 SISS: ``<root>/<n>/VSD.Brain.XX.O.MR_{DWI,Flair,T1,T2}.<id>/<same>.nii`` and
  ``VSD.Brain.XX.O.OT.<id>/<same>.nii``, uncompressed ``.nii`` [V]; binary labels; 1 mm³ [V]. Copies
  nesting an extra level (``SISS2015_Training/SISS2015/Training/<n>``) [P] are read as well, as are
  ``.nii.gz``/``.mha`` objects (:mod:`brainbench.challenges.vsd`).
- 2015 SPES: seven channels ``MR_{CBF,CBV,DWI,T1c,T2,Tmax,TTP}``, 2 mm³ [V]; labels {0, 1, 2} [P].
  Evaluation is on the penumbra label only [V], and that the penumbra is value 2 is [R] (unverified).
- 2016, 2017: perfusion maps ``MR_{ADC,MTT,rCBF,rCBV,Tmax,TTP}`` and a binary final-infarct ``OT`` [P];
  the 4-D ``MR_4DPWI`` object is ignored (optional). 2017 case folders are ``training_<n>`` with
  ids 3, 17, 25, 29, 34 missing [V]; 2016 folder names are unverified, so any case-folder name is
  accepted. Grids vary from case to case (e.g. 192×192×19, 256×256×24): no nominal spacing.
- 2022 (BIDS): ``<root>/sub-strokecaseNNNN/ses-0001/anat/<sub>_<ses>_FLAIR.nii.gz`` and
  ``dwi/<sub>_<ses>_{dwi,adc}.nii.gz``; mask ``<root>/derivatives/<sub>/<ses>/<sub>_<ses>_msk.nii.gz``
  [V]. Variants accepted because the organiser's early README and the repository copy show them [P]:
  subjects under ``rawdata/`` (or ``_rawdata/``), files directly in ``ses-*`` without ``anat``/``dwi``,
  and a lower-case ``_flair``. FLAIR comes on its own, finer in-plane grid; DWI (2 mm, ~112×112×72)
  is the reference grid, on which the mask lies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from brainbench.challenges.base import Case, Edition, Layout, Synthetic, collect
from brainbench.challenges.vsd import VsdLayout
from brainbench.errors import BrainbenchDataError

LESION = {"lesion": (1,)}
SISS_LABELS = {0: "background", 1: "sub-acute stroke lesion"}
"""ISLES 2015 SISS: binary sub-acute lesion masks (challenges.md §3.1, [V] S-45)."""
SPES_LABELS = {0: "background", 1: "core (unverified)", 2: "penumbra"}
"""ISLES 2015 SPES (challenges.md §3.1): values {0, 1, 2} [P] S-46, only the penumbra evaluated [V] S-47; that
2 is the penumbra is [R] and that 1 is the infarct core an inference [I] (the rest of the perfusion lesion)."""
OUTCOME_LABELS = {0: "background", 1: "final infarct"}
"""ISLES 2016 and 2017: binary final infarct traced on the follow-up scan (challenges.md §3.1, [V] S-48)."""
ISLES2022_LABELS = {0: "background", 1: "infarct"}
"""ISLES 2022: binary acute/sub-acute infarct mask (challenges.md §3.1, [V] S-20)."""
SISS_CHANNELS = {"dwi": "MR_DWI", "flair": "MR_Flair", "t1": "MR_T1", "t2": "MR_T2"}
SPES_CHANNELS = {
    "cbf": "MR_CBF",
    "cbv": "MR_CBV",
    "dwi": "MR_DWI",
    "t1c": "MR_T1c",
    "t2": "MR_T2",
    "tmax": "MR_Tmax",
    "ttp": "MR_TTP",
}
PERFUSION_CHANNELS = {
    "adc": "MR_ADC",
    "mtt": "MR_MTT",
    "rcbf": "MR_rCBF",
    "rcbv": "MR_rCBV",
    "tmax": "MR_Tmax",
    "ttp": "MR_TTP",
}
ISLES2017_MISSING_IDS = (3, 17, 25, 29, 34)
"""Training ids absent from the ISLES 2017 release (``training_1`` … ``training_48``)."""
BIDS_CHANNELS = ("dwi", "adc", "flair")
RAWDATA_FOLDERS = ("", "rawdata", "_rawdata")
"""Where the BIDS subjects may sit below the ISLES 2022 root."""
SYNTHESIZE = "brainbench.data.synth.isles.synthesize_isles"


@dataclass(frozen=True)
class BidsLayout(Layout):
    """ISLES 2022: ``[rawdata/]sub-*/ses-*/**/<sub>_<ses>_<channel>.nii.gz`` (channel matched without
    regard to case) and ``derivatives/<sub>/<ses>/<sub>_<ses>_msk.nii.gz``."""

    channels: tuple[str, ...] = BIDS_CHANNELS
    expected: str = "[rawdata/]sub-strokecaseNNNN/ses-NNNN/ and derivatives/<sub>/<ses>/<sub>_<ses>_msk.nii.gz"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        sessions = [session for folder in RAWDATA_FOLDERS if (root / folder).is_dir()
                    for subject in sorted((root / folder).glob("sub-*")) if subject.is_dir()
                    for session in sorted(subject.glob("ses-*")) if session.is_dir()]
        return collect([partial(self._read_session, root, s, edition.modalities, require_labels) for s in sessions])

    def _read_session(self, root: Path, session: Path, modalities, require_labels: bool) -> Case:
        subject = session.parent.name
        stem = f"{subject}_{session.name}"
        found: dict[str, list[Path]] = {}
        pattern = re.compile(rf"^{re.escape(stem)}_({'|'.join(self.channels)})\.nii(\.gz)?$", re.IGNORECASE)
        for path in sorted(session.rglob(f"{stem}_*")):
            match = pattern.match(path.name)
            if match and path.is_file():
                found.setdefault(match[1].lower(), []).append(path)
        images = {}
        for channel in modalities:
            paths = found.get(channel, [])
            if len(paths) != 1:
                shown = "none" if not paths else ", ".join(str(p.relative_to(session)) for p in paths)
                raise BrainbenchDataError(
                    session, f"expected one {stem}_{channel}.nii.gz of case {subject}, found {shown}"
                )
            images[channel] = paths[0]
        masks = sorted((root / "derivatives" / subject / session.name).rglob(f"{stem}_msk.nii*"))
        if not masks and require_labels:
            raise BrainbenchDataError(
                root / "derivatives" / subject / session.name / f"{stem}_msk.nii.gz", f"missing mask of case {subject}"
            )
        case_id = subject if session.name == "ses-0001" else stem
        return Case(case_id=case_id, images=images, label=masks[0] if masks else None, meta={"session": session.name})


def _edition(name: str, layout: Layout, labels: Mapping[int, str], regions, protocol: str, ranking: str,
             spacing_mm: float | None, **kw) -> Edition:
    return Edition(
        name=name, challenge="isles", modalities=layout.channels, label_values=tuple(labels), label_names=labels,
        regions=regions,
        protocol=protocol, ranking=ranking, layout=layout,
        source="challenges.md §3.1–§3.4, §8 (ISLES pages and README; public loaders)",
        synthetic=Synthetic(SYNTHESIZE, n_cases=12, spacing_mm=2.0, options={"edition": name}),
        spacing_mm=(spacing_mm,) * 3 if spacing_mm else None, **kw,
    )


EDITIONS: dict[str, Edition] = {edition.name: edition for edition in (
    _edition("isles2015_siss", VsdLayout(SISS_CHANNELS, truth_object="Brain"), SISS_LABELS, LESION,
             "isles-2015-2017", "isles-mean-rank", 1.0),
    _edition("isles2015_spes", VsdLayout(SPES_CHANNELS, truth_object="Brain"), SPES_LABELS, {"penumbra": (2,)},
             "isles-2015-2017", "isles-mean-rank", 2.0),
    _edition("isles2016", VsdLayout(PERFUSION_CHANNELS, truth_object="Brain"), OUTCOME_LABELS, LESION,
             "isles-2015-2017", "isles-mean-rank", None),
    _edition("isles2017", VsdLayout(PERFUSION_CHANNELS, truth_object="Brain"), OUTCOME_LABELS, LESION,
             "isles-2015-2017", "isles-mean-rank", None),
    _edition("isles2022", BidsLayout(), ISLES2022_LABELS, LESION, "isles-2022", "isles2022-mean-rank", 2.0,
             reference_grid="dwi"),
)}
