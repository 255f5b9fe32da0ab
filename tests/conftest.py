"""Shared fixtures: tiny BraTS-layout trees written as real NIfTI files, a nibabel.load counter."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest

from tests.helpers import write_brats_case


@pytest.fixture
def brats_tree(tmp_path) -> Path:
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, 4):
        write_brats_case(root, f"BraTS20_Training_{i:03d}", seed=i)
    return root


@pytest.fixture
def nifti_loads(monkeypatch):
    """Count every nibabel.load call (the cache must make the second pass read none)."""
    calls = []
    real_load = nib.load

    def counting_load(*args, **kwargs):
        calls.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(nib, "load", counting_load)
    return calls
