"""Case folders exported by the Virtual Skeleton Database (VSD) and its successor SMIR.

BRATS 2012–2016 and ISLES 2015–2017 were distributed as VSD exports (challenges.md §2.2, §3.2, §8.1):
a case folder holds one sub-folder per object, named ``<prefix>.<object>.XX.<O|XX>.<token>[.<id>]``,
holding ``<same>[.<id>].{mha,nii}``. ``prefix`` is ``VSD`` or, in a later re-export, ``SMIR``;
``object`` is ``Brain`` for images and e.g. ``Brain_3more`` for a BRATS ground truth; ``token`` is the
modality (``MR_Flair``, ``MR_T1``, ``MR_T1c``, ``MR_DWI``, ``MR_Tmax``, …) or ``OT`` for a label map.
The object id is per object and never relied upon. Tokens are matched whole (case-insensitively),
so ``MR_T1`` never swallows ``MR_T1c``. Volume files lying directly in the case folder under such a
name are accepted too (flattened copies). Case folders are found at any depth up to
:data:`MAX_DEPTH` below the root, which absorbs the extra nesting some copies add
(``SISS2015_Training/SISS2015/Training/<n>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from brainbench.challenges.base import Case, Edition, Layout, collect
from brainbench.errors import BrainbenchDataError
from brainbench.io import VOLUME_SUFFIXES

OBJECT_NAME = re.compile(
    r"^(?P<prefix>VSD|SMIR)\.(?P<object>[^.]+)\.XX\.(?:O|XX)\.(?P<token>[^.]+)(?:\.(?P<id>\d+))?$", re.IGNORECASE
)
MAX_DEPTH = 4


@dataclass(frozen=True)
class VsdObject:
    """One exported object: ``object`` (``Brain``, ``Brain_2more``), ``token`` (``MR_T1c``, ``OT``), volume file."""

    object: str
    token: str
    path: Path


@dataclass(frozen=True)
class VsdLayout(Layout):
    """How one edition's VSD export is read.

    Attributes:
        tokens: channel name → VSD token, e.g. ``{"t1c": "MR_T1c"}``.
        truth_object: regular expression the ground truth's object must match in full
            (``Brain_[123]more`` for BRATS, ``Brain`` for ISLES); its token is always ``OT``.
        id_from_path: case id = the case folder's path below the root joined with ``_``
            (BRATS-2 reuses ``0001`` under ``HG``/``LG`` and ``Image_Data``/``Synthetic_Data``);
            otherwise the folder name alone.

    Objects whose token is not in ``tokens`` (ISLES ``MR_4DPWI``, the BRATS-2 tissue map) are ignored.
    """

    tokens: Mapping[str, str]
    truth_object: str
    id_from_path: bool = False
    expected: str = "<case>/VSD.Brain.XX.O.<modality>.<id>/<same>.mha and a VSD....OT ground-truth object"

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.tokens)

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        return collect([partial(self._read_case, root, folder, edition.modalities, require_labels)
                        for folder in case_folders(root)])

    def _read_case(self, root: Path, folder: Path, modalities: Sequence[str], require_labels: bool) -> Case:
        relative = folder.relative_to(root).parts
        case_id = "_".join(relative) if self.id_from_path else folder.name
        objects = vsd_objects(folder)
        images = {}
        for modality in modalities:
            token = self.tokens[modality]
            matching = [o for o in objects if o.object.lower() == "brain" and o.token.lower() == token.lower()]
            if len(matching) != 1:
                found = "none" if not matching else ", ".join(o.path.parent.name for o in matching)
                raise BrainbenchDataError(
                    folder, f"expected one {token} object for channel {modality} of case {case_id}, found {found}"
                )
            images[modality] = matching[0].path
        truths = [o for o in objects
                  if o.token.upper() == "OT" and re.fullmatch(self.truth_object, o.object, re.IGNORECASE)]
        if len(truths) > 1:
            names = [o.path.name for o in truths]
            raise BrainbenchDataError(folder, f"several ground-truth objects in case {case_id}: {names}")
        if not truths and require_labels:
            raise BrainbenchDataError(
                folder, f"missing ground truth of case {case_id} (expected a VSD.{self.truth_object}...OT object)"
            )
        meta = {"source_folder": str(folder)}
        grade = next((p for p in relative[:-1] if p.upper() in ("HG", "LG", "HGG", "LGG")), None)
        if grade:
            meta["grade"] = grade
        part = next((p for p in relative[:-1] if p in ("Image_Data", "Synthetic_Data")), None)
        if part:
            meta["part"] = part
        if truths:
            meta["truth_object"] = truths[0].object
        return Case(case_id=case_id, images=images, label=truths[0].path if truths else None, meta=meta)


def _volume_stem(name: str) -> str | None:
    lowered = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return None


def vsd_objects(folder: Path) -> list[VsdObject]:
    """The VSD/SMIR objects of one case folder, sorted by name."""
    objects = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            match = OBJECT_NAME.match(entry.name)
            volumes = [p for p in sorted(entry.iterdir()) if p.is_file() and _volume_stem(p.name)] if match else []
            if match and volumes:
                objects.append(VsdObject(match["object"], match["token"], volumes[0]))
        elif entry.is_file():
            stem = _volume_stem(entry.name)
            match = OBJECT_NAME.match(stem) if stem else None
            if match:
                objects.append(VsdObject(match["object"], match["token"], entry))
    return objects


def case_folders(root: Path) -> list[Path]:
    """Folders below ``root`` (depth 1 to :data:`MAX_DEPTH`) that hold VSD objects, sorted by path."""
    found, frontier = [], [root]
    for _ in range(MAX_DEPTH):
        children = [
            c for folder in frontier for c in sorted(folder.iterdir()) if c.is_dir() and not OBJECT_NAME.match(c.name)
        ]
        holding = [c for c in children if vsd_objects(c)]
        found.extend(holding)
        frontier = [c for c in children if c not in holding]
    return sorted(found)
