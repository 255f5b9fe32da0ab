"""Synthetic look-alikes of every edition (no patient data), built on the MNI152 template nilearn ships.

:func:`synthesize` writes an edition's look-alike with the generator its declaration names
(:class:`brainbench.challenges.Synthetic`), so one config file (``conf/data/synthetic.yaml``) serves
every edition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_method

from brainbench.challenges import get_edition
from brainbench.data.synth.anatomy import TemplateAnatomy, template_tissues
from brainbench.data.synth.brats import SynthBratsConfig, SynthCase, synthesize_brats, synthesize_case
from brainbench.errors import BrainbenchConfigError


def synthesize(edition: str, root: str | Path, n_cases: int | None = None, spacing_mm: Any = None, seed: int = 0,
               overwrite: bool = False) -> list[Path]:
    """Write ``n_cases`` look-alike cases of ``edition`` under ``root`` in its official layout.

    ``n_cases`` and ``spacing_mm`` (mm; a number or three numbers) default to the edition's declaration.
    Returns the case folders. Raises :class:`BrainbenchConfigError` for an edition without a look-alike.
    """
    declared = get_edition(edition).synthetic
    if declared is None:
        raise BrainbenchConfigError(f"edition '{edition}' declares no synthetic look-alike; "
                                    "use data=real data.root=<your release>")
    generator = get_method(declared.generator)
    return generator(root, n_cases=declared.n_cases if n_cases is None else n_cases,
                     spacing_mm=declared.spacing_mm if spacing_mm is None else spacing_mm, seed=seed,
                     overwrite=overwrite, **declared.options)


__all__ = [
    "SynthBratsConfig",
    "SynthCase",
    "TemplateAnatomy",
    "synthesize",
    "synthesize_brats",
    "synthesize_case",
    "template_tissues",
]
