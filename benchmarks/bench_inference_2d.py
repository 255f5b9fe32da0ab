"""Whole-volume inference of the 2D patch-wise models on one real 240×240×155 BraTS case, on the CPU.

Usage: python benchmarks/bench_inference_2d.py [--dense-slices 3] [--side 16] [--full]
                                               [--models twopath inputcascade pereira_hgg]

Case: the four skull-stripped modalities of ../shared/data/real/brats_toolkit_TCGA-DU-7294, each
z-scored inside the brain (non-zero voxels), background 0. Models at full width with random
weights of std gain/sqrt(fan-in) (the papers' U(±0.005) initialisation gives uniform probabilities,
so label agreement would say nothing).

Per model and strategy of :mod:`brainbench.inference.patchwise` it prints the measured seconds,
what was measured, the estimated whole-volume seconds and the ratio to ``patchwise``:

* ``patchwise`` is timed on a ``--side``² square of brain voxels in the central slice and
  extrapolated per voxel to every voxel of the brain bounding box (the work it does on a volume);
* Pereira's exact ``dense`` (brain voxels only) is timed on the same voxels, extrapolated to the
  brain's voxels;
* slice strategies (Havaei ``dense``, Pereira ``fcn_approximate``) run ``--dense-slices`` whole
  slices of the box around the centre, extrapolated per slice to the box, or on the whole volume
  with ``--full``.

Labels of each strategy are compared with ``patchwise`` on the timed voxels. FLOPs are counted from
the conv and matmul shapes (``torch.utils.flop_counter``; max-pool, maxout, activations and softmax
not counted) and set against a float32 ``torch.matmul`` ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainbench.io import load_volume
from brainbench.data.preprocess import CaseArrays, ZScoreInBrain
from brainbench.inference.patchwise import brain_region, dense, fcn_approximate, patchwise
from brainbench.models.havaei import InputCascadeCNN, TwoPathCNN
from brainbench.models.pereira import pereira_hgg

CASE = (Path(__file__).resolve().parents[2]
        / "shared/data/real/brats_toolkit_TCGA-DU-7294/TCGA-DU-7294_brainles/raw_bet")
MODELS = {"twopath": TwoPathCNN, "inputcascade": InputCascadeCNN, "pereira_hgg": pereira_hgg}


def load_case() -> np.ndarray:
    images = [load_volume(CASE / f"TCGA-DU-7294_{m}_bet.nii.gz") for m in ("t1", "t1c", "t2", "fla")]
    arrays = CaseArrays(images=np.stack([a for a, _ in images]), modalities=("t1", "t1c", "t2", "flair"),
                        grid=images[0][1])
    return ZScoreInBrain()(arrays).images


def randomised(model: nn.Module, gain: float = 1.0) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(gain * torch.randn(m.weight.shape, generator=gen)
                               / m.weight[0].numel() ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


def matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an n×n matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b)[0] for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(strategy, model, image, mask):
    counter = FlopCounterMode(display=False)
    with counter:
        seconds, probs = _timed(lambda: strategy(model, image, mask))
    return seconds, probs, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dense-slices", type=int, default=3)
    parser.add_argument("--side", type=int, default=16, help="timed voxels: a side² square")
    parser.add_argument("--full", action="store_true", help="slice strategies on the whole volume")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()

    image = load_case()
    brain, box = brain_region(image)
    box_voxels = int(np.prod([s.stop - s.start for s in box]))
    box_slices = box[2].stop - box[2].start
    centre = (box[2].start + box[2].stop) // 2
    ceiling = matmul_ceiling()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; case {tuple(image.shape)}, "
          f"brain {int(brain.sum()):,} voxels, brain box {[s.stop - s.start for s in box]} = "
          f"{box_voxels:,} voxels in {box_slices} slices")
    print(f"matmul ceiling (2048², float32): {ceiling:.1f} GFLOP/s")

    x, y = np.argwhere(brain[:, :, centre]).mean(axis=0).astype(int) - args.side // 2
    voxel_mask = np.zeros(brain.shape, bool)
    voxel_mask[x:x + args.side, y:y + args.side, centre] = True
    assert brain[voxel_mask].all(), "the timed square must lie in the brain"
    n_voxels = args.side ** 2
    first = centre - args.dense_slices // 2
    slab = box[2] if args.full else slice(first, first + args.dense_slices)
    slab_brain = np.zeros(brain.shape, bool)
    slab_brain[:, :, slab] = brain[:, :, slab]

    for name in args.models:
        pereira = name.startswith("pereira")
        # Kaiming gain for Pereira's leaky ReLUs keeps its logits informative through 9 layers
        gain = nn.init.calculate_gain("leaky_relu", 0.333) if pereira else 1.0
        model = randomised(MODELS[name](), gain)
        seconds, reference, flops = run(patchwise, model, image, voxel_mask)
        per_voxel = seconds / n_voxels
        base = per_voxel * box_voxels
        labels = reference.argmax(0)[voxel_mask]
        print(f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters; labels on the "
              f"{n_voxels} voxels: {np.bincount(labels, minlength=5).tolist()}")
        print(f"  {'strategy':<16}{'measured':>30}{'whole volume s':>16}{'ratio':>9}{'GFLOP/s':>9}"
              f"{'% ceiling':>10}  labels = patchwise, max |dp|")
        print(f"  {'patchwise':<16}{f'{seconds:.1f} s / {n_voxels} voxels':>30}{base:>16.0f}"
              f"{1.0:>9.1f}{flops / seconds / 1e9:>9.1f}{100 * flops / seconds / 1e9 / ceiling:>10.0f}  "
              f"(reference; {flops / n_voxels / 1e6:.0f} MFLOP/voxel, extrapolated to the box)")
        strategies = [("dense", dense)] + ([("fcn_approximate", fcn_approximate)] if pereira else [])
        for label, strategy in strategies:
            per_slice = label != "dense" or not pereira
            # a voxel's probabilities depend on its window only, so the slab run holds the timed voxels
            seconds, probs, flops = run(strategy, model, image, slab_brain if per_slice else voxel_mask)
            if per_slice:
                n = slab.stop - slab.start
                estimate = seconds if args.full else seconds / n * box_slices
                what = f"{seconds:.1f} s / {n} slices"
            else:
                estimate = seconds / n_voxels * int(brain.sum())
                what = f"{seconds:.1f} s / {n_voxels} voxels"
            same = int((probs.argmax(0)[voxel_mask] == labels).sum())
            diff = float(np.abs(probs[:, voxel_mask] - reference[:, voxel_mask]).max())
            print(f"  {label:<16}{what:>30}{estimate:>16.0f}{base / estimate:>9.1f}"
                  f"{flops / seconds / 1e9:>9.1f}{100 * flops / seconds / 1e9 / ceiling:>10.0f}  "
                  f"{same}/{n_voxels}, {diff:.1e}")
    print(f"\nwhole volume s: patchwise and Pereira dense extrapolated per voxel (box / brain voxels); "
          f"slice strategies {'measured on the whole volume' if args.full else 'extrapolated per slice'}")


if __name__ == "__main__":
    main()
