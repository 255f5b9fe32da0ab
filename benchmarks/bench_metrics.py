"""Metric speed on one real 240×240×155 BraTS-space case: brainbench vs surface-distance and MONAI.

Usage: python benchmarks/bench_metrics.py [--repeats 15] [--official-script PATH/eval.py [--official-repeats 3]]
Reference: fusion/mav.nii.gz of ../shared/data/real/brats_toolkit_TCGA-DU-7294; predictions: the five
algorithm outputs. Prints, per team, best-of-``repeats`` seconds for
 (i)   the full BraTS legacy case (3 regions × Dice, HD95, sensitivity, specificity; target ≤ 0.15 s);
 (ii)  our surfel HD95 vs ``surface_distance`` (compute_surface_distances + compute_robust_hausdorff),
       summed over the non-empty regions, with the largest value difference (target ≥ 5× faster);
 (iii) MONAI DiceMetric and HausdorffDistanceMetric(percentile=95) on WT, beside ours;
 (iv)  BraTS 2023 lesion-wise Dice/HD95 for WT, TC and ET (GLI parameters).
With ``--official-script`` (the ``eval.py`` of a user-supplied rachitsaluja/BraTS-2023-Metrics checkout,
imported from that path, never downloaded) it prints instead, per team,
 (v)   the official per-case ``get_LesionWiseResults(pred, gt, "BraTS-GLI")`` vs brainbench's
       ``brats-2023-gli`` protocol (both from the two files: load + WT/TC/ET legacy and lesion-wise
       metrics), on copies relabelled 4→3 (2023 labels), with the largest lesion-wise Dice/HD95 difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import surface_distance
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from bench_evaluate_brats import CASE, best_of  # this folder, first on sys.path when run as a script

from brainbench.challenges.brats import EDITIONS, LEGACY_REGIONS
from brainbench.io import load_label, save_volume
from brainbench.evaluation.evaluate import _region_mask, evaluate_case
from brainbench.evaluation.lesions import BRATS2023_LESION_RULES, brats2023_lesionwise
from brainbench.evaluation.overlap import Confusion, dice
from brainbench.evaluation.protocols import BRATS_2023, BRATS_LEGACY
from brainbench.evaluation.surface import hd95, robust_hausdorff


def surfel_pairs(pred, ref):
    masks = [(_region_mask(pred, labels), _region_mask(ref, labels)) for labels in LEGACY_REGIONS.values()]
    return [(p, r) for p, r in masks if p.any() and r.any()]


def package_hd95(pairs, spacing):
    return [
        surface_distance.compute_robust_hausdorff(surface_distance.compute_surface_distances(r, p, spacing), 95)
        for p, r in pairs
    ]


def monai_hd95(p: torch.Tensor, r: torch.Tensor, spacing) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own deprecation warnings
        metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        return metric(p, r, spacing=spacing).item()


def _surface_distance_modules() -> list[str]:
    return [name for name in sys.modules if name.split(".")[0] == "surface_distance"]


def load_official(script: Path):
    """Import the official ``eval.py`` from its checkout, with the ``surface_distance`` copy it ships.

    That copy accepts the integer masks eval.py passes (DeepMind's package, imported above, requires
    bool), so the checkout's folder goes first on ``sys.path`` and DeepMind's modules are set aside
    while eval.py is imported, then restored; eval.py keeps its own module object.
    """
    deepmind = {name: sys.modules.pop(name) for name in _surface_distance_modules()}
    sys.path.insert(0, str(script.parent))
    try:
        spec = importlib.util.spec_from_file_location("brats2023_official_eval", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
        for name in _surface_distance_modules():
            del sys.modules[name]
        sys.modules.update(deepmind)
    return module


def relabelled_2023(path: Path, folder: Path) -> Path:
    """A copy of a BraTS 2020 label map (1/2/4) with 4→3, the 2023 labels the official GLI scorer reads."""
    labels, grid = load_label(path)
    return save_volume(np.where(labels == 4, 3, labels), grid, folder / path.name, dtype=np.uint8)


def brainbench_2023(pred_path: Path, ref_path: Path) -> dict[tuple[str, str], float]:
    """brats-2023-gli on the two files: {(region, metric): value}, the work get_LesionWiseResults does."""
    pred, _ = load_label(pred_path)
    ref, grid = load_label(ref_path)
    rows = evaluate_case(pred, ref, grid.spacing, EDITIONS["brats2023_gli"].regions, BRATS_2023["GLI"])
    return {(row["region"], row["metric"]): row["value"] for row in rows}


def compare_official(script: Path, repeats: int) -> None:
    """(v): official vs brainbench seconds (best of ``repeats``) and lesion-wise value agreement per team."""
    official = load_official(script)
    columns = {"lesion_dice": "LesionWise_Score_Dice", "lesion_hd95": "LesionWise_Score_HD95"}
    print(f"official {script}; case {CASE.name}, relabelled 4→3; best of {repeats}")
    header = ("team", "official s", "brainbench s", "ratio", "max|Δ| Dice", "max|Δ| HD95")
    print(f"{header[0]:<13}" + "".join(f"{h:>14}" for h in header[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = relabelled_2023(CASE / "fusion/mav.nii.gz", Path(tmp))
        for path in sorted((CASE / "segmentation").glob("*.nii.gz")):
            pred_path = relabelled_2023(path, Path(tmp))
            official_s, table = best_of(repeats, lambda: official.get_LesionWiseResults(
                str(pred_path), str(ref_path), "BraTS-GLI"))
            ours_s, ours = best_of(repeats, lambda: brainbench_2023(pred_path, ref_path))
            table = table.set_index("Labels")
            diffs = [max(abs(ours[region, metric] - float(table.loc[region, column])) for region in table.index)
                     for metric, column in columns.items()]
            cells = (f"{official_s:.3f}", f"{ours_s:.3f}", f"{official_s / ours_s:.1f}x", *(f"{d:.1e}" for d in diffs))
            print(f"{path.name.removesuffix('.nii.gz'):<13}" + "".join(f"{c:>14}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--official-script", type=Path,
                        help="eval.py of a local rachitsaluja/BraTS-2023-Metrics checkout: print (v) only")
    parser.add_argument("--official-repeats", type=int, default=3)
    args = parser.parse_args()
    if args.official_script:
        compare_official(args.official_script.resolve(), args.official_repeats)
        return
    torch.set_num_threads(1)
    ref, grid = load_label(CASE / "fusion/mav.nii.gz")
    spacing = grid.spacing
    rule = BRATS2023_LESION_RULES["GLI"]
    print(f"case {CASE.name}, shape {ref.shape}, spacing {spacing} mm; best of {args.repeats}")
    header = ("team", "(i) legacy s", "(ii) ours s", "package s", "ratio", "max|diff|",
              "(iii) MONAI Dice s", "MONAI HD95 s", "our Dice+HD95 s", "(iv) lesion-wise s")
    print("".join(f"{h:>19}" if i else f"{h:<13}" for i, h in enumerate(header)))
    for path in sorted((CASE / "segmentation").glob("*.nii.gz")):
        pred, _ = load_label(path)
        legacy_s, _ = best_of(args.repeats, lambda: evaluate_case(pred, ref, spacing, LEGACY_REGIONS, BRATS_LEGACY))
        pairs = surfel_pairs(pred, ref)
        ours_s, ours = best_of(args.repeats, lambda: [
            robust_hausdorff(p, r, spacing, if_both_empty=0.0, if_one_empty=374.0) for p, r in pairs
        ])
        package_s, package = best_of(args.repeats, lambda: package_hd95(pairs, spacing))
        diff = max(abs(a - b) for a, b in zip(ours, package))
        p_wt, r_wt = _region_mask(pred, LEGACY_REGIONS["WT"]), _region_mask(ref, LEGACY_REGIONS["WT"])
        p_t = torch.from_numpy(p_wt[None, None].astype(np.float32))
        r_t = torch.from_numpy(r_wt[None, None].astype(np.float32))
        monai_dice_s, _ = best_of(args.repeats, lambda: DiceMetric(include_background=True, reduction="none")(p_t, r_t))
        monai_hd_s, _ = best_of(args.repeats, lambda: monai_hd95(p_t, r_t, spacing))
        ours_wt_s, _ = best_of(args.repeats, lambda: (
            dice(Confusion.from_masks(p_wt, r_wt), if_both_empty=1.0),
            hd95(p_wt, r_wt, spacing, if_both_empty=0.0, if_one_empty=373.12866),
        ))
        lesion_s, _ = best_of(args.repeats, lambda: [
            brats2023_lesionwise(_region_mask(pred, labels), _region_mask(ref, labels), spacing, rule)
            for labels in LEGACY_REGIONS.values()
        ])
        cells = (legacy_s, ours_s, package_s, f"{package_s / ours_s:.1f}x", f"{diff:.1e}",
                 monai_dice_s, monai_hd_s, ours_wt_s, lesion_s)
        row = "".join(f"{c:>19.4f}" if isinstance(c, float) else f"{c:>19}" for c in cells)
        print(f"{path.name.removesuffix('.nii.gz'):<13}{row}")


if __name__ == "__main__":
    main()
