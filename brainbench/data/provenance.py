"""Where a data folder came from, read from the folder itself (never from the config).

The synthetic generator writes its record ``brainbench_synthetic.json`` at the root before any
case (:func:`brainbench.data.synth.subject.mark_root`); a challenge release carries no such record.
"""

from __future__ import annotations

from pathlib import Path

from brainbench.data.synth.subject import METADATA_FILE
from brainbench.errors import BrainbenchConfigError

SOURCES = ("synthetic", "real")


def recorded_source(root: str | Path) -> str:
    """``synthetic`` when ``root`` holds the generator record, ``real`` otherwise."""
    return "synthetic" if (Path(root) / METADATA_FILE).is_file() else "real"


def check_source(root: str | Path, declared: str) -> str:
    """The source recorded on disk; a config that declares the other one is an error, not a relabel."""
    if declared not in SOURCES:
        raise BrainbenchConfigError(f"data.source must be one of {', '.join(SOURCES)}, got {declared!r}")
    found = recorded_source(root)
    if found != declared:
        evidence = f"carries {METADATA_FILE} (a brainbench synthetic look-alike)" if found == "synthetic" \
            else f"has no {METADATA_FILE} (not written by brainbench's generator)"
        raise BrainbenchConfigError(f"data.source={declared} but data.root={root} {evidence}; "
                                    f"use data={found} for this folder or point data.root at {declared} data")
    return found
