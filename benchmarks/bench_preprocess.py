"""Preprocessing costs: cache first vs second run, and N4 on a BraTS-size volume.

Usage: python benchmarks/bench_preprocess.py [--cases 6] [--preset deepmedic] [--threads 2] [--workdir DIR]

(i) Synthetic BraTS 2020 cases at 1 mm (``synthesize_brats``) preprocessed with a preset through
``PreprocessedCache``: a first run into an empty cache, then a second run with a fresh cache object
over the same cases (fit + load, then every voxel read once). Acceptance: second < 10 % of first.
(ii) N4 (``N4BiasCorrection`` defaults: shrink factor 4, iterations 50/50/30/20) on the real
240×240×155 T1 of ../shared/data/real/brats_toolkit_TCGA-DU-7294. Acceptance: ≤ 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from brainbench.challenges import ChallengeAdapter
from brainbench.data.cache import PreprocessedCache
from brainbench.io import load_volume
from brainbench.data.preprocess import CaseArrays, N4BiasCorrection
from brainbench.data.synth.brats import synthesize_brats

CONF = Path(__file__).resolve().parents[1] / "brainbench" / "conf"
T1 = (Path(__file__).resolve().parents[2]
      / "shared/data/real/brats_toolkit_TCGA-DU-7294/TCGA-DU-7294_brainles/raw_bet/TCGA-DU-7294_t1_bet.nii.gz")


def preset(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return instantiate(compose("config", overrides=[f"preprocess={name}"]).preprocess)


def run_once(cache_dir: Path, name: str, cases, adapter) -> tuple[float, float]:
    """Seconds to fit + load every case, and to also read every voxel of the loaded arrays."""
    start = time.perf_counter()
    cache = PreprocessedCache(cache_dir, preset(name))
    cache.fit(cases[: max(1, len(cases) - 2)], adapter)
    entries = [cache.load(case, adapter) for case in cases]
    opened = time.perf_counter() - start
    total = sum(float(np.asarray(e.image).sum()) + int(np.asarray(e.label).sum()) for e in entries)
    assert np.isfinite(total)
    return opened, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--preset", default="deepmedic")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and cache here (default: temporary)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = args.workdir or Path(tmp)
        start = time.perf_counter()
        synthesize_brats(work / "brats2020_1mm", n_cases=args.cases, spacing_mm=1.0, seed=0)
        print(f"synthesised {args.cases} BraTS 2020 cases at 1 mm in {time.perf_counter() - start:.1f} s")
        adapter = ChallengeAdapter("brats2020")
        cases = adapter.discover(work / "brats2020_1mm")
        shape = load_volume(cases[0].images["flair"])[0].shape
        cache_dir = work / f"cache-{args.preset}-{time.time_ns()}"
        first = run_once(cache_dir, args.preset, cases, adapter)
        second = run_once(cache_dir, args.preset, cases, adapter)
        print(f"(i) cache, preprocess={args.preset}, {len(cases)} cases of 4×{'×'.join(map(str, shape))}")
        for label, (opened, read) in (("first run (empty cache) ", first), ("second run (same config)", second)):
            print(f"    {label}  : {opened:7.2f} s fit+load, {read:7.2f} s incl. reading every voxel")
        print(f"    second / first           : {second[0] / first[0]:7.2%} (fit+load), "
              f"{second[1] / first[1]:.2%} (incl. reading)")

    image, grid = load_volume(T1)
    arrays = CaseArrays(images=image[None], modalities=("t1",), grid=grid)
    stage = N4BiasCorrection()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        stage(arrays)
        times.append(time.perf_counter() - start)
    print(f"(ii) N4 on {T1.name} {'×'.join(map(str, image.shape))} at {grid.spacing[0]:.0f} mm, shrink factor "
          f"{stage.shrink_factor}, iterations {stage.iterations}, {args.threads} threads: "
          f"best {min(times):.2f} s, worst {max(times):.2f} s of {len(times)}")


if __name__ == "__main__":
    main()
