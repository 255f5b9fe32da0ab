"""One run end to end, as stages that hand over files: data → fit → predict files → evaluate files → MLflow.

This module sits above ``training``, ``inference``, ``evaluation`` and ``tracking`` and only composes
them. Evaluation runs on the written prediction files with the same code as ``brainbench evaluate``,
so a run's numbers are exactly what an organiser would compute from its submission. Everything that
can be checked without data (edition, protocol, synthetic look-alike) is checked before any
synthesis, caching or training starts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from torch import nn

import brainbench
from brainbench.cards import card_for, parameter_counts
from brainbench.challenges import Case, ChallengeAdapter, Edition
from brainbench.data.cache import PreprocessedCache
from brainbench.data.datamodule import BrainSegmentationDataModule, check_fold
from brainbench.data.preprocess import as_pipeline
from brainbench.data.provenance import check_source
from brainbench.errors import BrainbenchConfigError, BrainbenchError
from brainbench.evaluation.evaluate import evaluate_folders, write_metrics_csv
from brainbench.evaluation.leaderboard import (case_statistics, cell_legend, headline_metrics, headline_values,
                                               metric_key, print_leaderboard, statistics_table)
from brainbench.evaluation.plots import (case_metric_figure, is_training_curve, learning_curves_figure, overlay_figure,
                                         save_figure)
from brainbench.evaluation.protocols import protocol_for
from brainbench.inference.device import InferenceSettings, resolve_device
from brainbench.inference.predict import Predictions, predict_cases
from brainbench.io import existing_dir, load_label, load_volume
from brainbench.progress import quiet, quiet_consoles, run_log, set_quiet
from brainbench.tracking.mlflow import (MODEL_ARTIFACTS, config_hash, download_run_model, ensure_experiment, git_commit,
                                        log_dataset, log_model, metric_history, moved_artifact_location, run_params,
                                        runs_table_url, runs_with_hash, save_comparison_view, sweep_parent_run,
                                        variant_label, variant_overrides)
from brainbench.training.fit import RunLogger, fit_phases
from brainbench.training.phases import GradeSubset, Phase

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """What segmenting a case needs: the edition's adapter, preprocessing, the net and the inference steps."""

    adapter: ChallengeAdapter
    preprocess: object
    net: nn.Module
    predict: Callable
    refine: Callable | None
    postprocess: Callable | None
    inference: InferenceSettings

    def segment(self, cases: list[tuple[Case, object]], out_dir: Path) -> Predictions:
        """``<out_dir>/<case_id>.nii.gz`` for each (case, preprocessed case)."""
        return predict_cases(self.net, cases, self.adapter.edition, self.predict, out_dir, refine=self.refine,
                             postprocess=self.postprocess, settings=self.inference)


@dataclass(kw_only=True)
class RunParts(Predictor):
    """Everything a run builds from its config before touching data, so a config error costs no data work."""

    loss: nn.Module
    sampler: object
    extractor: Callable
    phases: list[Phase]
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


def build_predictor(cfg: DictConfig, require_labels: bool = True) -> Predictor:
    """The adapter, preprocessing, net (initial weights) and inference steps of ``cfg`` (raises config errors)."""
    adapter: ChallengeAdapter = _build(cfg, "challenge.adapter", require_labels=require_labels)
    edition = adapter.edition
    net = _build(cfg, "model.net", in_channels=len(edition.modalities), n_classes=edition.n_classes)
    check_postprocess_config(cfg)
    inference: InferenceSettings = _build(cfg, "inference", trainer_accelerator=cfg.trainer.get("accelerator", "auto"))
    return Predictor(adapter=adapter, preprocess=_build(cfg, "preprocess"), net=net,
                     predict=_build(cfg, "model.inference"),
                     refine=(_build(cfg, "postprocess.probabilities", n_channels=len(edition.modalities),
                                    device=str(inference.device))  # the CRF runs where the model ran
                             if cfg.postprocess.get("probabilities") else None),
                     postprocess=_build(cfg, "postprocess.labels") if cfg.postprocess.get("labels") else None,
                     inference=inference)


def build_parts(cfg: DictConfig) -> RunParts:
    """Instantiate every part of the run from ``cfg`` and check what needs no data (raises config errors)."""
    predictor = build_predictor(cfg)
    adapter = GradeSubset(predictor.adapter, cfg.model.grade) if cfg.model.get("grade") else predictor.adapter
    edition = adapter.edition
    protocol_for(edition)
    check_data_config(cfg.data, edition)
    if cfg.get("fold") is not None:
        check_fold(cfg.fold, cfg.data.datamodule.get("folds", 5))
    # bad optimiser/scheduler arguments fail here, before any data work
    optimizer = _build(cfg, "model.optimizer", predictor.net.parameters())
    if cfg.model.get("scheduler"):
        _build(cfg, "model.scheduler", optimizer)
    for name in cfg.model.get("callbacks") or {}:
        _build(cfg, f"model.callbacks.{name}")
    phases = ([_build(cfg, f"model.phases.{name}", name=name) for name in cfg.model.phases]
              if cfg.model.get("phases") else [Phase()])
    accelerator = cfg.trainer.get("accelerator", "auto")
    return RunParts(**{**vars(predictor), "adapter": adapter},
                    loss=_build(cfg, "loss", n_classes=edition.n_classes),
                    sampler=_build(cfg, "sampler.centres"), extractor=_build(cfg, "model.segments"),
                    phases=phases,
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


def loader_settings(num_workers: int | str, training_device: torch.device) -> dict[str, int | bool]:
    """DataLoader workers and pinned memory. ``auto``: no worker process when training on the CPU
    (workers would take cores from the training threads), ``min(8, cores - 1)`` on an accelerator so
    that segment extraction keeps it fed, and pinned memory for CUDA copies."""
    if num_workers == "auto":
        num_workers = 0 if training_device.type == "cpu" else min(8, max(1, (os.cpu_count() or 1) - 1))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise BrainbenchConfigError(f"data.datamodule.num_workers must be auto or an integer ≥ 0, got {num_workers!r}")
    return {"num_workers": num_workers, "pin_memory": training_device.type == "cuda"}


@dataclass(frozen=True)
class LaunchInfo:
    """What Hydra knows about the job that a run records: its experiment file, its overrides, its sweep."""

    experiment: str = "none"
    overrides: tuple[str, ...] = ()
    sweep_dir: str | None = None

    @classmethod
    def current(cls) -> LaunchInfo:
        """The running Hydra job's (empty outside ``brainbench train``, e.g. when a test calls :func:`train`)."""
        if not HydraConfig.initialized():
            return cls()
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(experiment=str(hydra_cfg.runtime.choices.get("experiment") or "none"),
                   overrides=tuple(hydra_cfg.overrides.task),
                   sweep_dir=str(Path(hydra_cfg.sweep.dir).resolve()) if multirun else None)


RUN_LOG = "run.log"
"""The run's log file in its folder (brainbench's and Lightning's messages, warnings), logged to MLflow."""
MODEL_CARD = "model_card.md"


def train(cfg: DictConfig) -> float:
    """Run ``cfg`` end to end; return the sweep objective: the last value of ``optimized_metric`` (default:
    the test mean Dice of the edition's first region, ``dice_<region>``).

    With ``resume=true`` a run whose config (:func:`config_hash`) and seed already finished is not run again
    (its objective is returned), and an unfinished one continues in its own MLflow run and folder from its
    last checkpoint.
    """
    if cfg.get("quiet"):
        set_quiet(True)
    if quiet():
        quiet_consoles()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # first: building the net draws its initial weights
    parts = build_parts(cfg)
    edition = parts.adapter.edition
    objective = cfg.get("optimized_metric") or metric_key("dice", next(iter(edition.regions)))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    identity, launch = config_hash(resolved), LaunchInfo.current()
    uri = cfg.logger.tracking_uri
    previous = runs_with_hash(uri, cfg.logger.experiment_name, identity, cfg.seed) if cfg.get("resume") else []
    done = [run for run in previous if run.info.status == "FINISHED"]
    sweep = sweep_tags(cfg, launch)
    if done:
        log.info("Skipped: run %s (%s) already finished this config (hash %s, seed %s); resume=false runs it again",
                 done[0].info.run_id, done[0].info.run_name, identity, cfg.seed)
        adopt(uri, done[0].info.run_id, sweep)
        return done[0].data.metrics.get(objective, float("nan"))
    resumed = previous[0] if previous else None
    output_dir = Path(resumed.data.tags.get("output_dir", cfg.paths.output_dir) if resumed else cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with run_log(output_dir / RUN_LOG) as log_file:
        run_id = _tracked_run(cfg, parts, resolved, identity, launch, sweep, resumed, output_dir, log_file)
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    log.info("Compare runs: %s", runs_table_url(uri, run.info.experiment_id))
    metrics = run.data.metrics  # each metric's last value
    if objective not in metrics:
        log.warning("optimized_metric %s was not logged (logged: %s); the sweeper gets NaN", objective,
                    ", ".join(sorted(metrics)))
    return metrics.get(objective, float("nan"))


def _tracked_run(cfg: DictConfig, parts: RunParts, resolved: dict, identity: str, launch: LaunchInfo,
                 sweep: dict[str, str], resumed, output_dir: Path, log_file: Path) -> str:
    """Data → fit → predict → evaluate in one MLflow run (new, or the resumed one); returns its id. The run
    is closed FINISHED or FAILED, with ``log_file``, the run's log, as it stands."""
    edition, uri = parts.adapter.edition, cfg.logger.tracking_uri
    datamodule, root, data_source = prepare_datamodule(cfg, parts)
    log.info("Data source: %s (%s)", data_source, root)
    experiment_id = ensure_experiment(uri, cfg.logger.experiment_name)
    if warning := moved_artifact_location(uri, experiment_id):
        log.warning(warning)
    save_comparison_view(uri, experiment_id, [metric_key(metric, region) for metric in headline_metrics(edition)
                                              for region in edition.regions])
    client = MlflowClient(tracking_uri=uri)
    card = card_for(cfg, parts.net, edition, parts.extractor).to_markdown()
    if resumed:
        log.info("Resuming run %s (%s) from %s", resumed.info.run_id, resumed.info.run_name, output_dir / "checkpoints")
        client.update_run(resumed.info.run_id, status="RUNNING")
        adopt(uri, resumed.info.run_id, sweep)
        logger = RunLogger(tracking_uri=uri, run_id=resumed.info.run_id, log_model=False)
    else:
        tags = {**run_tags(cfg, edition, datamodule, data_source, identity, launch, output_dir), **sweep,
                "mlflow.note.content": card}
        logger = RunLogger(experiment_name=cfg.logger.experiment_name, tracking_uri=uri,
                           run_name=run_name(cfg.run_name, launch.overrides), tags=tags, log_model=False)
        logger.log_hyperparams({**run_params(resolved), **parameter_counts(parts.net),
                                "inference/device_used": str(parts.inference.device),
                                "inference/precision_used": parts.inference.precision})
        log_datasets(uri, logger.run_id, datamodule, edition, data_source)
    status = "FAILED"
    try:
        fit_phases(cfg, parts.phases, parts.net, parts.loss, datamodule, logger, output_dir, edition.n_classes)
        test_cases = datamodule.test_cases()
        predictions = parts.segment(test_cases, output_dir / "predictions")
        _evaluate_and_log(cfg, edition, test_cases, predictions, output_dir, client, logger.run_id, data_source)
        log_run_files(client, logger.run_id, output_dir, parts, datamodule, card)
        log_model(uri, logger.run_id, parts.net.cpu(), brainbench.__version__, cfg.logger.get("register_model"))
        status = "FINISHED"
    finally:
        client.log_artifact(logger.run_id, str(log_file))
        client.set_terminated(logger.run_id, status)
    return logger.run_id


def run_name(base: str, overrides: Sequence[str]) -> str:
    """The run's name: ``base`` (model, edition, fold, seed) and the job's settings that differ from the
    defaults (its command-line overrides without seed, fold and tracking; a dotted key by its last part,
    ``trainer.max_epochs=6`` as ``max_epochs=6``), so that runs of different configurations never look
    alike in the runs table. Paths and the choices ``base`` already names are left out; the full overrides
    are the ``variant`` tag."""
    shown = [f"{key.rsplit('.', 1)[-1]}={value}" for key, _, value in
             (setting.partition("=") for setting in variant_overrides(overrides))
             if "/" not in value and value not in base.split("-")]
    return " ".join([base, *shown])


def run_tags(cfg: DictConfig, edition: Edition, datamodule: BrainSegmentationDataModule, data_source: str,
             identity: str, launch: LaunchInfo, output_dir: Path) -> dict[str, str]:
    """The tags that say what a run is: its edition, model, seed, fold, data and configuration."""
    return {"challenge": edition.challenge, "edition": edition.name, "model": cfg.model.name,
            "seed": str(cfg.seed), "fold": "none" if cfg.get("fold") is None else str(cfg.fold),
            "folds": "none" if cfg.get("fold") is None else str(cfg.data.datamodule.folds),
            "experiment": launch.experiment, "variant": variant_label(launch.overrides),
            "data_source": data_source, "config_hash": identity, "output_dir": str(output_dir.resolve()),
            "mlflow.source.git.commit": git_commit(),
            **({"overrides": " ".join(launch.overrides)[:5000]} if launch.overrides else {}),
            **({"from_run": str(cfg.from_run)} if cfg.get("from_run") else {}),
            **({"grade": grade_tag(cfg.model.grade, datamodule.cases.values())} if cfg.model.get("grade") else {})}


def log_datasets(tracking_uri: str, run_id: str, datamodule: BrainSegmentationDataModule, edition: Edition,
                 data_source: str) -> None:
    """The run's training, validation and test cases as MLflow dataset inputs (one row per case: its files)."""
    for context, ids in (("training", datamodule.split.train), ("validation", datamodule.split.val),
                         ("test", datamodule.split.test)):
        cases = pd.DataFrame([{"case": cid, **{f"image_{name}": str(path) for name, path in
                                               datamodule.cases[cid].images.items()},
                               "label": str(datamodule.cases[cid].label)} for cid in ids])
        log_dataset(tracking_uri, run_id, cases, datamodule.root.resolve().as_uri(),
                    f"{edition.name} ({data_source})", context)


def sweep_tags(cfg: DictConfig, launch: LaunchInfo) -> dict[str, str]:
    """A run's place in a sweep: its parent run (the configured one, or the one its multirun created) and
    the sweep folder; empty for a single run."""
    parent = sweep_parent_run(cfg.logger.get("parent_run_id"), launch.sweep_dir)
    if not parent:
        return {}
    return {"mlflow.parentRunId": parent, "sweep_id": parent,
            **({"sweep_dir": launch.sweep_dir} if launch.sweep_dir else {})}


def adopt(tracking_uri: str, run_id: str, sweep: dict[str, str]) -> None:
    """A re-launched sweep takes over the runs it skips or resumes, so that its parent lists every job."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for key, value in sweep.items():
        client.set_tag(run_id, key, value)


def log_run_files(client: MlflowClient, run_id: str, output_dir: Path, parts: RunParts,
                  datamodule: BrainSegmentationDataModule, card: str) -> None:
    """What a later ``predict --run`` / ``train --from-run`` needs: the net's final weights, the fitted
    preprocessing, each phase's last checkpoint, the stored splits and Hydra's composed config; and the
    model card."""
    weights, preprocess = (output_dir / MODEL_ARTIFACTS[key] for key in ("weights", "preprocess"))
    weights.parent.mkdir(exist_ok=True)
    torch.save(parts.net.state_dict(), weights)
    preprocess.write_text(json.dumps(datamodule.cache.preprocessor.config(), indent=1))
    client.log_artifacts(run_id, str(weights.parent), weights.parent.name)
    for checkpoint in sorted((output_dir / "checkpoints").rglob("last.ckpt")):
        client.log_artifact(run_id, str(checkpoint), str(checkpoint.parent.relative_to(output_dir)))
    if datamodule.splits_file is not None:
        client.log_artifact(run_id, str(datamodule.splits_file))
    if (output_dir / ".hydra" / "config.yaml").is_file():
        client.log_artifacts(run_id, str(output_dir / ".hydra"), "hydra")
    card_md = output_dir / MODEL_CARD
    card_md.write_text(card)
    client.log_artifact(run_id, str(card_md))


def _evaluate_and_log(cfg: DictConfig, edition: Edition, test_cases, predictions: Predictions, output_dir: Path,
                      client: MlflowClient, run_id: str, data_source: str) -> None:
    """Score the prediction files against the test cases' label files; log the headline metrics (means over
    cases, ``dice_WT``…), the per-case and per-statistic tables, the config and the figures."""
    references = {case.case_id: case.label for case, _ in test_cases}
    # strict: brainbench writes its own predictions in the edition's exact format, so any leniency an
    # organiser's scorer would grant would hide a bug here (for well-formed files both policies agree)
    evaluation = evaluate_folders(predictions.folder, references, edition.regions, protocol_for(edition),
                                  allowed_labels=set(edition.label_values), input_policy="strict")
    for problem in evaluation.problems:
        log.warning(problem)
    metrics_csv = write_metrics_csv(evaluation.metrics, output_dir / "metrics.csv",
                                    input_policy=evaluation.input_policy)
    statistics = case_statistics(evaluation.metrics)
    summary = {**headline_values(statistics), "inference_seconds_per_case": predictions.seconds_per_case,
               "n_test_cases": float(evaluation.metrics["case"].nunique()) if len(evaluation.metrics) else 0.0}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in summary.items()])
    client.log_table(run_id, evaluation.metrics[["case", "region", "metric", "value"]], "evaluation/per_case.json")
    client.log_table(run_id, statistics, "evaluation/statistics.json")

    config_yaml = output_dir / "config.yaml"
    config_yaml.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    metrics = headline_metrics(edition)
    figures = run_figures(cfg, edition, test_cases[0][0], predictions, evaluation.metrics, metrics, client, run_id,
                          output_dir / "figures", data_source)
    for artifact in (config_yaml, metrics_csv, *figures):
        client.log_artifact(run_id, str(artifact), None if artifact.parent == output_dir else "figures")
    print_leaderboard(statistics_table(statistics, list(edition.regions), metrics, data_source),
                      f"Run {cfg.run_name} — {edition.name} ({edition.protocol} protocol), {data_source} data",
                      cell_legend(metrics))


def run_figures(cfg: DictConfig, edition: Edition, case: Case, predictions: Predictions, case_metrics: pd.DataFrame,
                metrics: Sequence[str], client: MlflowClient, run_id: str, folder: Path,
                data_source: str) -> list[Path]:
    """The run's figures: the first test case's prediction after post-processing against its reference
    (read back from the files that were evaluated, on the case's own grid), the learning curves, and the
    per-case values of each headline metric per region. (Rank stability needs several configurations:
    the sweep's parent run and ``brainbench leaderboard`` draw it.)"""
    folder.mkdir(parents=True, exist_ok=True)
    image, grid = load_volume(case.images[edition.reference_grid or next(iter(case.images))])  # the labels' grid
    reference, _ = load_label(case.label)
    prediction, _ = load_label(predictions.folder / f"{case.case_id}.nii.gz")
    overlay = save_figure(overlay_figure(image, reference, prediction, edition.label_names, spacing=grid.spacing,
                                         title=f"{cfg.run_name} — {case.case_id} ({data_source} data)"),
                          folder / f"overlay_{case.case_id}.png")
    keys = [key for key in client.get_run(run_id).data.metrics if is_training_curve(key)]
    curves = save_figure(learning_curves_figure(metric_history(cfg.logger.tracking_uri, run_id, sorted(keys)),
                                                title=f"{cfg.run_name}: learning curves"),
                         folder / "learning_curves.png")
    team = case_metrics.assign(team=cfg.run_name)
    boxes = [save_figure(case_metric_figure(team, metric, [cfg.run_name],
                                            title=f"{cfg.run_name}: per-case {metric} ({data_source} data)"),
                         folder / f"cases_{metric}.png") for metric in metrics]
    return [overlay, curves, *boxes]


def predict_from_run(tracking_uri: str, run_id: str, input_dir: Path, out_dir: Path, device: str | None = None,
                     cache_dir: Path | None = None) -> Predictions:
    """Segment every case under ``input_dir`` (the run's edition's layout; label maps not needed) with the
    model a run logged: its resolved config, final weights and fitted preprocessing. Writes
    ``<out_dir>/<case_id>.nii.gz`` in the edition's label values on each case's own grid.

    ``device`` (cpu, cuda, ...) replaces the run's inference device; ``cache_dir`` holds the
    preprocessed cases (default: a temporary folder).
    """
    with tempfile.TemporaryDirectory() as tmp:
        files = download_run_model(tracking_uri, run_id, Path(tmp) / "run")
        cfg = OmegaConf.load(files["config"])
        if device:
            cfg.inference.device = device
        predictor = build_predictor(cfg, require_labels=False)
        predictor.net.load_state_dict(torch.load(files["weights"], map_location="cpu", weights_only=True))
        learned = json.loads(files["preprocess"].read_text())["stages"]
        for stage, stored in zip(as_pipeline(predictor.preprocess).stages, learned, strict=True):
            if "landmarks" in stored:  # what the learning stages fitted on the run's training cases
                stage.landmarks = stored["landmarks"]
        cases = predictor.adapter.discover(existing_dir(input_dir))
        cache = PreprocessedCache(cache_dir or Path(tmp) / "cache", predictor.preprocess)
        out_dir.mkdir(parents=True, exist_ok=True)
        loaded = cache.load_all(cases, predictor.adapter)
        return predictor.segment([(case, loaded[case.case_id]) for case in cases], out_dir)


def from_run_config(tracking_uri: str, run_id: str, folder: Path) -> Path:
    """A Hydra primary config in ``folder`` that re-runs a logged run: Hydra's composed (unresolved)
    config of that run, with brainbench's ``hydra`` settings and ``from_run`` set. Returns ``folder``.

    Command-line overrides still apply to its values; config groups cannot be swapped (the logged
    config is already composed).
    """
    composed = OmegaConf.load(download_run_model(tracking_uri, run_id, folder / "run", hydra_config=True)["hydra"])
    shipped = OmegaConf.load(Path(str(files("brainbench.conf").joinpath("config.yaml"))))
    composed.hydra, composed.from_run, composed.resume = shipped.hydra, run_id, False
    composed.logger.parent_run_id = None
    OmegaConf.save(composed, folder / "config.yaml")
    return folder
