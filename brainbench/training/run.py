"""One training run from a composed Hydra config: data → fit → predict files → evaluate → MLflow.

Evaluation runs on the written prediction files with the same code as ``brainbench evaluate``,
so a run's numbers are exactly what an organiser would compute from its submission.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import MLFlowLogger

from brainbench.challenges.base import ChallengeAdapter
from brainbench.data.cache import PreprocessedCache
from brainbench.data.datamodule import BrainSegmentationDataModule
from brainbench.data.io import save_volume
from brainbench.evaluation.evaluate import evaluate_folders, write_metrics_csv
from brainbench.evaluation.leaderboard import leaderboard_table, print_leaderboard, summary_metrics, to_markdown
from brainbench.evaluation.plots import overlay_png
from brainbench.evaluation.protocols import PROTOCOLS
from brainbench.tracking.mlflow import ensure_experiment, flatten, git_commit, runs_frame
from brainbench.training.phases import GradeSubset, Phase
from brainbench.training.task import SegmentationTask

log = logging.getLogger(__name__)


def prepare_data_root(data_cfg: DictConfig) -> Path:
    """The data folder; synthesised first when the config asks for synthetic data and it is absent."""
    root = Path(data_cfg.root)
    if data_cfg.get("synth"):
        instantiate(data_cfg.synth, root=root)
    return root


def train(cfg: DictConfig) -> float:
    """Run ``cfg`` end to end; return the test mean Dice of the edition's first region (the sweep objective)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    adapter: ChallengeAdapter = instantiate(cfg.challenge.adapter)
    if cfg.model.get("grade"):
        adapter = GradeSubset(adapter, cfg.model.grade)
    edition = adapter.edition
    root = prepare_data_root(cfg.data)

    cache = PreprocessedCache(cfg.data.cache_dir, instantiate(cfg.preprocess))
    net = instantiate(cfg.model.net, in_channels=len(edition.modalities), n_classes=edition.n_classes)
    # objects are passed to the partial, not to instantiate: Hydra would turn dataclasses into configs
    datamodule: BrainSegmentationDataModule = instantiate(cfg.data.datamodule, _partial_=True)(
        adapter=adapter, cache=cache, root=root, sampler=instantiate(cfg.sampler.centres),
        extractor=instantiate(cfg.model.segments), seed=cfg.seed,
    )
    datamodule.setup()  # validate and cache every case before a run is opened in MLflow
    phases = ([instantiate(phase, name=name) for name, phase in cfg.model.phases.items()]
              if cfg.model.get("phases") else [Phase()])

    tags = {"challenge": edition.challenge, "edition": edition.name, "model": cfg.model.name,
            "seed": str(cfg.seed), "data_source": cfg.data.source, "git_commit": git_commit(),
            **({"grade": cfg.model.grade} if cfg.model.get("grade") else {})}
    ensure_experiment(cfg.logger.tracking_uri, cfg.logger.experiment_name)
    logger = MLFlowLogger(experiment_name=cfg.logger.experiment_name, tracking_uri=cfg.logger.tracking_uri,
                          run_name=cfg.run_name, tags=tags, log_model=False)
    logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    try:
        for phase in phases:
            _fit_phase(cfg, phase, net, datamodule, logger, output_dir, edition.n_classes)
        summary = _evaluate_and_log(cfg, net, datamodule, adapter, root, output_dir, client, logger.run_id)
    except BaseException:
        client.set_terminated(logger.run_id, "FAILED")
        raise
    return summary.get(f"test/{next(iter(edition.regions))}/dice/mean", float("nan"))


def _fit_phase(cfg: DictConfig, phase: Phase, net, datamodule, logger: MLFlowLogger, output_dir: Path,
               n_classes: int) -> None:
    """One fit: a fresh task, optimiser, callbacks and trainer; a named phase prefixes its metrics."""
    task = SegmentationTask(phase.prepare(net, datamodule), optimizer=instantiate(cfg.model.optimizer),
                            scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
                            l1=cfg.model.l1, l2=cfg.model.l2, foreground_classes=range(1, n_classes))
    if phase.name:
        logger = MLFlowLogger(tracking_uri=cfg.logger.tracking_uri, run_id=logger.run_id, prefix=phase.name,
                              log_model=False)
    callbacks = [ModelCheckpoint(dirpath=output_dir / "checkpoints" / phase.name, save_last=True, save_top_k=0),
                 *(instantiate(callback) for callback in (cfg.model.get("callbacks") or {}).values())]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, default_root_dir=str(output_dir),
                                      callbacks=callbacks,
                                      **({"max_epochs": phase.max_epochs} if phase.max_epochs else {}))
    trainer.fit(task, datamodule=datamodule)


def _evaluate_and_log(cfg, net, datamodule, adapter, root, output_dir, client, run_id) -> dict[str, float]:
    edition = adapter.edition
    pred_dir = output_dir / "predictions"
    test_cases = datamodule.test_cases()
    net.eval()
    started = time.perf_counter()
    predict = instantiate(cfg.model.inference)
    postprocess = instantiate(cfg.model.postprocess) if cfg.model.get("postprocess") else None
    array_grid_predictions = []
    for case, pre in test_cases:
        probabilities = predict(net, pre.image)
        array_grid_predictions.append(edition.decode_labels(probabilities.argmax(0)))
        labels = pre.to_case_grid(array_grid_predictions[-1])
        if postprocess is not None:
            labels = postprocess(labels, voxel_volume_mm3=pre.grid.voxel_volume_mm3)
        save_volume(labels, pre.grid, pred_dir / adapter.prediction_name(case.case_id), dtype=np.uint8)
    inference_seconds = (time.perf_counter() - started) / max(1, len(test_cases))

    test_references = {case.label.relative_to(root).as_posix(): case.case_id for case, _ in test_cases}
    evaluation = evaluate_folders(pred_dir, root, edition.regions, PROTOCOLS[edition.protocol],
                                  allowed_labels=set(edition.label_values), ref_name=test_references.get)
    for problem in evaluation.problems:
        log.warning(problem)
    metrics_csv = write_metrics_csv(evaluation.metrics, output_dir / "metrics.csv")
    summary = summary_metrics(evaluation.metrics)
    summary["test/inference_seconds_per_case"] = inference_seconds
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in summary.items()])

    config_yaml = output_dir / "config.yaml"
    config_yaml.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    case, pre = test_cases[0]  # drawn on the preprocessed (array) grid, where image, label and prediction meet
    region, labels = next(iter(edition.regions.items()))
    overlay = overlay_png(np.asarray(pre.image[0]), np.isin(edition.decode_labels(pre.label), labels),
                          np.isin(array_grid_predictions[0], labels), output_dir / f"overlay_{case.case_id}.png",
                          title=f"{cfg.run_name} — {case.case_id} ({cfg.data.source} data), region {region}")

    table = leaderboard_table(runs_frame(cfg.logger.tracking_uri, cfg.logger.experiment_name), list(edition.regions))
    title = f"Leaderboard — experiment {cfg.logger.experiment_name} ({edition.name}, {edition.protocol} protocol)"
    leaderboard_md = output_dir / "leaderboard.md"
    leaderboard_md.write_text(to_markdown(table, title))
    for artifact in (config_yaml, metrics_csv, leaderboard_md, overlay):
        client.log_artifact(run_id, str(artifact))
    print_leaderboard(table, title)
    return summary

