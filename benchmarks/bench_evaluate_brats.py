"""BraTS legacy evaluation of one real 240×240×155 case: brainbench vs medpy, same run, same values.

Usage: python benchmarks/bench_evaluate_brats.py [--repeats 3]
Reference: fusion/mav.nii.gz of ../shared/data/real/brats_toolkit_TCGA-DU-7294; predictions: the
five algorithm outputs. Prints per-team seconds for 3 regions × (Dice, HD95, sensitivity,
specificity) and the largest absolute difference between the two computations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from medpy.metric import binary

from brainbench.challenges.brats import LEGACY_REGIONS
from brainbench.io import load_label
from brainbench.evaluation.evaluate import evaluate_case
from brainbench.evaluation.protocols import BRATS_LEGACY

CASE = Path(__file__).resolve().parents[2] / "shared/data/real/brats_toolkit_TCGA-DU-7294/TCGA-DU-7294_brainles"


def medpy_case(pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
    """The same protocol computed with medpy (Dice, HD95) and numpy (sensitivity, specificity)."""
    out = {}
    for region, labels in LEGACY_REGIONS.items():
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        if not r.any() and not p.any():
            dice, hd = 1.0, 0.0
        elif not r.any() or not p.any():
            dice, hd = 0.0, 373.12866
        else:
            dice, hd = binary.dc(p, r), binary.hd95(p, r, voxelspacing=spacing)
        tp, fn = (p & r).sum(), (~p & r).sum()
        tn, fp = (~p & ~r).sum(), (p & ~r).sum()
        sens = 1.0 if not r.any() and not p.any() else (tp / (tp + fn) if tp + fn else 0.0)
        out.update({(region, "dice"): dice, (region, "hd95"): hd, (region, "sensitivity"): sens,
                    (region, "specificity"): tn / (tn + fp)})
    return out


def best_of(repeats: int, function):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ref, grid = load_label(CASE / "fusion/mav.nii.gz")
    print(f"{'team':<14}{'brainbench s':>14}{'medpy s':>10}{'ratio':>8}{'max |diff|':>12}")
    for path in sorted((CASE / "segmentation").glob("*.nii.gz")):
        pred, _ = load_label(path)
        ours_s, ours = best_of(args.repeats, lambda: evaluate_case(pred, ref, grid.spacing, LEGACY_REGIONS, BRATS_LEGACY))
        peer_s, peer = best_of(1, lambda: medpy_case(pred, ref, grid.spacing))
        diff = max(abs(row["value"] - peer[(row["region"], row["metric"])]) for row in ours)
        print(f"{path.name.removesuffix('.nii.gz'):<14}{ours_s:>14.3f}{peer_s:>10.2f}{peer_s / ours_s:>7.0f}×{diff:>12.2e}")


if __name__ == "__main__":
    main()
