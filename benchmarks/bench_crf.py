"""3D dense CRF (brainbench.inference.crf, spec §3.7): speed and agreement vs the authors' tool, and its effect.

Usage: python benchmarks/bench_crf.py [--reference-python /tmp/crf-reference-venv/bin/python] [--threads 2]
                                      [--skip-reference] [--skip-real] [--skip-synthetic] [--skip-exactness]
The reference venv comes from ``bash benchmarks/crf_reference_env.sh [DIR]`` (PyPI simplecrf 0.2.1.1, which
compiles Kamnitsask/dense3dCrf's densecrf sources unchanged and wraps them as ``denseCRF3D.densecrf3d``).

(1) Real 240×240×155 case (TCGA-DU-7294, BraTS-space, skull-stripped t1, t1c, t2, flair, each z-scored over
    its non-zero voxels, background left 0). Probabilities: the hnfnetv1-20 segmentation as one-hot over
    classes (0, 1, 2, 4), each class blurred with a Gaussian of σ = 2 voxels, mixed 0.9·blur + 0.1/4, then
    log-probabilities + N(0, 0.5²) i.i.d. noise (seed 0) and a softmax. Parameters: the repository example
    (configFileDenseCrf3d.txt) with its intensity σ (DWI 4.5, FLAIR 3.5) extended to 4 channels as 4.5 for
    t1, t1c and t2 and 3.5 for FLAIR, 5 mean-field iterations. Both get the same uint8 image
    (:func:`crf_intensities`) and float32 probabilities; both timings include building the kernels. Ours is
    also timed on the brain's bounding box alone (:func:`brain_box`; the image is 0 outside it).
    simplecrf reads the volume in C order but computes positions as if the first axis were the fastest,
    which is only consistent when the first and last axes have equal extents: it gets the volume as
    (x, z, y) (240, 155, 240), whose positions it then reads as (R, C, Z) = (y, z, x), and the σ in that order.
(2) Synthetic BraTS 2020 cases (brainbench.data.synth, 2 mm): noisy probabilities from the true labels
    (one-hot blurred σ = 1 voxel, mixed 0.9·blur + 0.1/4, log-probabilities + N(0, 1) noise smoothed over
    1.5 voxels and rescaled to σ = 0.8, seeded), WT Dice (labels 1, 2, 4) before and after the CRF,
    parameters picked by :func:`grid_search` on 3 validation cases, reported on 4 other cases.
(3) Exactness: the 12³ volumes of ``tests/inference/test_crf.py`` (seeds 0–7, its parameters, 5 iterations)
    against the test's exact O(N²) mean field: the relative error of brainbench's bilateral messages, and
    the MAP labels of brainbench and of dense3dCrf each compared with the exact ones — how close the
    permutohedral lattice itself, the authors' or ours, comes to the exact dense CRF.
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from brainbench.data.boxes import brain_box
from brainbench.data.synth.brats import MODALITIES, synthesize_case
from brainbench.evaluation.overlap import Confusion, dice
from brainbench.inference.crf import CRFParameters, DenseCRF3D, PermutohedralLattice, crf_intensities, grid_search

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.inference.test_crf import PARAMETERS, exact_mean_field, message_error, noisy_volume  # noqa: E402

CASE = Path(__file__).resolve().parents[1] / "../shared/data/real/brats_toolkit_TCGA-DU-7294/TCGA-DU-7294_brainles"
CHANNELS = ("t1", "t1c", "t2", "fla")
LABELS = (0, 1, 2, 4)
EXAMPLE_4CH = CRFParameters(intensity_sigma=(4.5, 4.5, 4.5, 3.5), iterations=5)

REFERENCE_SCRIPT = """
import sys, time, numpy as np, denseCRF3D
image, probabilities, sigma_pos, sigma_bil, out = sys.argv[1:6]
image, probabilities = np.load(image), np.load(probabilities)
sp, sb = [float(v) for v in sigma_pos.split(',')], [float(v) for v in sigma_bil.split(',')]
param = {'MaxIterations': %(iterations)d, 'PosRStd': sp[0], 'PosCStd': sp[1], 'PosZStd': sp[2], 'PosW': %(pw)r,
         'BilateralRStd': sb[0], 'BilateralCStd': sb[1], 'BilateralZStd': sb[2], 'ModalityNum': image.shape[3],
         'BilateralW': %(bw)r, 'BilateralModsStds': %(mods)r}
start = time.perf_counter()
labels = denseCRF3D.densecrf3d(image, probabilities, param)
print('SECONDS', time.perf_counter() - start)
np.save(out, labels)
"""


def zscore(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) → each channel z-scored over ``mask``, 0 elsewhere."""
    out = np.zeros_like(images, dtype=np.float32)
    for channel, image in enumerate(images):
        values = image[mask]
        out[channel][mask] = (values - values.mean()) / values.std()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(0))
    return (exp / exp.sum(0)).astype(np.float32)


def soft_probabilities(classes: np.ndarray, n_classes: int, blur: float, noise: float, noise_smoothing: float,
                       seed: int) -> np.ndarray:
    """(K, X, Y, Z) softmax(log(0.9·blurred one-hot + 0.1/K) + noise); noise smoothed by ``noise_smoothing``
    voxels (0: i.i.d.) and scaled to standard deviation ``noise``."""
    rng = np.random.default_rng(seed)
    logits = np.empty((n_classes, *classes.shape), dtype=np.float32)
    for k in range(n_classes):
        field = rng.standard_normal(classes.shape)
        if noise_smoothing:
            field = ndimage.gaussian_filter(field, noise_smoothing)
        blurred = ndimage.gaussian_filter((classes == k).astype(np.float32), blur)
        logits[k] = np.log(0.9 * blurred + 0.1 / n_classes) + noise * field / field.std()
    return softmax(logits)


def run_reference(python: str, uint8_image: np.ndarray, probabilities: np.ndarray,
                  parameters: CRFParameters) -> tuple[np.ndarray, float]:
    """simplecrf on (C, X, Y, Z) uint8 and (K, X, Y, Z) float32 → (labels (X, Y, Z), seconds inside the call)."""
    if uint8_image.shape[1] != uint8_image.shape[2]:
        raise SystemExit("simplecrf needs equal extents on two axes (see the module docstring)")
    # (C, x, y, z) → (x, z, y, C): simplecrf's (R, C, Z) positions are then (y, z, x)
    order = (lambda s: (s[1], s[2], s[0]))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        np.save(folder / "image.npy", np.ascontiguousarray(uint8_image.transpose(1, 3, 2, 0)))
        np.save(folder / "probabilities.npy", np.ascontiguousarray(probabilities.transpose(1, 3, 2, 0)))
        script = REFERENCE_SCRIPT % {"iterations": parameters.iterations, "pw": parameters.positional_weight,
                                     "bw": parameters.bilateral_weight, "mods": parameters.intensity_sigma}
        done = subprocess.run(
            [python, "-c", script, str(folder / "image.npy"), str(folder / "probabilities.npy"),
             ",".join(map(str, order(parameters.positional_sigma))),
             ",".join(map(str, order(parameters.bilateral_sigma))), str(folder / "labels.npy")],
            capture_output=True, text=True, check=True)
        seconds = float(next(line for line in done.stdout.splitlines() if line.startswith("SECONDS")).split()[1])
        labels = np.load(folder / "labels.npy").transpose(0, 2, 1)
    return labels.astype(np.int64), seconds


def real_case(reference_python: str | None) -> None:
    images = np.stack([nib.load(next((CASE / "raw_bet").glob(f"*_{c}_bet.nii.gz"))).get_fdata(dtype=np.float32)
                       for c in CHANNELS])
    image = zscore(images, (images != 0).any(0))
    segmentation = np.asarray(nib.load(CASE / "segmentation" / "hnfnetv1-20.nii.gz").dataobj).astype(np.int64)
    classes = np.searchsorted(LABELS, segmentation)
    probabilities = soft_probabilities(classes, len(LABELS), blur=2.0, noise=0.5, noise_smoothing=0, seed=0)
    start = time.perf_counter()
    ours = DenseCRF3D(EXAMPLE_4CH, device="cpu")(probabilities, image).argmax(0)
    ours_seconds = time.perf_counter() - start
    before = probabilities.argmax(0)
    brain = (image != 0).any(0)
    print(f"\n### 3D dense CRF on TCGA-DU-7294 (240×240×155, 4 channels, 4 classes, 5 iterations, "
          f"{torch.get_num_threads()} torch threads)\n")
    print("| implementation | seconds | voxels changed by the CRF |")
    print("|---|---:|---:|")
    print(f"| brainbench (torch, cpu) | {ours_seconds:.1f} | {np.count_nonzero(ours != before):,} |")
    box = (slice(None), *brain_box(image))
    start = time.perf_counter()
    boxed = DenseCRF3D(EXAMPLE_4CH, device="cpu")(probabilities[box], image[box]).argmax(0)
    box_seconds = time.perf_counter() - start
    print(f"| brainbench, brain box {'×'.join(map(str, boxed.shape))} only | {box_seconds:.1f} | "
          f"{np.count_nonzero(boxed != before[box[1:]]):,} (labels as on the whole volume: "
          f"{np.mean(boxed == ours[box[1:]]):.4%}) |")
    crf = DenseCRF3D(EXAMPLE_4CH, device="cpu")
    start = time.perf_counter()
    lattice = PermutohedralLattice(crf._bilateral_features(image[box]))
    build_seconds = time.perf_counter() - start
    values = torch.rand(math.prod(boxed.shape), len(LABELS))
    start = time.perf_counter()
    lattice.filter(values)
    parts = (f"\nOf the brain-box run: building the bilateral lattice {build_seconds:.1f} s ({lattice.size:,} "
             f"vertices for {values.shape[0]:,} voxels), one bilateral filter of {len(LABELS)} classes "
             f"{time.perf_counter() - start:.2f} s (6 per run)")
    if reference_python is None:
        print(parts)
        return
    theirs, theirs_seconds = run_reference(reference_python, crf_intensities(image, EXAMPLE_4CH.intensity_range),
                                           probabilities, EXAMPLE_4CH)
    print(f"| dense3dCrf via simplecrf 0.2.1.1 | {theirs_seconds:.1f} | {np.count_nonzero(theirs != before):,} |")
    changed = (ours != before) | (theirs != before)
    tumour = (ours > 0) | (theirs > 0)
    print("\n| speed-up | MAP agreement, all voxels | in the brain | tumour in either | changed by either |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {theirs_seconds / ours_seconds:.1f}× | {np.mean(ours == theirs):.4%} | "
          f"{np.mean(ours[brain] == theirs[brain]):.4%} | {np.mean(ours[tumour] == theirs[tumour]):.4%} | "
          f"{np.mean(ours[changed] == theirs[changed]):.4%} |")
    print(parts)


def whole_tumour_dice(labels: np.ndarray, reference: np.ndarray) -> float:
    """Dice of classes 1–3 (BraTS labels 1, 2, 4) merged, the BraTS WT region."""
    return dice(Confusion.from_masks(labels > 0, reference > 0), if_both_empty=1.0)


def synthetic_case(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    case = synthesize_case(seed=0, index=index, spacing_mm=2.0)
    image = zscore(np.stack([case.images[m] for m in ("t1", "t1ce", "t2", "flair")]), case.brain_mask)
    classes = np.searchsorted(LABELS, case.seg)
    probabilities = soft_probabilities(classes, len(LABELS), blur=1.0, noise=0.8, noise_smoothing=1.5,
                                       seed=100 + index)
    return probabilities, image, classes


def synthetic() -> None:
    assert set(MODALITIES) == {"t1", "t1ce", "t2", "flair"}
    validation = [synthetic_case(i) for i in range(3)]
    test = [synthetic_case(i) for i in range(3, 7)]
    # 2 mm voxels: the example's spatial σ (voxels of 1 mm) halved
    base = CRFParameters(positional_sigma=(1.5, 1.5, 1.5), bilateral_sigma=(8.5, 6.0, 5.0),
                         intensity_sigma=(4.5, 4.5, 4.5, 3.5), iterations=5)
    grid = {"positional_weight": [0.0, 3.0], "bilateral_weight": [3.0, 10.0, 30.0],
            "intensity_sigma": [(s,) * 4 for s in (5.0, 20.0)]}
    start = time.perf_counter()
    table = grid_search(validation, grid, whole_tumour_dice, base=base, device="cpu")
    search_seconds = time.perf_counter() - start
    print(f"\n### Grid search on 3 synthetic validation cases (2 mm, {len(table)} combinations, "
          f"{search_seconds:.0f} s), top 5\n")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.head(5).itertuples(index=False):
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    best = replace(base, **{name: table.loc[0, name] for name in grid})
    crf = DenseCRF3D(best, device="cpu")
    print("\n### WT Dice on 4 synthetic test cases, noisy model before/after the CRF (best validation parameters)\n")
    print("| case | before | after |")
    print("|---|---:|---:|")
    before, after = [], []
    for index, (probabilities, image, classes) in zip(itertools.count(3), test):
        before.append(whole_tumour_dice(probabilities.argmax(0), classes))
        after.append(whole_tumour_dice(crf(probabilities, image).argmax(0), classes))
        print(f"| synthetic {index} | {before[-1]:.4f} | {after[-1]:.4f} |")
    print(f"| **mean** | **{np.mean(before):.4f}** | **{np.mean(after):.4f}** |")


def exactness(reference_python: str | None, seeds: range = range(8)) -> None:
    print("\n### Against the exact mean field on 12³ volumes (tests/inference/test_crf.py, 5 iterations)\n")
    print("| seed | labels the exact CRF changes | message error, brainbench | MAP = exact, brainbench | "
          "MAP = exact, dense3dCrf | brainbench = dense3dCrf |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        probabilities, image = noisy_volume(seed)
        exact = exact_mean_field(probabilities, image, PARAMETERS)
        ours = DenseCRF3D(PARAMETERS, device="cpu")(probabilities, image).argmax(0)
        row = [f"{np.mean(exact != probabilities.argmax(0)):.1%}",
               f"{message_error(probabilities, image, PARAMETERS):.2%}", f"{np.mean(ours == exact):.2%}"]
        if reference_python is None:
            row += ["not run", "not run"]
        else:
            theirs, _ = run_reference(reference_python, crf_intensities(image, PARAMETERS.intensity_range),
                                      probabilities, PARAMETERS)
            row += [f"{np.mean(theirs == exact):.2%}", f"{np.mean(ours == theirs):.2%}"]
        print(f"| {seed} | " + " | ".join(row) + " |")
    probabilities, image = noisy_volume(0)
    features = DenseCRF3D(PARAMETERS, device="cpu")._bilateral_features(image)
    print("\n| bilateral lattice on seed 0 | vertices | message error |\n|---|---:|---:|")
    for scale in (0.9, 1.0, 1.1, 1.2):  # features × scale: a kernel whose σ are 1/scale of the exact one's
        lattice = PermutohedralLattice(features * scale)
        error = message_error(probabilities, image, PARAMETERS, lattices=[lattice])
        print(f"| σ × {1 / scale:.2f} | {lattice.size:,} | {error:.2%} |")
    generator = torch.Generator().manual_seed(0)
    for count in (4, 16):
        shifted = [PermutohedralLattice(features + 5 * torch.rand(1, features.shape[1], generator=generator))
                   for _ in range(count)]
        error = message_error(probabilities, image, PARAMETERS, lattices=shifted)
        print(f"| mean of {count} randomly shifted lattices | {sum(x.size for x in shifted):,} | {error:.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", default="/tmp/crf-reference-venv/bin/python")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-exactness", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_reference and not Path(args.reference_python).exists():
        sys.exit(f"{args.reference_python} missing: run bash benchmarks/crf_reference_env.sh first, "
                 f"or pass --skip-reference")
    if not args.skip_real:
        real_case(None if args.skip_reference else args.reference_python)
    if not args.skip_exactness:
        exactness(None if args.skip_reference else args.reference_python)
    if not args.skip_synthetic:
        synthetic()


if __name__ == "__main__":
    main()
