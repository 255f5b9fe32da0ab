"""Intensity preprocessing applied once per case before caching.

Preprocessors are small typed classes built by Hydra (``conf/preprocess/``). Each exposes
``config()`` — the values that change its output — so the cache can key on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ZScoreInBrain:
    """Brain mask from non-zero voxels; each channel z-scored inside the brain, 0 outside.

    This is DeepMedic's preprocessing (spec §3.5): BraTS releases are skull-stripped, so the
    brain is where any channel is non-zero.

    Args:
        clip_sigma: clip z-scores to ``±clip_sigma`` after normalisation (``None`` keeps them).
    """

    clip_sigma: float | None = None

    def config(self) -> dict:
        return {"name": type(self).__name__, **asdict(self)}

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images`` (C, X, Y, Z) → (normalised float32 (C, X, Y, Z), brain mask bool (X, Y, Z))."""
        brain = np.any(images != 0, axis=0)
        out = np.zeros(images.shape, dtype=np.float32)
        if not brain.any():
            return out, brain
        for channel, image in enumerate(images):
            values = image[brain].astype(np.float64)
            std = values.std()
            normalised = (values - values.mean()) / (std if std > 0 else 1.0)
            if self.clip_sigma is not None:
                normalised = np.clip(normalised, -self.clip_sigma, self.clip_sigma)
            out[channel][brain] = normalised
        return out, brain
