"""Shared fixtures: tiny BraTS-layout trees written as real NIfTI files, a nibabel.load counter, one torch
thread for the tiny-model tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
import torch

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


@pytest.fixture(autouse=True, scope="module")
def one_thread(request):
    """Tiny models in tests/models and tests/inference: on the shared 2-core machine, thread hand-offs cost
    more than the convs (one thread halves those modules' time)."""
    if request.path.parent.name not in ("models", "inference"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
