"""Where inference has to run, and how much memory it may use there.

Every challenge's metrics treat voxels outside the brain as background, and preprocessed images are
zero outside the brain, so a 3D model only needs to run over the brain's bounding box: on a BraTS
case that is about a third of the 240×240×155 volume (spec of issue 10: 2,209 of 6,961 GFLOP for
DeepMedic). :func:`predict_in_brain_box` runs any ``predict(net, image)`` there and fills the rest
with background; :func:`memory_budget_bytes` is what "tiles sized to the machine" are sized against,
and :func:`peak_live_bytes` measures what a tile or window forward needs of it.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from brainbench.data.boxes import brain_box

__all__ = ["SCRATCH_HEADROOM", "memory_budget_bytes", "meta_copy", "peak_live_bytes", "predict_in_brain_box"]

CPU_MEMORY_FRACTION = 0.5
"""Share of the available host memory a CPU inference pass may plan for (the rest: data, caches, MLflow)."""

GPU_MEMORY_FRACTION = 0.8
"""Share of the free device memory a GPU inference pass may plan for (allocator fragmentation)."""

SCRATCH_HEADROOM = 1.25
"""Factor on a forward's :func:`peak_live_bytes` for what the trace cannot see: backend scratch
space (oneDNN scratchpads; PyTorch's own conv, which it takes for batch-1 inputs of few channels ×
small cross-sections, unfolds the input, 27 values per voxel and channel, and copies
channels-last weights) and allocator rounding. Measured as process RSS above the trace (torch
2.13, CPU): 5-15 % on 20-60 MB DeepMedic tiles; none (0.997-1.001×) on 3D U-Net windows of
32³-64³ at the paper's widths and on thin ones at batch size 2. Not covered: PyTorch's own conv
where it dominates, in thin nets at batch size 1 (widths (3, 4), 40×32×24: 49 MB resident for a
4 MB trace) and in windows of 16³-24³ at the paper's widths (tens of MB of weight copies), i.e.
only at budgets of that size."""


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


class _LiveBytes(TorchDispatchMode):
    """Largest total size of the tensors alive at once among those created while active, counted
    once per storage until its last tensor is freed."""

    def __init__(self):
        super().__init__()
        self._storages: dict[int, list[int]] = {}  # storage -> [bytes, tensors referring to it]
        self.now = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self._storages[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, Tensor):
                storage = tensor.untyped_storage()
                entry = self._storages.setdefault(storage._cdata, [storage.nbytes(), 0])
                if entry[1] == 0:
                    self.now += entry[0]
                    self.peak = max(self.peak, self.now)
                entry[1] += 1
                weakref.finalize(tensor, self._release, storage._cdata)
        return out


def peak_live_bytes(run: Callable[[], object]) -> int:
    """Most bytes held at once by the tensors that ``run()`` creates: what a tile or window forward
    needs, so that inference can size them to :func:`memory_budget_bytes` by the code itself
    rather than by a hand-kept estimate of it.

    Meant for ``run`` on the meta device (a model copy moved to ``"meta"``, inputs made there too),
    where nothing is computed: a whole-volume forward takes milliseconds and no memory. Each op's
    output counts its storage once, from its creation until its last tensor is freed, so views
    cost nothing and in-place writes nothing more; a view of a tensor made outside ``run`` (a
    weight) counts that tensor's storage. Not seen: tensors made before ``run`` and backend
    scratch space that never becomes a tensor (callers add headroom for it).
    """
    with _LiveBytes() as counter:
        run()
    return counter.peak


def meta_copy(net: nn.Module) -> nn.Module:
    """``net`` on the meta device for :func:`peak_live_bytes`: a copy (hooks included), or ``net`` itself
    when it is already there, so that a sizing loop copies the weights once, not once per shape."""
    tensors = [*net.parameters(), *net.buffers()]
    if tensors and all(t.is_meta for t in tensors):
        return net
    return copy.deepcopy(net).to("meta")
