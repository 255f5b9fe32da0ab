"""The config tree: shipped in the package, found from any folder, extended by a user's folder, and
a model config that brings its own sampler and preprocessing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from brainbench.config import compose
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
MODEL_NEEDS = {
    "deepmedic": ("ForegroundBackgroundSampler", "ZScoreInBrain", 10),
    "havaei_twopath": ("ClassFrequencySampler", "PercentileClip", 128),
    "havaei_inputcascade": ("ClassFrequencySampler", "PercentileClip", 128),
    "havaei_localcascade": ("ClassFrequencySampler", "PercentileClip", 128),
    "havaei_mfcascade": ("ClassFrequencySampler", "PercentileClip", 128),
    "pereira_hgg": ("ClassFrequencySampler", "N4BiasCorrection", 128),
    "pereira_lgg": ("ClassFrequencySampler", "N4BiasCorrection", 128),
}


def _job(stdout: str) -> dict:
    return yaml.safe_load(stdout)


@pytest.mark.parametrize("model", list(MODEL_NEEDS))
def test_a_model_brings_its_sampler_and_preprocessing(model, tmp_path):
    sampler, first_stage, batch = MODEL_NEEDS[model]
    result = run_cli("train", f"model={model}", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = _job(result.stdout)
    assert job["sampler"]["centres"]["_target_"].endswith(sampler)
    assert job["sampler"]["batch_size"] == batch
    assert job["preprocess"]["stages"][0]["_target_"].endswith(first_stage)


def test_the_user_still_overrides_what_a_model_brings():
    cfg = compose(["model=havaei_twopath", "sampler=deepmedic", "preprocess=deepmedic"])
    assert cfg.sampler.centres._target_.endswith("ForegroundBackgroundSampler")
    assert cfg.preprocess.stages[0]._target_.endswith("ZScoreInBrain")
    experiment = compose(["experiment=pereira2016_brats2013_hgg", "data.root=/data/BRATS2013"])
    assert experiment.preprocess.stages[0]._target_.endswith("N4BiasCorrection")


def test_outside_the_repository_with_a_user_config_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    (outside / "myconf" / "model").mkdir(parents=True)
    (outside / "myconf" / "model" / "deepmedic_narrow.yaml").write_text(
        "defaults: [deepmedic, _self_]\nname: deepmedic_narrow\nnet:\n  feature_maps: [8, 8, 8, 8, 8, 8, 12, 12]\n")
    plain = run_cli("train", "--cfg", "job", cwd=outside)
    assert plain.returncode == 0, plain.stderr
    assert _job(plain.stdout)["model"]["name"] == "deepmedic"
    extended = run_cli("train", "--config-dir", "myconf", "model=deepmedic_narrow", "--cfg", "job", cwd=outside)
    assert extended.returncode == 0, extended.stderr
    job = _job(extended.stdout)
    assert job["model"]["name"] == "deepmedic_narrow" and job["model"]["net"]["feature_maps"][-1] == 12
    assert job["model"]["segments"]["_target_"].endswith("TwoPathwaySegments")  # the rest from the shipped file
    assert not (outside / "mlflow.db").exists() and not (outside / "runs").exists()


@pytest.mark.slow
def test_an_installed_wheel_finds_its_configs_and_published_tables(tmp_path):
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ next to the sources
    for folder in ("brainbench", "conf", "leaderboards"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("brainbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "brainbench/conf/config.yaml" in names and "brainbench/conf/model/deepmedic.yaml" in names
    assert "brainbench/leaderboards/published/akkus2017_table4.csv" in names
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    probe = ("import brainbench, sys; from brainbench.evaluation.leaderboard import load_published; "
             "print(brainbench.__file__); print(len(load_published('akkus2017_table4'))); "
             "from brainbench.cli import main; sys.argv=['brainbench']; main(['train', '--info', 'searchpath'])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(site)), "the wheel, not the checkout, must be imported"
    assert int(lines[1]) > 0 and "pkg://brainbench.conf" in result.stdout
