"""Challenge adapters, one file per family; the registry maps edition names to adapters."""

from __future__ import annotations

from brainbench.challenges.base import Case, ChallengeAdapter, Edition
from brainbench.challenges.brats import EDITIONS as BRATS_EDITIONS
from brainbench.challenges.brats import BratsAdapter
from brainbench.challenges.isles import EDITIONS as ISLES_EDITIONS
from brainbench.challenges.isles import IslesAdapter
from brainbench.challenges.mrbrains import EDITIONS as MRBRAINS_EDITIONS
from brainbench.challenges.mrbrains import MrBrainSAdapter
from brainbench.challenges.msseg import ADAPTERS as MS_ADAPTERS
from brainbench.challenges.msseg import EDITIONS as MS_EDITIONS
from brainbench.challenges.neobrains import EDITIONS as NEOBRAINS_EDITIONS
from brainbench.challenges.neobrains import NeoBrainSAdapter
from brainbench.errors import BrainbenchConfigError

EDITIONS: dict[str, Edition] = {
    **BRATS_EDITIONS, **ISLES_EDITIONS, **MS_EDITIONS, **MRBRAINS_EDITIONS, **NEOBRAINS_EDITIONS,
}


def adapter_for(edition: str, require_labels: bool = True) -> ChallengeAdapter:
    """The adapter reading ``edition``'s official layout."""
    if edition in BRATS_EDITIONS:
        return BratsAdapter(edition, require_labels=require_labels)
    if edition in ISLES_EDITIONS:
        return IslesAdapter(edition, require_labels=require_labels)
    if edition in MS_EDITIONS:
        return MS_ADAPTERS[edition](edition, require_labels=require_labels)
    if edition in MRBRAINS_EDITIONS:
        return MrBrainSAdapter(edition, require_labels=require_labels)
    if edition in NEOBRAINS_EDITIONS:
        return NeoBrainSAdapter(edition, require_labels=require_labels)
    raise BrainbenchConfigError(f"unknown challenge edition '{edition}'; supported: {', '.join(sorted(EDITIONS))}")


__all__ = ["Case", "ChallengeAdapter", "Edition", "EDITIONS", "adapter_for"]
