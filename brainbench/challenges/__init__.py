"""Challenge editions: one declaration per edition in its family file, collected here into a registry.

``get_edition`` accepts a registered name (``brats2020``), a user's YAML declaration file or mapping
(:mod:`brainbench.challenges.custom`), or an :class:`Edition`; ``adapter_for`` gives the adapter that
reads its release. Nothing here chooses behaviour by an edition's name: everything an edition does is
in its declaration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from brainbench.challenges import brats, isles, mrbrains, msseg, neobrains
from brainbench.challenges import microbleeds
from brainbench.challenges.base import Case, ChallengeAdapter, Edition, Layout, Synthetic, Unranked
from brainbench.errors import BrainbenchConfigError


def _registry(families: Iterable[Mapping[str, Edition]]) -> dict[str, Edition]:
    """Name → edition over every family; a name declared twice is a programming error."""
    registry: dict[str, Edition] = {}
    for family in families:
        for name, edition in family.items():
            if name != edition.name or name in registry:
                raise ValueError(f"edition {name!r} is declared twice or under another name")
            registry[name] = edition
    return dict(sorted(registry.items()))


EDITIONS: dict[str, Edition] = _registry(family.EDITIONS for family in (brats, isles, msseg, mrbrains, neobrains, microbleeds))
"""Every registered edition by name."""


def get_edition(spec: str | Path | Edition | Mapping[str, Any]) -> Edition:
    """The edition a name, a YAML declaration file, a declaration mapping or an :class:`Edition` stands for."""
    if isinstance(spec, Edition):
        return spec
    if isinstance(spec, Mapping):
        from brainbench.challenges.custom import edition_from_declaration

        return edition_from_declaration(spec)
    if str(spec) in EDITIONS:
        return EDITIONS[str(spec)]
    if str(spec).endswith((".yaml", ".yml")):
        from brainbench.challenges.custom import load_declaration

        return load_declaration(spec)
    raise BrainbenchConfigError(
        f"unknown challenge edition '{spec}': name one of {', '.join(EDITIONS)}, or a YAML declaration file"
    )


def adapter_for(spec: str | Path | Edition | Mapping[str, Any], require_labels: bool = True) -> ChallengeAdapter:
    """The adapter reading ``spec``'s release layout (see :func:`get_edition`)."""
    return ChallengeAdapter(get_edition(spec), require_labels=require_labels)


__all__ = ["Case", "ChallengeAdapter", "EDITIONS", "Edition", "Layout", "Synthetic", "Unranked", "adapter_for",
           "get_edition"]
