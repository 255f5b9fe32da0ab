"""The 3D family through `brainbench train` (issue 10): DeepMedic+ with the CRF, the 3D U-Net, the loss
group, the full-width configs and the paper experiments."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from brainbench.challenges import EDITIONS
from brainbench.config import compose
from tests.helpers import held_out_dice_and_baseline
from tests.helpers import run_cli as brainbench

EXPERIMENT_DIR = Path(__file__).resolve().parents[2] / "conf" / "experiment"
COMMON = ["data.synth.n_cases=4", "data.datamodule.val_fraction=0.25", "data.datamodule.test_fraction=0.25",
          "trainer.enable_progress_bar=false"]


def logged_run(workdir: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def trains_and_beats_a_trivial_labelling(workdir: Path, edition: str, *overrides: str):
    """``brainbench train challenge=EDITION OVERRIDES`` in ``workdir`` succeeds and its held-out mean Dice beats
    the best constant labelling of the brain; returns the CLI result and the run's MLflow record."""
    result = brainbench("train", f"challenge={edition}", *overrides, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    achieved, baseline, value = held_out_dice_and_baseline(workdir, edition)
    assert achieved > baseline, f"mean Dice {achieved:.3f} ≤ {baseline:.3f} of the brain labelled {value}"
    return result, logged_run(workdir)


def logged_config(run):
    """The run's resolved config as written in its folder (the classes are not MLflow params)."""
    return OmegaConf.load(Path(run.data.tags["output_dir"]) / "config.yaml")


@pytest.mark.slow
def test_deepmedic_plus_with_the_crf_and_ce_dice_beats_a_trivial_labelling(tmp_path):
    _, run = trains_and_beats_a_trivial_labelling(
        tmp_path, "brats2020", "model=deepmedic_plus", "postprocess=crf", "crf=brats", "loss=ce_dice", *COMMON,
        "model.net.feature_maps=[8,8,8,8,8,8,12,12]", "model.net.fc_feature_maps=[16,16]",
        "sampler.segments_per_epoch=200", "sampler.val_segments=10", "trainer.max_epochs=3")
    assert run.data.params["postprocess.name"] == "crf" and run.data.params["model.name"] == "deepmedic_plus"
    assert logged_config(run).model.net._target_.endswith("DeepMedicPlus")
    assert run.data.params["inference.brain_box"] == "True"
    assert "train_cross_entropy_dice" in run.data.metrics and "val_cross_entropy_dice" in run.data.metrics


@pytest.mark.slow
def test_unet3d_on_mrbrains13_beats_a_trivial_labelling(tmp_path):
    _, run = trains_and_beats_a_trivial_labelling(
        tmp_path, "mrbrains13", "model=unet3d", "data.synth.spacing_mm=[2.0,2.0,3.0]", *COMMON,
        "model.net.widths=[8,16,32]", "model.segments.patch_size=32", "sampler.segments_per_epoch=40",
        "sampler.batch_size=2", "sampler.val_segments=4", "trainer.max_epochs=4")
    assert logged_config(run).model.net._target_.endswith("UNet3D") and "train_cross_entropy" in run.data.metrics


@pytest.mark.slow
def test_brosch_cen_with_the_sensitivity_specificity_loss_beats_a_trivial_labelling(tmp_path):
    _, run = trains_and_beats_a_trivial_labelling(
        tmp_path, "msseg2016", "model=brosch_cen", *COMMON, "model.net.kernel_sizes=[5,3]", "model.net.filters=[8,8]",
        "sampler.segments_per_epoch=16", "trainer.max_epochs=4")
    config = logged_config(run)
    assert config.model.net._target_.endswith("BroschCEN") and run.data.params["model.net.shortcut"] == "True"
    assert config.loss._target_.endswith("SensitivitySpecificity") and run.data.params["loss.r"] == "0.05"
    assert "train_sensitivity_specificity" in run.data.metrics and "val_sensitivity_specificity" in run.data.metrics


@pytest.mark.slow
def test_dou_cascade_on_valdo2021_beats_a_trivial_labelling_and_mines_hard_negatives(tmp_path):
    # 7 subjects (5 train, one of them without CMBs; 1 validation; the test subject has one CMB), small widths
    result, run = trains_and_beats_a_trivial_labelling(
        tmp_path, "valdo2021", "model=dou_cascade", "challenge.adapter.modalities=[t2s]", "data.synth.n_cases=7",
        "data.datamodule.val_fraction=0.15", "data.datamodule.test_fraction=0.15", "trainer.enable_progress_bar=false",
        "model.net.screening.maps=[16,16,16,32]", "model.net.discrimination.maps=[16,32]",
        "model.net.discrimination.hidden=[128,32]", "sampler.segments_per_epoch=640", "sampler.val_segments=64",
        "trainer.max_epochs=6")
    log = result.stdout + result.stderr  # Hydra's job log goes to stdout
    mined = re.search(r"hard-negative mining over \d+ cases: (\d+) CMB centres, (\d+) hard negatives", log)
    assert mined and int(mined[1]) > 0 and int(mined[2]) > 0, log[-3000:]
    assert {"screening-train_loss", "discrimination-train_loss"} <= set(run.data.metrics)
    assert run.data.metrics["lesion_tpr_cmb"] > 0


@pytest.mark.parametrize("model, edition", [("deepmedic", "brats2020"), ("deepmedic_plus", "brats2020"),
                                            ("unet3d", "mrbrains13"), ("brosch_cen", "msseg2016"),
                                            ("dou_cascade", "dou2016")])
def test_full_width_config_runs_one_forward_pass(model, edition):
    cfg = compose([f"model={model}", f"challenge={edition}"])
    spec = EDITIONS[edition]
    torch.manual_seed(0)
    net = instantiate(cfg.model.net, in_channels=len(spec.modalities), n_classes=spec.n_classes).eval()
    extractor = instantiate(cfg.model.segments)
    if model == "unet3d":
        extractor = instantiate(cfg.model.segments, patch_size=16)  # full widths, a small patch
    rng = np.random.default_rng(0)
    image = rng.normal(size=(len(spec.modalities), 40, 40, 40)).astype(np.float32)
    label = rng.integers(0, spec.n_classes, size=(40, 40, 40))
    inputs, target = extractor(image, label, (20, 20, 20), rng, augment=False)
    with torch.no_grad():
        logits = net(*(torch.from_numpy(np.ascontiguousarray(x))[None] for x in inputs))
    assert logits.shape == (1, spec.n_classes, *target.shape) and torch.isfinite(logits).all()


NEW_EXPERIMENTS = ["kamnitsas2017_brats2015_crf", "kamnitsas2017_isles2015_crf", "cicek2016_mrbrains13_unet3d",
                   "brosch2016_isbi2015", "brosch2016_miccai2008", "dou2016_cmb"]


@pytest.mark.parametrize("experiment", NEW_EXPERIMENTS)
def test_paper_experiments_compose_and_say_where_each_value_comes_from(experiment):
    cfg = compose([f"experiment={experiment}", "data.root=/data"])
    lines = (EXPERIMENT_DIR / f"{experiment}.yaml").read_text().splitlines()
    values = [line for line in lines if re.match(r"^\s*(- )?[^#\s][^#]*:\s*[^\s#][^#]*", line)]
    assert len(values) >= 3
    for line in values:
        assert re.search(r"\bpaper\b.*§|\breconstruction\b", line.partition("#")[2]), line
    assert cfg.data.source == "real"
    if experiment.startswith("kamnitsas"):
        assert cfg.postprocess.name == "crf" and cfg.crf._target_.endswith("DenseCRF3D")
        assert cfg.trainer.max_epochs == 35 and cfg.model.name == "deepmedic"
        assert len(cfg.crf.parameters.intensity_sigma) == len(EDITIONS[cfg.challenge.edition].modalities)


@pytest.mark.parametrize("overrides, message", [
    (["postprocess=crf"], "postprocess=crf needs CRF parameters: add crf=brats or crf=isles"),
    (["crf=brats"], "crf parameters are set but postprocess=none: add postprocess=crf"),
    (["challenge=isles2015_siss", "postprocess=crf", "crf=brats", "crf.parameters.intensity_sigma=[1,2]"], "crf.intensity_sigma has 2 values but the image has 4 modalities"),
])
def test_crf_config_errors_are_one_line_before_data_work(tmp_path, overrides, message):
    result = brainbench("train", *overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "mlflow.db").exists()
