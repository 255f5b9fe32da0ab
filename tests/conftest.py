"""Shared fixtures: tiny BraTS-layout trees written as real NIfTI files, a nibabel.load counter, one torch
thread for the tiny-model tests, a temporary folder for the files brainbench derives from a release."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import pytest
import torch

from tests.helpers import write_brats_case


@pytest.fixture(autouse=True, scope="session")
def derived_files_in_a_temporary_cache(tmp_path_factory):
    """Labels brainbench derives from a release (Dou's masks grown from centroids) go to a temporary
    cache, for the tests and the CLI processes they start, never to the user's ~/.cache."""
    previous = os.environ.get("BRAINBENCH_CACHE_DIR")
    os.environ["BRAINBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("brainbench_cache"))
    yield
    if previous is None:
        del os.environ["BRAINBENCH_CACHE_DIR"]
    else:
        os.environ["BRAINBENCH_CACHE_DIR"] = previous


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


def pytest_configure(config):
    """Under pytest-xdist (``make test``: ``-n auto``), each worker, and every CLI process it starts, uses
    one thread per worker's share of the cores: two workers with PyTorch's default of one thread per core
    oversubscribe the machine (the embedded-default run took three times as long)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = threads
        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config, items):
    """The modules (and notebooks) with slow end-to-end tests first, longest first as measured (`--durations`),
    then the rest in their usual order: with ``--dist loadscope`` a module runs on one worker, so starting the long
    ones early keeps one worker from finishing them alone at the end."""
    first = ["tests/training/test_train_e2e.py", "tests/test_reproduce.py", "tests/training/test_train_2d.py",
             "tests/training/test_train_3d.py", "tests/training/test_train_families.py",
             "tests/training/test_scale.py", "tests/training/test_resume.py", "notebooks/03_compare_runs.ipynb",
             "tests/tracking/test_mlflow_ui.py", "notebooks/04_reproduce_a_table.ipynb", "notebooks/01_quickstart.ipynb"]
    rank = {name: index for index, name in enumerate(first)}

    def key(item):
        module = item.nodeid.split("::")[0]
        return rank.get(module, len(first))

    items.sort(key=key)  # stable: tests keep their order within a module
