"""Synthetic data generators (no patient data): BraTS-style cases built on the MNI152 template."""

from brainbench.data.synth.anatomy import TemplateAnatomy, template_tissues
from brainbench.data.synth.brats import SynthBratsConfig, SynthCase, synthesize_brats, synthesize_case

__all__ = [
    "SynthBratsConfig",
    "SynthCase",
    "TemplateAnatomy",
    "synthesize_brats",
    "synthesize_case",
    "template_tissues",
]
