"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def write_brats_case(root: Path, case_id: str, shape=(24, 24, 20), seed: int = 0, suffix: str = ".nii.gz",
                     modalities=("flair", "t1", "t1ce", "t2"), seg_name: str | None = None) -> Path:
    """A BraTS-2020-layout case: brain block of random intensities, a tumour with labels 1/2/4."""
    rng = np.random.default_rng(seed)
    folder = root / case_id
    brain = np.zeros(shape, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    for modality in modalities:
        image = np.where(brain, rng.normal(100, 20, shape), 0).astype(np.float32)
        write_nifti(folder / f"{case_id}_{modality}{suffix}", image)
    seg = np.zeros(shape, np.uint8)
    c = np.array(shape) // 2
    seg[c[0] - 4 : c[0] + 4, c[1] - 4 : c[1] + 4, c[2] - 3 : c[2] + 3] = 2
    seg[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 4
    seg[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
    write_nifti(folder / f"{seg_name or case_id + '_seg'}{suffix}", seg)
    return folder


TINY_DEEPMEDIC = [
    "model.net.feature_maps=[4,4,4,4,4,4,6,6]",
    "model.net.fc_feature_maps=[8,8]",
    "sampler.segments_per_epoch=20",
    "sampler.val_segments=10",
    "sampler.batch_size=5",
    "trainer.max_epochs=2",
    "data.datamodule.val_fraction=0.25",
    "data.datamodule.test_fraction=0.25",
]
"""Overrides for a DeepMedic small enough to train in seconds on CPU (any data source)."""

TINY = [*TINY_DEEPMEDIC, "data.synth.n_cases=4"]
"""The tiny DeepMedic on four synthetic cases."""


def run_cli(*args: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``brainbench ARGS`` as a user runs it: a fresh Python process in ``cwd``, output captured."""
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "brainbench.cli", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
