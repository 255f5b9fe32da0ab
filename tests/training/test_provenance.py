"""Provenance comes from the data folder, config errors come first and in one line (issue 9, items 1–2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import TINY_DEEPMEDIC
from tests.helpers import run_cli as brainbench


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("provenance") / "synthetic_brats2020"
    result = brainbench("data", "synth", "--out", str(root), "--cases", "4", cwd=root.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (root / "brainbench_synthetic.json").is_file()
    return root


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("brainbench: error:")]
    return line


def test_real_config_on_synthetic_folder_is_refused(synthetic_root, tmp_path):
    line = _one_error_line(brainbench("train", "data=real", f"data.root={synthetic_root}", cwd=tmp_path))
    assert "data.source=real" in line and "brainbench_synthetic.json" in line and str(synthetic_root) in line
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was opened


def test_synthetic_config_on_release_folder_is_refused(synthetic_root, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(synthetic_root, release, ignore=shutil.ignore_patterns("brainbench_synthetic.json"))
    line = _one_error_line(brainbench("train", "data.synth=null", f"data.root={release}", cwd=tmp_path))
    assert "data.source=synthetic" in line and "has no brainbench_synthetic.json" in line


def test_real_without_root_is_one_line_before_any_data_work(tmp_path):
    line = _one_error_line(brainbench("train", "data=real", cwd=tmp_path))
    assert line == ("brainbench: error: data.root is required: data=real reads a challenge release from disk "
                    "(add data.root=/path/to/the/release as unpacked)")
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("+model.optimizer.bogus=1", "config model.optimizer: RMSPropNesterov.__init__() got an unexpected keyword "
                                 "argument 'bogus'"),
    ("model.net._target_=brainbench.models.nope.Net", "config model.net: "),
    ("inference.precision=fp8", "inference.precision='fp8': expected auto, 32, bf16, 16"),
    ("fold=5", "fold=5 is outside 0..4 (data.datamodule.folds=5)"),
])
def test_config_errors_surface_before_synthesis(tmp_path, override, expected):
    """A fresh folder: synthesis would write datasets/ first; the error must come before it."""
    line = _one_error_line(brainbench("train", override, cwd=tmp_path))
    assert expected in line
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_release_folder_trains_and_is_tagged_real(synthetic_root, tmp_path):
    """The same cases without the generator record read as a release: the run says real."""
    release = tmp_path / "MICCAI_BraTS2020_TrainingData"
    shutil.copytree(synthetic_root, release, ignore=shutil.ignore_patterns("brainbench_synthetic.json"))
    result = brainbench("train", "data=real", f"data.root={release}", *TINY_DEEPMEDIC, "trainer.max_epochs=1",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"Data source: real ({release})" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("brats2020").experiment_id])
    assert run.data.tags["data_source"] == "real"
    assert "SYNTHETIC" not in result.stdout
