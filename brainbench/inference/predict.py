"""Segment held-out cases and write each prediction as a NIfTI file on its case's original grid."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from brainbench.challenges.base import Case, Edition
from brainbench.data.cache import PreprocessedCase
from brainbench.inference.device import InferenceSettings
from brainbench.inference.region import predict_in_brain_box
from brainbench.io import save_volume
from brainbench.progress import track


@dataclass
class Predictions:
    """Where the files went, the labels on the preprocessed grid (for figures) and seconds per case."""

    folder: Path
    array_grid: list[np.ndarray]
    seconds_per_case: float


def predict_cases(net: nn.Module, cases: Sequence[tuple[Case, PreprocessedCase]], edition: Edition,
                  predict: Callable, out_dir: Path, refine: Callable | None = None,
                  postprocess: Callable | None = None, settings: InferenceSettings | None = None) -> Predictions:
    """``<out_dir>/<case_id>.nii.gz`` (uint8, the edition's label values) for every case, in order.

    ``predict(net, image)`` returns class probabilities (K, X, Y, Z) on the preprocessed grid (over the
    brain's bounding box only when ``settings.brain_box``), ``refine(probabilities, image)`` may revise
    them there (the CRF), the argmax is mapped back to the case's grid, then ``postprocess(labels,
    voxel_volume_mm3=...)`` if given. ``settings``: the device the net is moved to, the autocast
    precision and the brain box (default: where the net is, full precision, the whole volume).
    """
    if settings is not None:
        net.to(settings.device)
    net.eval()
    autocast = settings.autocast if settings is not None else contextlib.nullcontext
    started = time.perf_counter()
    array_grid = []
    for case, pre in track(cases, "Segmenting"):
        with autocast():
            if settings is not None and settings.brain_box:
                probabilities = predict_in_brain_box(predict, net, pre.image, edition.n_classes,
                                                     align=getattr(net, "subsample_factor", 1))
            else:
                probabilities = predict(net, pre.image)
        if refine is not None:
            probabilities = refine(probabilities, pre.image)
        array_grid.append(edition.decode_labels(probabilities.argmax(0)))
        labels = pre.to_case_grid(array_grid[-1])
        if postprocess is not None:
            labels = postprocess(labels, voxel_volume_mm3=pre.grid.voxel_volume_mm3)
        save_volume(labels, pre.grid, out_dir / f"{case.case_id}.nii.gz", dtype=np.uint8)
    return Predictions(out_dir, array_grid, (time.perf_counter() - started) / max(1, len(cases)))
