"""2D patch inputs of the patch-wise CNNs (Havaei et al. 2017, Pereira et al. 2016): axial windows
around a voxel, cut from the memory-mapped cached volume; the models' configs name this extractor."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainbench.models.deepmedic import extract_label_block
from brainbench.models.deepmedic import window as cut_window


@dataclass(frozen=True)
class AxialPatches:
    """2D patch-CNN inputs: a (C, P, P) axial window around a voxel and the label target.

    The window spans ``[c - before, c + after]`` in x and y on the centre's axial slice (z), read
    from the memory-mapped cached volume and zero-filled where it leaves the volume (the cache is
    normalised with background 0). P = before + after + 1: 33 (Havaei, Pereira), 65/56/53 (the
    cascades' stage-1 windows; their ``margin`` attribute).

    Args:
        margin: ``(before, after)`` pixels around the centre, the model's ``margin``.
        output_size: edge O of the (O, O) label target centred on the voxel (Havaei: a 33×33 patch
            gives 1×1 logits); ``None``: a scalar target for models returning (N, K) (Pereira).
            Target pixels outside the volume are -100 (cross-entropy's ignore index).
        rotate_90: when augmenting, rotate the volume by a random multiple of 90° in the axial plane
            (Pereira's augmentation, spec §2.3) and cut window and target at the centre's new place
            (a view, nothing copied). Rotating the cut window instead would move the predicted pixel
            of asymmetric windows (LocalCascade's 56×56) and even targets; DeepMedic flips alike.
    """

    margin: tuple[int, int] = (16, 16)
    output_size: int | None = 1
    rotate_90: bool = False

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator, augment: bool = True) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        if augment and self.rotate_90:
            turns = int(rng.integers(4))
            centre = _rotated_centre(centre, image.shape[-3:-1], turns)
            image, label = np.rot90(image, turns, axes=(-3, -2)), np.rot90(label, turns, axes=(-3, -2))
        x, y, z = centre
        before, after = self.margin
        window = cut_window(image, (x - before, y - before, z), (x + after + 1, y + after + 1, z + 1), 1, 0)[..., 0]
        if self.output_size is None:
            target = np.asarray(label[x, y, z], dtype=np.int64)
        else:
            target = extract_label_block(label, centre, (self.output_size, self.output_size, 1))[..., 0]
        return (window,), target


def _rotated_centre(centre: tuple[int, int, int], shape: tuple[int, int], turns: int) -> tuple[int, int, int]:
    """Where voxel ``centre`` of an (X, Y, ...) array lands in ``np.rot90(array, turns, axes=(0, 1))``:
    each turn maps (x, y) to (Y - 1 - y, x) and the in-plane shape (X, Y) to (Y, X)."""
    (x, y, z), (nx, ny) = centre, shape
    for _ in range(turns % 4):
        x, y, nx, ny = ny - 1 - y, x, ny, nx
    return x, y, z
