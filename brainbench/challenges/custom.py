"""Your own cohort, declared in YAML instead of code.

A declaration is the same record as a built-in :class:`~brainbench.challenges.base.Edition`, written as
a mapping, either in a Hydra config file of your own config folder (``challenge/<name>.yaml`` with
``defaults: [custom, _self_]`` and a ``declaration:`` block; ``brainbench train --config-dir DIR
challenge=<name>``) or passed by path to the other commands (``--challenge DIR/challenge/<name>.yaml``;
the ``declaration:`` block is read, the rest ignored)::

    declaration:
      name: my_cohort
      cases: "sub-*"                                   # case folders below the root; case id = folder name
      channels:                                        # channel → file, relative to the case folder
        t1: "anat/{case}_T1w.nii.gz"                   #   {case} = case id, {root} = the data root,
        flair: "anat/{case}_FLAIR.nii.gz"              #   glob wildcards allowed; exactly one match
      label: "{root}/derivatives/{case}/{case}_lesion.nii.gz"   # one match, or none (unlabelled case)
      label_values: [0, 1]
      label_names: {0: background, 1: lesion}          # optional; default "background", "label 1", ...
      regions: {lesion: [1]}
      reference_grid: t1                               # channels on other grids are resampled onto it
      protocol: isles-2022                             # an existing protocol (brainbench data list)
      ranking: isles2022-mean-rank                     # an existing rule, or null with ranking_note

``label_names`` (value → name, for figure legends) must name every label value and nothing else;
without it, 0 is named ``background`` and every other value ``label <value>``.

Evaluation protocol and ranking rule are chosen from the existing ones by name; their names are
checked when the edition is evaluated or ranked.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from brainbench.challenges.base import Case, Edition, Layout, Unranked, collect
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError

REQUIRED = ("name", "cases", "channels", "label", "label_values", "regions", "protocol")
OPTIONAL = ("label_names", "family", "reference_grid", "ranking", "ranking_note", "spacing_mm", "source")


@dataclass(frozen=True)
class PatternLayout(Layout):
    """Case folders matching ``cases`` below the root; each channel and the label found by a pattern.

    Attributes:
        cases: glob of case folders relative to the root (``sub-*``, ``*/*``); case id = the folder's name.
        files: channel → pattern relative to the case folder (``{case}``, ``{root}`` and glob wildcards).
        label: the label map's pattern, same rules.
    """

    cases: str
    files: Mapping[str, str]
    label: str

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.files)

    @property
    def expected(self) -> str:
        return f"{self.cases}/{next(iter(self.files.values()))}"

    def scan(self, root: Path, edition: Edition, require_labels: bool) -> tuple[list[Case], list[BrainbenchDataError]]:
        folders = [path for path in sorted(root.glob(self.cases)) if path.is_dir()]
        return collect([partial(self._read, root, folder, edition.modalities, require_labels) for folder in folders])

    def _read(self, root: Path, folder: Path, modalities, require_labels: bool) -> Case:
        case_id = folder.name
        images = {}
        for channel in modalities:
            matches = self._matches(root, folder, self.files[channel])
            if len(matches) != 1:
                raise BrainbenchDataError(folder, f"channel {channel} of case {case_id}: expected one file matching "
                                                  f"'{self.files[channel]}', found {len(matches)}")
            images[channel] = matches[0]
        labels = self._matches(root, folder, self.label)
        if len(labels) > 1 or (not labels and require_labels):
            raise BrainbenchDataError(folder, f"label map of case {case_id}: expected one file matching "
                                              f"'{self.label}', found {len(labels)}")
        return Case(case_id=case_id, images=images, label=labels[0] if labels else None,
                    meta={"folder": str(folder)})

    @staticmethod
    def _matches(root: Path, folder: Path, pattern: str) -> list[Path]:
        expanded = str(folder / pattern.format(case=glob.escape(folder.name), root=glob.escape(str(root))))
        return [Path(p) for p in sorted(glob.glob(expanded)) if Path(p).is_file()]


def edition_from_declaration(declaration: Mapping[str, Any]) -> Edition:
    """The :class:`Edition` a YAML declaration describes; a missing or unknown key is a one-line error."""
    declaration = _plain(declaration)
    if not isinstance(declaration, Mapping):
        raise BrainbenchConfigError("challenge declaration: expected a mapping of keys to values")
    missing = [key for key in REQUIRED if declaration.get(key) in (None, "???")]
    unknown = sorted(set(declaration) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise BrainbenchConfigError(f"challenge declaration {declaration.get('name', '?')!r}: missing keys {missing}, "
                                    f"unknown keys {unknown} (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    name = str(declaration["name"])
    channels = declaration["channels"]
    if not isinstance(channels, Mapping) or not channels:
        raise BrainbenchConfigError(f"challenge declaration {name!r}: channels must map names to file patterns")
    try:
        labels = tuple(int(v) for v in declaration["label_values"])
        regions = {str(region): tuple(int(v) for v in values) for region, values in declaration["regions"].items()}
        spacing = declaration.get("spacing_mm")
        spacing = tuple(float(s) for s in spacing) if spacing is not None else None
    except (TypeError, ValueError, AttributeError) as error:
        raise BrainbenchConfigError(f"challenge declaration {name!r}: label_values must be integers, regions a "
                                    f"mapping of region → label values, spacing_mm three numbers ({error})")
    if 0 not in labels or any(set(values) - set(labels) for values in regions.values()):
        raise BrainbenchConfigError(f"challenge declaration {name!r}: label_values must include 0 (background) "
                                    f"and every region value")
    label_names = _label_names(name, labels, declaration.get("label_names"))
    reference = declaration.get("reference_grid")
    if reference is not None and reference not in channels:
        raise BrainbenchConfigError(f"challenge declaration {name!r}: reference_grid {reference!r} is not a channel")
    ranking = declaration.get("ranking") or Unranked(
        str(declaration.get("ranking_note") or f"no ranking rule declared for {name}"))
    return Edition(
        name=name, challenge=str(declaration.get("family") or "custom"), modalities=tuple(channels),
        label_values=labels, label_names=label_names, regions=regions, protocol=str(declaration["protocol"]),
        ranking=ranking,
        layout=PatternLayout(str(declaration["cases"]), {str(k): str(v) for k, v in channels.items()},
                             str(declaration["label"])),
        source=str(declaration.get("source") or "user declaration"), reference_grid=reference, spacing_mm=spacing,
    )


def _label_names(name: str, labels: tuple[int, ...], declared: Any) -> dict[int, str]:
    """The declared value → name mapping with integer keys, or the default names when none is declared;
    whether it names exactly the label values is checked by :class:`Edition` itself."""
    if declared is None:
        return {v: "background" if v == 0 else f"label {v}" for v in labels}
    try:
        return {int(value): "" if label is None else str(label) for value, label in declared.items()}
    except (TypeError, ValueError, AttributeError):
        raise BrainbenchConfigError(f"challenge declaration {name!r}: label_names must map label values to names, "
                                    f"e.g. {{0: background, 1: lesion}}")


def load_declaration(path: str | Path) -> Edition:
    """The edition declared in a YAML file: its ``declaration:`` block, or the whole file if it has none."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as error:
        raise BrainbenchConfigError(f"{path}: cannot read the challenge declaration ({error.strerror})")
    except yaml.YAMLError as error:
        raise BrainbenchConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})")
    if isinstance(content, Mapping) and "declaration" in content:
        content = content["declaration"]
    try:
        return edition_from_declaration(content)
    except BrainbenchConfigError as error:
        raise BrainbenchConfigError(f"{path}: {error}")


def _plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) as plain dicts and lists; anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf  # only declarations from Hydra configs need it

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
