"""One run end to end, as stages that hand over files: data → fit → predict files → evaluate files → MLflow.

This module sits above ``training``, ``inference``, ``evaluation`` and ``tracking`` and only composes
them. Evaluation runs on the written prediction files with the same code as ``brainbench evaluate``,
so a run's numbers are exactly what an organiser would compute from its submission. Everything that
can be checked without data (edition, protocol, synthetic look-alike) is checked before any
synthesis, caching or training starts.
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
from pytorch_lightning.loggers import MLFlowLogger

from brainbench.challenges import ChallengeAdapter, Edition
from brainbench.data.cache import PreprocessedCache
from brainbench.data.datamodule import BrainSegmentationDataModule
from brainbench.errors import BrainbenchConfigError
from brainbench.evaluation.evaluate import evaluate_folders, write_metrics_csv
from brainbench.evaluation.leaderboard import (cell_legend, headline_metrics, leaderboard_table, print_leaderboard,
                                               summary_metrics, to_markdown)
from brainbench.evaluation.plots import overlay_png
from brainbench.evaluation.protocols import protocol_for
from brainbench.inference.predict import Predictions, predict_cases
from brainbench.tracking.mlflow import ensure_experiment, flatten, git_commit, runs_frame
from brainbench.training.fit import fit_phase
from brainbench.training.phases import GradeSubset, Phase

log = logging.getLogger(__name__)


def prepare_data_root(data_cfg: DictConfig) -> Path:
    """The data folder; synthesised first when the config asks for synthetic data and it is absent."""
    root = Path(data_cfg.root)
    if data_cfg.get("synth"):
        instantiate(data_cfg.synth, root=root)
    return root


def check_config(cfg: DictConfig, edition: Edition) -> None:
    """Config errors that need no data: an unknown protocol, synthetic data for an edition without a look-alike."""
    protocol_for(edition)
    if cfg.data.get("synth") and edition.synthetic is None:
        raise BrainbenchConfigError(f"challenge {edition.name} declares no synthetic look-alike; "
                                    "use data=real data.root=<your release>")


def train(cfg: DictConfig) -> float:
    """Run ``cfg`` end to end; return the test mean Dice of the edition's first region (the sweep objective)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    adapter: ChallengeAdapter = instantiate(cfg.challenge.adapter)
    if cfg.model.get("grade"):
        adapter = GradeSubset(adapter, cfg.model.grade)
    edition = adapter.edition
    check_config(cfg, edition)
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
            fit_phase(cfg, phase, net, datamodule, logger, output_dir, edition.n_classes)
        test_cases = datamodule.test_cases()
        predictions = predict_cases(
            net, test_cases, edition, instantiate(cfg.model.inference), output_dir / "predictions",
            postprocess=instantiate(cfg.model.postprocess) if cfg.model.get("postprocess") else None)
        summary = _evaluate_and_log(cfg, edition, test_cases, predictions, output_dir, client, logger.run_id)
    except BaseException:
        client.set_terminated(logger.run_id, "FAILED")
        raise
    return summary.get(f"test/{next(iter(edition.regions))}/dice/mean", float("nan"))


def _evaluate_and_log(cfg: DictConfig, edition: Edition, test_cases, predictions: Predictions, output_dir: Path,
                      client: MlflowClient, run_id: str) -> dict[str, float]:
    """Score the prediction files against the test cases' label files; log metrics, config and figures."""
    references = {case.case_id: case.label for case, _ in test_cases}
    evaluation = evaluate_folders(predictions.folder, references, edition.regions, protocol_for(edition),
                                  allowed_labels=set(edition.label_values))
    for problem in evaluation.problems:
        log.warning(problem)
    metrics_csv = write_metrics_csv(evaluation.metrics, output_dir / "metrics.csv")
    summary = summary_metrics(evaluation.metrics)
    summary["test/inference_seconds_per_case"] = predictions.seconds_per_case
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in summary.items()])

    config_yaml = output_dir / "config.yaml"
    config_yaml.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    case, pre = test_cases[0]  # drawn on the preprocessed (array) grid, where image, label and prediction meet
    region, labels = next(iter(edition.regions.items()))
    overlay = overlay_png(np.asarray(pre.image[0]), np.isin(edition.decode_labels(pre.label), labels),
                          np.isin(predictions.array_grid[0], labels), output_dir / f"overlay_{case.case_id}.png",
                          title=f"{cfg.run_name} — {case.case_id} ({cfg.data.source} data), region {region}")

    metrics = headline_metrics(edition)
    table = leaderboard_table(runs_frame(cfg.logger.tracking_uri, cfg.logger.experiment_name), list(edition.regions),
                              metrics)
    title = f"Leaderboard — experiment {cfg.logger.experiment_name} ({edition.name}, {edition.protocol} protocol)"
    leaderboard_md = output_dir / "leaderboard.md"
    leaderboard_md.write_text(to_markdown(table, title, [cell_legend(metrics)]))
    for artifact in (config_yaml, metrics_csv, leaderboard_md, overlay):
        client.log_artifact(run_id, str(artifact))
    print_leaderboard(table, title, cell_legend(metrics))
    return summary
