"""One run end to end, as stages that hand over files: data → fit → predict files → evaluate files → MLflow.

This module sits above ``training``, ``inference``, ``evaluation`` and ``tracking`` and only composes
them. Evaluation runs on the written prediction files with the same code as ``brainbench evaluate``,
so a run's numbers are exactly what an organiser would compute from its submission. Everything that
can be checked without data (edition, protocol, synthetic look-alike) is checked before any
synthesis, caching or training starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger
from torch import nn

from brainbench.challenges import Case, ChallengeAdapter, Edition
from brainbench.data.cache import PreprocessedCache
from brainbench.data.datamodule import BrainSegmentationDataModule
from brainbench.data.provenance import check_source
from brainbench.errors import BrainbenchConfigError, BrainbenchError
from brainbench.evaluation.evaluate import evaluate_folders, write_metrics_csv
from brainbench.evaluation.leaderboard import (cell_legend, headline_metrics, leaderboard_table, print_leaderboard,
                                               summary_metrics, to_markdown)
from brainbench.evaluation.plots import overlay_png
from brainbench.evaluation.protocols import protocol_for
from brainbench.inference.device import InferenceSettings, resolve_device
from brainbench.inference.predict import Predictions, predict_cases
from brainbench.io import existing_dir
from brainbench.tracking.mlflow import ensure_experiment, flatten, git_commit, runs_frame
from brainbench.training.fit import fit_phase
from brainbench.training.phases import GradeSubset, Phase

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    """Everything a run builds from its config before touching data, so a config error costs no data work."""

    adapter: ChallengeAdapter
    preprocess: object
    net: nn.Module
    loss: nn.Module
    sampler: object
    extractor: Callable
    phases: list[Phase]
    predict: Callable
    refine: Callable | None
    postprocess: Callable | None
    inference: InferenceSettings
    loader: dict[str, int | bool]


def check_data_config(data_cfg: DictConfig, edition: Edition) -> None:
    """``data.root`` is given (and exists for a release), and synthetic data is asked only of an edition with
    a look-alike; the folder's recorded source is checked by :func:`prepare_data_root`, before any data work."""
    if data_cfg.get("root") in (None, ""):
        raise BrainbenchConfigError("data.root is required: data=real reads a challenge release from disk "
                                    "(add data.root=/path/to/the/release as unpacked)")
    if data_cfg.get("synth"):
        if edition.synthetic is None:
            raise BrainbenchConfigError(f"challenge {edition.name} declares no synthetic look-alike; "
                                        "use data=real data.root=<your release>")
    else:
        existing_dir(data_cfg.root)


def check_postprocess_config(cfg: DictConfig) -> None:
    """``postprocess=crf`` has CRF parameters to use, and CRF parameters are not chosen for nothing."""
    crf_chosen = bool(cfg.get("crf"))
    if cfg.postprocess.get("name") == "crf" and not crf_chosen:
        raise BrainbenchConfigError("postprocess=crf needs CRF parameters: add crf=brats or crf=isles "
                                    "(or tune your own, see brainbench.inference.crf.grid_search)")
    if crf_chosen and cfg.postprocess.get("name") != "crf":
        raise BrainbenchConfigError(f"crf parameters are set but postprocess={cfg.postprocess.get('name')}: "
                                    "add postprocess=crf to run the CRF, or drop the crf=... choice")


def _build(cfg: DictConfig, key: str, *call_with, **kwargs):
    """``instantiate`` the config node at ``key`` (and call the partial it gives with ``call_with``, if
    any); a bad target or argument becomes a one-line config error naming ``key``."""
    try:
        built = instantiate(OmegaConf.select(cfg, key), **kwargs)
        return built(*call_with) if call_with else built
    except (InstantiationException, TypeError, ValueError) as error:
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        if isinstance(cause, BrainbenchError):
            raise cause from None
        raise BrainbenchConfigError(f"config {key}: {str(cause).strip().splitlines()[-1]}") from None


def build_parts(cfg: DictConfig) -> RunParts:
    """Instantiate every part of the run from ``cfg`` and check what needs no data (raises config errors)."""
    adapter: ChallengeAdapter = _build(cfg, "challenge.adapter")
    if cfg.model.get("grade"):
        adapter = GradeSubset(adapter, cfg.model.grade)
    edition = adapter.edition
    protocol_for(edition)
    check_data_config(cfg.data, edition)
    net = _build(cfg, "model.net", in_channels=len(edition.modalities), n_classes=edition.n_classes)
    check_postprocess_config(cfg)
    optimizer = _build(cfg, "model.optimizer", net.parameters())  # bad optimiser/scheduler arguments fail here
    if cfg.model.get("scheduler"):
        _build(cfg, "model.scheduler", optimizer)
    for name in cfg.model.get("callbacks") or {}:
        _build(cfg, f"model.callbacks.{name}")
    phases = ([_build(cfg, f"model.phases.{name}", name=name) for name in cfg.model.phases]
              if cfg.model.get("phases") else [Phase()])
    accelerator = cfg.trainer.get("accelerator", "auto")
    inference: InferenceSettings = _build(cfg, "inference", trainer_accelerator=accelerator)
    return RunParts(adapter=adapter, preprocess=_build(cfg, "preprocess"), net=net,
                    loss=_build(cfg, "loss", n_classes=edition.n_classes),
                    sampler=_build(cfg, "sampler.centres"), extractor=_build(cfg, "model.segments"),
                    phases=phases, predict=_build(cfg, "model.inference"),
                    refine=(_build(cfg, "postprocess.probabilities", n_channels=len(edition.modalities),
                                   device=str(inference.device))  # the CRF runs where the model ran
                            if cfg.postprocess.get("probabilities") else None),
                    postprocess=_build(cfg, "postprocess.labels") if cfg.postprocess.get("labels") else None,
                    inference=inference,
                    loader=loader_settings(cfg.data.datamodule.num_workers, resolve_device("auto", accelerator)))


def prepare_data_root(data_cfg: DictConfig) -> tuple[Path, str]:
    """The data folder, synthesised first when the config asks for synthetic data and it is absent,
    and its source as recorded on disk (a contradiction with ``data.source`` is an error)."""
    root = Path(data_cfg.root)
    if data_cfg.get("synth"):
        instantiate(data_cfg.synth, root=root)
    return root, check_source(root, data_cfg.source)


def prepare_datamodule(cfg: DictConfig, parts: RunParts) -> tuple[BrainSegmentationDataModule, Path, str]:
    """The run's data module, set up (every case validated and cached, the split drawn), its data folder
    and the folder's recorded source; synthesises the data first when the config asks for it."""
    root, data_source = prepare_data_root(cfg.data)
    cache = PreprocessedCache(cfg.data.cache_dir, parts.preprocess)
    # objects are passed to the partial, not to instantiate: Hydra would turn dataclasses into configs
    datamodule: BrainSegmentationDataModule = instantiate(cfg.data.datamodule, _partial_=True)(
        adapter=parts.adapter, cache=cache, root=root, sampler=parts.sampler, extractor=parts.extractor,
        seed=cfg.seed, **parts.loader,
    )
    datamodule.setup()
    return datamodule, root, data_source


def grade_tag(requested: str, cases: Iterable[Case]) -> str:
    """The grade a model actually trained on: ungraded cases are kept for every grade (GradeSubset)."""
    cases = list(cases)
    ungraded = sum(1 for case in cases if not case.meta.get("grade"))
    if ungraded == len(cases):
        return "all (release has no grades)"
    return f"{requested} + {ungraded} ungraded" if ungraded else requested


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """Trainable parameters as PyTorch counts them, and as the paper counted them where that differs
    (Havaei counts TwoPath's softmax layer once per class map, spec §1.8)."""
    actual = sum(p.numel() for p in net.parameters())
    paper = net.paper_parameter_count() if hasattr(net, "paper_parameter_count") else actual
    return {"model/parameters_actual": actual, "model/parameters_paper_convention": paper}


def loader_settings(num_workers: int | str, training_device: torch.device) -> dict[str, int | bool]:
    """DataLoader workers and pinned memory. ``auto``: no worker process when training on the CPU
    (workers would take cores from the training threads), ``min(8, cores - 1)`` on an accelerator so
    that segment extraction keeps it fed, and pinned memory for CUDA copies."""
    if num_workers == "auto":
        num_workers = 0 if training_device.type == "cpu" else min(8, max(1, (os.cpu_count() or 1) - 1))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise BrainbenchConfigError(f"data.datamodule.num_workers must be auto or an integer ≥ 0, got {num_workers!r}")
    return {"num_workers": num_workers, "pin_memory": training_device.type == "cuda"}


def train(cfg: DictConfig) -> float:
    """Run ``cfg`` end to end; return the test mean Dice of the edition's first region (the sweep objective)."""
    pl.seed_everything(cfg.seed, workers=True)  # first: building the net draws its initial weights
    parts = build_parts(cfg)
    edition = parts.adapter.edition
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule, root, data_source = prepare_datamodule(cfg, parts)

    tags = {"challenge": edition.challenge, "edition": edition.name, "model": cfg.model.name,
            "seed": str(cfg.seed), "data_source": data_source, "git_commit": git_commit(),
            **({"grade": grade_tag(cfg.model.grade, datamodule.cases.values())} if cfg.model.get("grade") else {})}
    print(f"Data source: {data_source} ({root})")
    ensure_experiment(cfg.logger.tracking_uri, cfg.logger.experiment_name)
    logger = MLFlowLogger(experiment_name=cfg.logger.experiment_name, tracking_uri=cfg.logger.tracking_uri,
                          run_name=cfg.run_name, tags=tags, log_model=False)
    logger.log_hyperparams({**flatten(OmegaConf.to_container(cfg, resolve=True)), **parameter_counts(parts.net),
                            "inference/device_used": str(parts.inference.device),
                            "inference/precision_used": parts.inference.precision})
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    try:
        for phase in parts.phases:
            fit_phase(cfg, phase, parts.net, parts.loss, datamodule, logger, output_dir, edition.n_classes)
        test_cases = datamodule.test_cases()
        predictions = predict_cases(parts.net, test_cases, edition, parts.predict, output_dir / "predictions",
                                    refine=parts.refine, postprocess=parts.postprocess, settings=parts.inference)
        summary = _evaluate_and_log(cfg, edition, test_cases, predictions, output_dir, client, logger.run_id,
                                    data_source)
    except BaseException:
        client.set_terminated(logger.run_id, "FAILED")
        raise
    return summary.get(f"test/{next(iter(edition.regions))}/dice/mean", float("nan"))


def _evaluate_and_log(cfg: DictConfig, edition: Edition, test_cases, predictions: Predictions, output_dir: Path,
                      client: MlflowClient, run_id: str, data_source: str) -> dict[str, float]:
    """Score the prediction files against the test cases' label files; log metrics, config and figures."""
    references = {case.case_id: case.label for case, _ in test_cases}
    # strict: brainbench writes its own predictions in the edition's exact format, so any leniency an
    # organiser's scorer would grant would hide a bug here (for well-formed files both policies agree)
    evaluation = evaluate_folders(predictions.folder, references, edition.regions, protocol_for(edition),
                                  allowed_labels=set(edition.label_values), input_policy="strict")
    for problem in evaluation.problems:
        log.warning(problem)
    metrics_csv = write_metrics_csv(evaluation.metrics, output_dir / "metrics.csv",
                                    input_policy=evaluation.input_policy)
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
                          title=f"{cfg.run_name} — {case.case_id} ({data_source} data), region {region}")

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
