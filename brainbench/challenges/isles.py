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
from pathlib import Path

from brainbench.challenges.base import Case, ChallengeAdapter, Edition
from brainbench.challenges.vsd import VsdLayout, read_vsd_cases
from brainbench.errors import BrainbenchDataError

LESION = {"lesion": (1,)}
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


def _edition(name: str, channels: tuple[str, ...], labels: tuple[int, ...], regions, protocol: str, **kw) -> Edition:
    return Edition(
        name=name,
        challenge="isles",
        modalities=channels,
        label_values=labels,
        regions=regions,
        protocol=protocol,
        source="challenges.md §3.1–§3.3, §8 (ISLES pages and README; public loaders)",
        **kw,
    )


EDITIONS: dict[str, Edition] = {
    "isles2015_siss": _edition(
        "isles2015_siss", tuple(SISS_CHANNELS), (0, 1), LESION, "isles-2015-2017", spacing_mm=(1.0, 1.0, 1.0)
    ),
    "isles2015_spes": _edition(
        "isles2015_spes",
        tuple(SPES_CHANNELS),
        (0, 1, 2),
        {"penumbra": (2,)},
        "isles-2015-2017",
        spacing_mm=(2.0, 2.0, 2.0),
    ),
    "isles2016": _edition("isles2016", tuple(PERFUSION_CHANNELS), (0, 1), LESION, "isles-2015-2017"),
    "isles2017": _edition("isles2017", tuple(PERFUSION_CHANNELS), (0, 1), LESION, "isles-2015-2017"),
    "isles2022": _edition(
        "isles2022", BIDS_CHANNELS, (0, 1), LESION, "isles-2022", reference_grid="dwi", spacing_mm=(2.0, 2.0, 2.0)
    ),
}
VSD_LAYOUTS = {
    "isles2015_siss": VsdLayout(SISS_CHANNELS, truth_object="Brain"),
    "isles2015_spes": VsdLayout(SPES_CHANNELS, truth_object="Brain"),
    "isles2016": VsdLayout(PERFUSION_CHANNELS, truth_object="Brain"),
    "isles2017": VsdLayout(PERFUSION_CHANNELS, truth_object="Brain"),
}


class IslesAdapter(ChallengeAdapter):
    """Reads an ISLES training release as distributed.

    Args:
        edition: one of :data:`EDITIONS`.
        require_labels: training data must have a mask per case; test releases have none.
    """

    def __init__(self, edition: str = "isles2022", require_labels: bool = True):
        if edition not in EDITIONS:
            raise BrainbenchDataError(edition, f"unknown ISLES edition; choose one of {sorted(EDITIONS)}")
        self.edition = EDITIONS[edition]
        self.require_labels = require_labels

    def discover(self, root: str | Path) -> list[Case]:
        if self.edition.name in VSD_LAYOUTS:
            return read_vsd_cases(root, VSD_LAYOUTS[self.edition.name], self.edition.name, self.require_labels)
        return self._discover_bids(Path(root))

    def _discover_bids(self, root: Path) -> list[Case]:
        if not root.is_dir():
            raise BrainbenchDataError(root, "data folder not found")
        sessions = [
            session
            for folder in RAWDATA_FOLDERS
            if (root / folder).is_dir()
            for subject in sorted((root / folder).glob("sub-*"))
            if subject.is_dir()
            for session in sorted(subject.glob("ses-*"))
            if session.is_dir()
        ]
        if not sessions:
            raise BrainbenchDataError(
                root, "no isles2022 subjects found (expected [rawdata/]sub-strokecaseNNNN/ses-NNNN/)"
            )
        cases = [self._read_session(root, session) for session in sessions]
        return sorted(cases, key=lambda case: case.case_id)

    def _read_session(self, root: Path, session: Path) -> Case:
        subject = session.parent.name
        stem = f"{subject}_{session.name}"
        found: dict[str, list[Path]] = {}
        pattern = re.compile(rf"^{re.escape(stem)}_({'|'.join(BIDS_CHANNELS)})\.nii(\.gz)?$", re.IGNORECASE)
        for path in sorted(session.rglob(f"{stem}_*")):
            match = pattern.match(path.name)
            if match and path.is_file():
                found.setdefault(match[1].lower(), []).append(path)
        images = {}
        for channel in BIDS_CHANNELS:
            paths = found.get(channel, [])
            if len(paths) != 1:
                shown = "none" if not paths else ", ".join(str(p.relative_to(session)) for p in paths)
                raise BrainbenchDataError(
                    session, f"expected one {stem}_{channel}.nii.gz of case {subject}, found {shown}"
                )
            images[channel] = paths[0]
        masks = sorted((root / "derivatives" / subject / session.name).rglob(f"{stem}_msk.nii*"))
        if not masks and self.require_labels:
            raise BrainbenchDataError(
                root / "derivatives" / subject / session.name / f"{stem}_msk.nii.gz", f"missing mask of case {subject}"
            )
        case_id = subject if session.name == "ses-0001" else stem
        return Case(case_id=case_id, images=images, label=masks[0] if masks else None, meta={"session": session.name})
