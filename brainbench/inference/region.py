"""Where inference has to run, and how much memory it may use there.

Every challenge's metrics treat voxels outside the brain as background, and preprocessed images are
zero outside the brain, so a 3D model only needs to run over the brain's bounding box: on a BraTS
case that is about a third of the 240×240×155 volume (spec of issue 10: 2,209 of 6,961 GFLOP for
DeepMedic). :func:`predict_in_brain_box` runs any ``predict(net, image)`` there and fills the rest
with background; :func:`memory_budget_bytes` is what "tiles sized to the machine" are sized against.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from brainbench.data.boxes import brain_box

__all__ = ["memory_budget_bytes", "predict_in_brain_box"]

CPU_MEMORY_FRACTION = 0.5
"""Share of the available host memory a CPU inference pass may plan for (the rest: data, caches, MLflow)."""

GPU_MEMORY_FRACTION = 0.8
"""Share of the free device memory a GPU inference pass may plan for (allocator fragmentation)."""


def predict_in_brain_box(predict: Callable, net: nn.Module, image: np.ndarray, n_classes: int,
                         align: int = 1) -> np.ndarray:
    """``predict(net, image)`` run on the brain's bounding box only; float32 (n_classes, X, Y, Z).

    Outside the box the probabilities are background (class 0) with certainty. The box is cut from
    the image, so a model sees zeros beyond it, which is what the image holds there.
    """
    image = np.asarray(image)
    probabilities = np.zeros((n_classes, *image.shape[1:]), dtype=np.float32)
    probabilities[0] = 1.0
    box = brain_box(image, align)
    if any(b.stop <= b.start for b in box):
        return probabilities
    probabilities[(slice(None), *box)] = predict(net, np.ascontiguousarray(image[(slice(None), *box)]))
    return probabilities


def memory_budget_bytes(device: torch.device | str) -> int:
    """Bytes an inference pass may plan to use on ``device``: a share of free GPU memory, or of the
    host's available memory (``MemAvailable``; all physical memory where /proc is absent)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_MEMORY_FRACTION)
    return int(_available_host_memory() * CPU_MEMORY_FRACTION)


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
