"""Scale-out by configuration alone: Lightning DDP on 2 CPU processes, submitit_local and Ray sweeps, an
Optuna search.

Every run goes through the real CLI in a fresh process, as a user runs it. The runs share one working
folder, so the synthetic cases are written and cached once; each test has its own MLflow store. A test
whose plugin is not installed is skipped, naming the extra that installs it (the Ray extra is not in the
dev environment: its pins conflict with joblib 1.6).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import DDPStrategy

from brainbench.config import CONFIG_MODULE
from brainbench.config import compose as compose_train
from brainbench.config import register
from brainbench.pipeline import build_parts, loader_settings, prepare_datamodule
from tests.helpers import TINY, held_out_metrics
from tests.helpers import run_cli as brainbench

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                                  reason="the optuna extra (hydra-optuna-sweeper 1.3.0, optuna<3) is not installed: "
                                         "pip install -e '.[optuna]'")
ONE_EPOCH = [*TINY, "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
"""The sweeps' jobs: what they check needs one epoch only."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale")


def store(workdir: Path, name: str) -> tuple[MlflowClient, list[str]]:
    """A client of ``workdir/<name>.db`` and the overrides that log to it, in experiment ``name``."""
    uri = f"sqlite:///{workdir / name}.db"
    return MlflowClient(tracking_uri=uri), [f"logger.tracking_uri={uri}", f"logger.experiment_name={name}"]


def runs_of(client: MlflowClient, experiment: str) -> list:
    """The runs of ``experiment`` that a job made (a sweep's parent run, tagged kind=sweep, left out)."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [run for run in runs if run.data.tags.get("kind") != "sweep"]


def with_hydra_config(overrides: list[str]) -> DictConfig:
    """The composed config with its ``hydra`` node (launcher, sweeper), as ``brainbench train`` sees it."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def validation_by_hand(checkpoint: Path) -> tuple[float, float]:
    """Cross-entropy per voxel and whole-tumour Dice over every validation segment of the TINY run (cwd: its
    working folder), computed in this one process with the checkpoint's weights: what the processes of a
    DDP run, each validating its share of the segments, must log together."""
    cfg = compose_train(TINY)
    parts = build_parts(cfg)
    datamodule, _, _ = prepare_datamodule(cfg, parts)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    parts.net.load_state_dict({key.removeprefix("net."): value for key, value in state.items()
                               if key.startswith("net.")})
    cross_entropy, voxels, counts = 0.0, 0, torch.zeros(3)
    with torch.no_grad():
        for inputs, target in datamodule.val_dataloader():
            logits = parts.net.eval()(*inputs)
            cross_entropy += F.cross_entropy(logits, target, reduction="sum").item()
            voxels += target.numel()
            pred, ref = logits.argmax(1) > 0, target > 0  # BraTS: every class but background is whole tumour
            counts += torch.stack([(pred & ref).sum(), pred.sum(), ref.sum()])
    overlap, n_pred, n_ref = counts.tolist()
    return cross_entropy / voxels, 2 * overlap / (n_pred + n_ref)


def test_trainer_choices_compose_to_lightning_trainers(monkeypatch):
    """trainer=ddp_cpu builds a 2-process gloo DDP trainer on the CPU that numbers its processes itself, even
    inside a SLURM job's single task; trainer=gpu/ddp ask for GPUs."""
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "sweep", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0"}.items():  # what hydra/launcher=slurm's job sees
        monkeypatch.setenv(key, value)
    cfg = compose_train(["trainer=ddp_cpu"])
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.strategy.process_group_backend == "gloo"
    assert trainer.strategy.root_device == torch.device("cpu")
    # SLURM's environment would give both spawned processes rank SLURM_PROCID = 0: 2 unsynchronised trainings
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)
    assert trainer.max_epochs == compose_train().trainer.max_epochs  # the rest is trainer=default's
    gpu, ddp = compose_train(["trainer=gpu"]).trainer, compose_train(["trainer=ddp"]).trainer
    assert (gpu.accelerator, gpu.devices, ddp.accelerator, ddp.devices) == ("gpu", 1, "gpu", -1)
    assert ddp.strategy.process_group_backend == "nccl" and ddp.strategy.start_method == "spawn"


def test_slurm_preset_is_submitit_slurm_with_a_gpu_and_cpus_for_the_loaders(monkeypatch):
    """One GPU, one task, and a CPU for each DataLoader worker a run starts on a GPU node, plus its own."""
    launcher = with_hydra_config(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (1, 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # a large node: the worker count is not capped by its cores
    assert launcher.cpus_per_task == 1 + loader_settings("auto", torch.device("cuda"))["num_workers"]


@needs_optuna
def test_optuna_search_brackets_the_documented_deepmedic_values():
    """Every searched key exists in the composed config, and its range holds the value the DeepMedic
    config documents (spec §3.3, §3.5): the search is around the paper's setting, not beside it."""
    cfg = with_hydra_config(["hparams_search=deepmedic_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    documented = {"model.optimizer.lr": 1e-3, "model.optimizer.momentum": 0.6,
                  "model.net.fc_dropout.1": 0.5, "model.net.fc_dropout.2": 0.5}
    assert set(sweeper.params) == set(documented)
    parser = OverridesParser.create()
    for key, text in sweeper.params.items():
        assert OmegaConf.select(cfg, key) == documented[key], key
        interval = parser.parse_override(f"{key}={text}").value()
        assert interval.start <= documented[key] <= interval.end, key


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_one_run(workdir, monkeypatch):
    """trainer=ddp_cpu: 2 gloo processes share each epoch's segments; one MLflow run holds each epoch's
    metrics once, over both processes' segments, and the test metrics of one evaluation, made with the
    weights the processes trained."""
    client, to_store = store(workdir, "ddp")
    result = brainbench("train", "trainer=ddp_cpu", *TINY, "trainer.enable_progress_bar=false", *to_store, cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = runs_of(client, "ddp")
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.devices"] == "2"
    for key in ("train_loss", "val_cross_entropy"):  # 2 epochs, one value each (rank 0 logs)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == 2 and len(set(steps)) == 2, (key, steps)
    tests = list(held_out_metrics(run.data.metrics))
    assert {"dice_WT", "hd95_ET"} <= set(tests)
    assert all(len(client.get_metric_history(run.info.run_id, key)) == 1 for key in tests)  # evaluated once
    output_dir = Path(run.data.tags["output_dir"])
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 20 segments per epoch in batches of 5 over 2 processes: 2 steps per epoch and process (8 in one process)
    assert checkpoint["global_step"] == 2 * 20 // (5 * 2)
    # rank 0 wrote the checkpoint; the launching process evaluated and saved its own net: the same weights
    trained = {key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()
               if key.startswith("net.")}
    evaluated = torch.load(output_dir / "model" / "weights.pt", map_location="cpu")
    assert trained.keys() == evaluated.keys()
    assert all(torch.equal(trained[key], evaluated[key]) for key in trained)
    monkeypatch.chdir(workdir)  # the run's data and cache folders are relative to where it ran
    cross_entropy, dice = validation_by_hand(output_dir / "checkpoints" / "last.ckpt")
    last = run.data.metrics  # the latest value of each: the last epoch's, with the checkpoint's weights
    assert last["val_cross_entropy"] == pytest.approx(cross_entropy, rel=1e-4)
    assert last["val_dice_segments"] == pytest.approx(dice, rel=1e-4)


LAUNCHERS = {"submitit_local": ("hydra_submitit_launcher", "launchers"), "ray": ("hydra_ray_launcher", "ray")}
"""Launchers run as a test: their plugin module and the brainbench extra that installs it."""


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launcher_sweep_runs_both_jobs(workdir, launcher):
    """hydra/launcher=LAUNCHER runs a 2-seed sweep: 2 finished runs of one sweep, launched by that plugin."""
    plugin, extra = LAUNCHERS[launcher]
    if importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f"hydra/launcher={launcher} needs the {extra} extra: pip install -e '.[{extra}]'")
    client, to_store = store(workdir, launcher)
    result = brainbench("train", "-m", f"hydra/launcher={launcher}", "seed=1,2", *ONE_EPOCH, *to_store,
                        f"hydra.sweep.dir=sweeps/{launcher}", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = runs_of(client, launcher)
    assert sorted(run.data.tags["seed"] for run in runs) == ["1", "2"]
    assert all(run.info.status == "FINISHED" and "dice_WT" in run.data.metrics for run in runs)
    sweep = yaml.safe_load((workdir / "sweeps" / launcher / "multirun.yaml").read_text())
    assert sweep["hydra"]["launcher"]["_target_"].startswith(f"hydra_plugins.{plugin}.")
    parents = {run.data.tags.get("mlflow.parentRunId") for run in runs}
    assert len(parents) == 1  # one sweep: the same parent (or none) for both jobs


@pytest.mark.slow
@needs_optuna
def test_optuna_sweep_maximises_what_train_returns(workdir):
    """hparams_search=deepmedic_optuna with 2 trials: 2 runs with the trials' sampled values, and Optuna's
    best value is the best run's last validation WT Dice (the search's optimized_metric), not a test metric."""
    client, to_store = store(workdir, "optuna")
    result = brainbench("train", "hparams_search=deepmedic_optuna", "hydra.sweeper.n_trials=2", *ONE_EPOCH,
                        *to_store, "hydra.sweep.dir=sweeps/optuna", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = runs_of(client, "optuna")
    assert len(runs) == 2 and all(run.info.status == "FINISHED" for run in runs)
    learning_rates = [float(run.data.params["model.optimizer.lr"]) for run in runs]
    assert len(set(learning_rates)) == 2 and all(1e-4 <= lr <= 1e-2 for lr in learning_rates)
    best = yaml.safe_load((workdir / "sweeps" / "optuna" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(run.data.metrics["val_dice_segments"] for run in runs))
