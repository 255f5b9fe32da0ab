"""Challenge adapters, one file per family; the registry maps edition names to adapters."""

from __future__ import annotations

from brainbench.challenges.base import Case, ChallengeAdapter, Edition
from brainbench.challenges.brats import EDITIONS as BRATS_EDITIONS
from brainbench.challenges.brats import BratsAdapter
from brainbench.errors import BrainbenchConfigError

EDITIONS: dict[str, Edition] = {**BRATS_EDITIONS}


def adapter_for(edition: str, require_labels: bool = True) -> ChallengeAdapter:
    """The adapter reading ``edition``'s official layout."""
    if edition in BRATS_EDITIONS:
        return BratsAdapter(edition, require_labels=require_labels)
    raise BrainbenchConfigError(f"unknown challenge edition '{edition}'; supported: {', '.join(sorted(EDITIONS))}")


__all__ = ["Case", "ChallengeAdapter", "Edition", "EDITIONS", "adapter_for"]
