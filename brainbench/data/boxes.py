"""The brain's bounding box of a preprocessed image (zero outside the brain): where 3D inference runs
(:mod:`brainbench.inference.region`) and what whole-volume training crops (Brosch's
:class:`~brainbench.models.brosch.CroppedVolumes`)."""

from __future__ import annotations

import numpy as np

__all__ = ["brain_box"]


def brain_box(image: np.ndarray, align: int = 1) -> tuple[slice, slice, slice]:
    """The smallest box holding every voxel where any channel is non-zero, as three slices.

    image: (C, X, Y, Z). ``align``: the box starts on multiples of ``align`` per axis (DeepMedic's
    subsampling factor: tiles then sample the same lattice as on the whole volume). An image with no
    non-zero voxel gives an empty box.
    """
    if align < 1:
        raise ValueError(f"align: must be >= 1, got {align}")
    inside = np.any(np.asarray(image) != 0, axis=0)
    if not inside.any():
        return (slice(0, 0),) * 3
    box = []
    for axis in range(3):
        occupied = np.flatnonzero(np.any(inside, axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(occupied[0]) // align * align, int(occupied[-1]) + 1))
    return tuple(box)
