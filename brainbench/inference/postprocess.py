"""Post-processing of predicted class maps before they are written.

Pereira et al. 2016 remove tumour clusters smaller than τ_VOL (spec §2.3: 10,000 voxels for HGG,
3,000 for LGG, [M]). BRATS volumes are 1 mm isotropic, so τ_VOL is taken in mm³ here and the
filter means the same on any grid (at 2 mm, 10,000 mm³ is 1,250 voxels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def remove_small_components(classes: np.ndarray, voxel_volume_mm3: float, min_volume_mm3: float = 10_000.0,
                            connectivity: int = 3) -> np.ndarray:
    """``classes`` (X, Y, Z) with each tumour component (class > 0) under ``min_volume_mm3`` set to 0.

    ``connectivity``: 1 (faces, 6 neighbours), 2 (edges, 18) or 3 (corners, 26). Returns a new array.
    """
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity: expected 1, 2 or 3, got {connectivity}")
    components, _ = ndimage.label(classes > 0, ndimage.generate_binary_structure(3, connectivity))
    small = np.bincount(components.ravel()) * voxel_volume_mm3 < min_volume_mm3
    small[0] = False
    out = np.array(classes, copy=True)
    out[small[components]] = 0
    return out
