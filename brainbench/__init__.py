"""brainbench: a reproducible bake-off of published brain-MRI segmentation methods."""

__version__ = "0.1.0"
