"""Dou et al.'s cascaded CMB detection turned into a probability map (IEEE TMI 35(5):1182-1195, 2016).

Dou reports detections as points (sensitivity, false positives per subject, spec §5.5); VALDO and
brainbench's evaluation score masks. :func:`predict_cascade` therefore paints each accepted
candidate's CMB probability over its *detected region*: the image voxels, mapped to their stride-2
score voxel (``x // 2``, the same lattice as :func:`~brainbench.models.dou.screening_scores`), whose
stage-1 score reaches the screening threshold, 26-connected to the candidate, and nearer to it than
to any other candidate of that connected region (candidates split a region they share). Everything
else is background with certainty. The painted value is the candidate's probability shifted so that
its threshold sits at 0.5 (:func:`decision_probability`): the argmax keeps exactly the accepted
candidates, whatever the configured operating point. ``stage2=False`` gives stage 1 alone, every
candidate accepted with its screening score, so that a benchmark can compare the screen with the cascade.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from brainbench.inference.device import inference_state
from brainbench.models.dou import (
    FULL_CONNECTIVITY,
    STRIDE,
    DouCascade,
    candidate_patch,
    find_candidates,
    screening_scores,
)

__all__ = ["decision_probability", "paint_detections", "predict_cascade"]


def predict_cascade(net: DouCascade, image: np.ndarray, device=None, stage2: bool = True,
                    batch_size: int = 256) -> np.ndarray:
    """Probabilities (2, X, Y, Z) float32 of a (C, X, Y, Z) z-scored image (module docstring).

    Stage 1 scores every even voxel; candidates are its thresholded, merged local maxima
    (``net.screening_threshold``, ``net.nms_radius``); stage 2 classifies each candidate's
    mean-subtracted 20×20×16 patch, ``batch_size`` at a time, and accepts those with a CMB
    probability of at least ``net.stage2_threshold``. ``stage2=False``: every candidate accepted
    with its stage-1 score. ``device``: the nets' device, where the inputs are sent (default: that of
    their parameters); the nets are not moved.
    """
    image = np.asarray(image, dtype=np.float32)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    with inference_state(net):
        scores = screening_scores(net.screening, image, device=device)
        centres, probability = find_candidates(scores, net.screening_threshold, net.nms_radius)
        threshold = net.screening_threshold
        if stage2 and len(centres):
            size = net.discrimination.patch_size
            stage2_probability = []
            for i in range(0, len(centres), batch_size):
                patches = np.stack([candidate_patch(image, c, size) for c in centres[i:i + batch_size]])
                logits = net.discrimination(torch.from_numpy(patches).to(device)).float()
                stage2_probability.append(1 - torch.softmax(logits, dim=1)[:, 0].cpu().numpy())
            probability, threshold = np.concatenate(stage2_probability), net.stage2_threshold
    foreground = paint_detections(scores, net.screening_threshold, centres,
                                  decision_probability(probability, threshold), image.shape[1:])
    return np.stack([1 - foreground, foreground])


def decision_probability(probability: np.ndarray, threshold: float) -> np.ndarray:
    """``probability`` with its odds divided by the threshold's, σ(logit p − logit t): a candidate is
    accepted (≥ 0.5, the argmax of the written map) exactly when p ≥ ``threshold``, the ranking is
    kept, and ``threshold`` = 0.5 changes nothing. A prior shift, so that an operating point other
    than the softmax's argmax (Dou's thresholds are unknown) survives the pipeline's argmax."""
    probability = np.asarray(probability, dtype=np.float64)
    accepted_odds = probability * (1 - threshold)
    with np.errstate(invalid="ignore"):
        shifted = accepted_odds / (accepted_odds + (1 - probability) * threshold)
    return np.nan_to_num(shifted, nan=0.0).astype(np.float32)


def paint_detections(scores: np.ndarray, threshold: float, centres: np.ndarray, probability: np.ndarray,
                     shape: tuple[int, int, int]) -> np.ndarray:
    """Float32 (X, Y, Z) map: each candidate's probability over its detected region (module docstring).

    scores: the stride-2 score volume; ``centres`` (M, 3) image voxels of every candidate of
    ``scores`` at ``threshold`` and ``probability`` (M,) the values painted over their shares.
    """
    foreground = np.zeros(shape, dtype=np.float32)
    if len(centres) == 0:
        return foreground
    grid = np.ix_(*[np.arange(n) // STRIDE for n in shape])
    regions, _ = ndimage.label(scores[grid] >= threshold, structure=FULL_CONNECTIVITY)
    region_of = regions[tuple(np.asarray(centres).T)]
    boxes = ndimage.find_objects(regions)
    for region in np.unique(region_of[region_of > 0]):
        box = boxes[region - 1]
        members = np.flatnonzero(region_of == region)
        voxels = np.argwhere(regions[box] == region) + [s.start for s in box]
        nearest = cKDTree(centres[members]).query(voxels)[1] if len(members) > 1 else np.zeros(len(voxels), int)
        foreground[tuple(voxels.T)] = probability[members][nearest]
    return foreground
