"""Organiser-scale scoring: a BraTS 2021-sized folder (1,251 cases), serial vs parallel, same numbers.

Usage: python benchmarks/bench_evaluate_scale.py [--cases 1251] [--workers 2] [--data-dir DIR] [--progress]

Builds (once; cached in ``--data-dir``, default ``$TMPDIR/brainbench-bench-evaluate-scale``) a flat
reference folder ``ref/BraTS2021_00000.nii.gz …`` and a prediction folder ``pred/`` of gzip'd uint8
NIfTI label maps, 240×240×155 at 1 mm, labels 0/1/2/4. Every case is a perturbed copy of one of the
six real masks of ../shared/data/real/brats_toolkit_TCGA-DU-7294 (five algorithm outputs and their
fusion): references are flipped, rescaled, moved, given an enhancing rim and edema of random width;
predictions are references shifted, dilated or eroded, with label confusions, missed enhancing tumour,
false-positive blobs and the odd empty prediction. Both folders are written by all cores.

Then scores the folder under the BraTS legacy protocol (brats-legacy-2017-2021: WT, TC, ET × Dice,
HD95, sensitivity, specificity) with ``evaluate_folders``, once serially and once with ``--workers``
processes, wall time including reading every file, checks that the two metric tables and problem
lists are identical, and prints a small table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from brainbench.evaluation.evaluate import evaluate_folders
from brainbench.evaluation.protocols import PROTOCOLS
from brainbench.io import Grid, save_volume

SOURCE = Path(__file__).resolve().parents[2] / "shared/data/real/brats_toolkit_TCGA-DU-7294/TCGA-DU-7294_brainles"
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
ALLOWED = {0, 1, 2, 4}
PROTOCOL = "brats-legacy-2017-2021"
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "brainbench-bench-evaluate-scale"
GENERATOR_VERSION = 1
"""Bump when the perturbations change: cached folders of another version are rebuilt."""


def source_paths() -> list[Path]:
    paths = sorted((SOURCE / "segmentation").glob("*.nii.gz")) + [SOURCE / "fusion/mav.nii.gz"]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing or len(paths) < 2:
        sys.exit(f"real masks not found: {missing or SOURCE}")
    return paths


def case_id(index: int) -> str:
    return f"BraTS2021_{index:05d}"


# -- perturbations ---------------------------------------------------------------------------------

_BALL = ndimage.generate_binary_structure(3, 1)


def _tumour_crop(labels: np.ndarray) -> np.ndarray:
    box = ndimage.find_objects((labels > 0).astype(np.uint8))[0]
    return labels[box]


def _reference(base: np.ndarray, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A BraTS-like reference from one real mask: flipped, rescaled (0.8–2× per axis, so tumours of
    ~10–200 ml), with necrosis, an enhancing rim (absent in ~10 % of cases) and edema of random width,
    placed at a random position inside the 240×240×155 grid."""
    crop = _tumour_crop(base)
    if rng.random() < 0.5:
        crop = crop[::-1]
    zoom = rng.uniform(0.8, 2.0, size=3)
    crop = ndimage.zoom(crop, zoom, order=0, grid_mode=True, mode="grid-constant")
    core = np.isin(crop, (1, 4))
    whole = crop > 0
    core = ndimage.binary_dilation(core, _BALL, iterations=int(rng.integers(0, 3)))
    whole = ndimage.binary_dilation(whole, _BALL, iterations=int(rng.integers(0, 4))) | core
    labels = np.where(whole, 2, 0).astype(np.uint8)
    labels[core] = 1
    if rng.random() < 0.9:  # enhancing rim around the necrotic core
        rim = core & ~ndimage.binary_erosion(core, _BALL, iterations=int(rng.integers(1, 4)))
        labels[rim] = 4
    return _place(labels, rng, shape)


def _place(labels: np.ndarray, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    volume = np.zeros(shape, dtype=np.uint8)
    labels = labels[tuple(slice(0, min(n, s - 4)) for n, s in zip(labels.shape, shape))]
    corner = [int(rng.integers(2, s - n - 1)) for n, s in zip(labels.shape, shape)]
    volume[tuple(slice(c, c + n) for c, n in zip(corner, labels.shape))] = labels
    return volume


def _prediction(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible submission for ``ref``: shifted by up to 2 voxels, tumour grown or shrunk, enhancing
    tumour partly or wholly labelled as necrosis, sometimes a false-positive blob far away, and in ~1 % of
    cases nothing at all."""
    if rng.random() < 0.01:
        return np.zeros_like(ref)
    box = ndimage.find_objects((ref > 0).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 8, 0), min(s.stop + 8, n)) for s, n in zip(box, ref.shape))
    crop = np.roll(ref[box], tuple(int(v) for v in rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    whole, core, enhancing = crop > 0, np.isin(crop, (1, 4)), crop == 4
    change = int(rng.integers(-2, 3))
    if change > 0:
        whole = ndimage.binary_dilation(whole, _BALL, iterations=change)
    elif change < 0:
        whole = ndimage.binary_erosion(whole, _BALL, iterations=-change)
    if rng.random() < 0.5:
        core = ndimage.binary_dilation(core, _BALL) & whole
    labels = np.where(whole, 2, 0).astype(np.uint8)
    labels[core & whole] = 1
    labels[enhancing & whole] = 4
    if rng.random() < 0.3:  # part of the enhancing tumour called necrosis
        cut = int(rng.integers(0, labels.shape[2]))
        labels[:, :, cut:][labels[:, :, cut:] == 4] = 1
    if rng.random() < 0.05:  # enhancing tumour missed altogether
        labels[labels == 4] = 1
    prediction = ref.copy()
    prediction[box] = labels
    if rng.random() < 0.1:  # a false-positive blob elsewhere in the brain
        centre = [int(rng.integers(40, n - 40)) for n in ref.shape[:2]] + [int(rng.integers(30, ref.shape[2] - 30))]
        radius = int(rng.integers(2, 6))
        grid = np.ogrid[tuple(slice(c - radius, c + radius + 1) for c in centre)]
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
        region = prediction[tuple(slice(c - radius, c + radius + 1) for c in centre)]
        region[ball & (region == 0)] = 2
    return prediction


def _write_case(job: tuple[int, str]) -> None:
    index, data_dir = job
    root = Path(data_dir)
    ref_path, pred_path = root / "ref" / f"{case_id(index)}.nii.gz", root / "pred" / f"{case_id(index)}.nii.gz"
    if ref_path.is_file() and pred_path.is_file():
        return
    sources = source_paths()
    base_image = nib.load(sources[index % len(sources)])
    base = np.asarray(base_image.dataobj, dtype=np.uint8)
    grid = Grid(shape=tuple(base.shape), affine=base_image.affine)
    rng = np.random.default_rng([GENERATOR_VERSION, index])
    ref = _reference(base, rng, grid.shape)
    pred = _prediction(ref, rng)
    save_volume(ref, grid, ref_path, dtype=np.uint8)
    save_volume(pred, grid, pred_path, dtype=np.uint8)


def build(data_dir: Path, cases: int, workers: int) -> Path:
    """``data_dir/brats2021-<cases>`` with ``ref/`` and ``pred/``; only missing cases are written."""
    root = data_dir / f"brats2021-{cases}"
    stamp = root / "generator.json"
    wanted = {"version": GENERATOR_VERSION, "cases": cases, "sources": [p.name for p in source_paths()]}
    if root.exists() and (not stamp.is_file() or json.loads(stamp.read_text()) != wanted):
        shutil.rmtree(root)
    for folder in ("ref", "pred"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    todo = [index for index in range(cases)
            if not ((root / "ref" / f"{case_id(index)}.nii.gz").is_file()
                    and (root / "pred" / f"{case_id(index)}.nii.gz").is_file())]
    if todo:
        start = time.perf_counter()
        jobs = [(index, str(root)) for index in todo]
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_write_case, jobs, chunksize=4), start=1):
                if done % 100 == 0 or done == len(jobs):
                    print(f"\rwriting cases: {done}/{len(jobs)}", end="", file=sys.stderr, flush=True)
        print(f"\nwrote {len(todo)} cases in {time.perf_counter() - start:.1f} s with {workers} processes",
              file=sys.stderr)
    stamp.write_text(json.dumps(wanted))
    return root


def score(root: Path, cases: int, workers: int, progress: bool):
    references = {case_id(index): root / "ref" / f"{case_id(index)}.nii.gz" for index in range(cases)}
    start = time.perf_counter()
    result = evaluate_folders(root / "pred", references, REGIONS, PROTOCOLS[PROTOCOL], ALLOWED,
                              workers=workers, progress=progress)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1251, help="cases in the folder (BraTS 2021 training: 1251)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"where the generated folders are cached between runs (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--progress", action="store_true", help="show the progress bar (stderr) while scoring")
    args = parser.parse_args()
    root = build(args.data_dir, args.cases, max(os.cpu_count() or 1, 1))
    size_mb = sum(path.stat().st_size for path in root.rglob("*.nii.gz")) / 1e6
    print(f"{args.cases} cases of 240×240×155 uint8 in {root} ({size_mb:.0f} MB gzip'd, ref + pred); "
          f"{os.cpu_count()} CPU cores; protocol {PROTOCOL}")
    serial_s, serial = score(root, args.cases, 1, args.progress)
    parallel_s, parallel = score(root, args.cases, args.workers, args.progress)
    pd.testing.assert_frame_equal(serial.metrics, parallel.metrics, check_exact=True)
    assert serial.metrics["value"].to_numpy().tobytes() == parallel.metrics["value"].to_numpy().tobytes()
    assert serial.problems == parallel.problems
    print(f"{'cases':>6}{'workers':>9}{'wall s':>9}{'s/case':>9}{'speed-up':>10}")
    for workers, seconds in ((1, serial_s), (args.workers, parallel_s)):
        print(f"{args.cases:>6}{workers:>9}{seconds:>9.1f}{seconds / args.cases:>9.4f}{serial_s / seconds:>9.2f}×")
    rows = len(serial.metrics)
    print(f"metrics rows: {rows} ({rows // args.cases} per case), identical (bit for bit) serial vs "
          f"{args.workers} workers; problem lines: {len(serial.problems)}, identical")


if __name__ == "__main__":
    main()
