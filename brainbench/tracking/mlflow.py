"""MLflow conventions: tracking URI, store preparation, sweeps as parent runs, run identity, queries.

MLflow ≥ 3.13 refuses the old ``./mlruns`` file store, so every entry point passes an explicit
tracking URI (default ``sqlite:///mlflow.db``; a ``http://`` server with a SQL database at scale).
A fresh SQLite store migrates its schema on first use and parallel first uses race, so the
launching process prepares the store and experiment before any job starts, and creates the
sweep's parent run there (:class:`SweepTracking`, a Hydra callback); the jobs — in this process,
in joblib workers, or on SLURM nodes — find the parent's id in the sweep folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from hydra.experimental.callback import Callback
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from omegaconf import DictConfig

from brainbench.challenges import Unranked, get_edition
from brainbench.errors import BrainbenchError
from brainbench.evaluation.leaderboard import aggregate_legend, aggregate_runs, headline_metrics, rank_teams, write_tables
from brainbench.evaluation.plots import case_metric_png
from brainbench.evaluation.ranking import rule_for

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_ARTIFACTS = {"weights": "model/weights.pt", "preprocess": "model/preprocess.json"}
"""A run's model: the net's final ``state_dict`` and the preprocessing stages with what they fitted."""
PARENT_RUN_FILE = "mlflow_parent_run_id"
"""File in a multirun's sweep folder holding the parent run's id, written before any job starts."""
RUN_LOCAL_KEYS = ("seed", "run_name", "resume", "from_run", "quiet", "trainer.enable_progress_bar")
"""Config keys that do not say which configuration a run is (with everything under :data:`RUN_LOCAL_GROUPS`):
left out of :func:`config_hash`, so that the runs of one configuration over seeds share a hash."""
RUN_LOCAL_GROUPS = ("paths.", "logger.", "hydra.", "model.card.")
"""Where a run writes, how it is tracked, and the model's card (its description, not a setting): not part of
its configuration, nor of its MLflow params."""


def ensure_experiment(tracking_uri: str, experiment_name: str) -> str:
    """Create the store (schema migration) and the experiment if needed; return its id. A SQLite store's new
    experiment keeps its artifacts beside the store (``<store folder>/mlartifacts/<experiment>``), not in
    the launching folder's ``mlruns/`` (MLflow's default)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    store = sqlite_store_file(tracking_uri)
    location = (store.parent / "mlartifacts" / experiment_name).as_uri() if store is not None else None
    try:
        return client.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(experiment_name).experiment_id


def sqlite_store_file(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (absolute); None for any other tracking URI."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?")[0]).resolve()


class SweepTracking(Callback):
    """Hydra callback: a multirun is one MLflow parent run with its jobs as child runs.

    In the launching process, before any job starts, it prepares the store and experiment, then
    creates the parent run (tag ``kind=sweep``, the sweep's overrides as its description) — or
    adopts ``parent_run_id`` when one is given (``brainbench reproduce`` nests several sweeps under
    its own run) — and writes its id to the sweep folder, where every job reads it whatever the
    launcher. When the sweep ends it logs the sweep's leaderboard (aggregated over folds and seeds)
    to the parent and closes a parent it created: FINISHED when every child finished, FAILED
    otherwise. A single run prepares the store itself once its config has been checked, so that a
    config error leaves no store behind.
    """

    def __init__(self, tracking_uri: str, experiment_name: str, parent_run_id: str | None = None):
        self.tracking_uri, self.experiment_name, self.parent_run_id = tracking_uri, experiment_name, parent_run_id
        self.created = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        experiment_id = ensure_experiment(self.tracking_uri, self.experiment_name)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        if not self.parent_run_id:
            overrides = list(config.hydra.overrides.task)
            client = MlflowClient(tracking_uri=self.tracking_uri)
            run = client.create_run(experiment_id, run_name=f"sweep-{sweep_dir.name}", tags={
                "kind": "sweep", "sweep.overrides": " ".join(overrides)[:5000],
                "sweep.launcher": str(config.hydra.launcher.get("_target_", "")),
                "sweep.sweeper": str(config.hydra.sweeper.get("_target_", "")),
                "mlflow.note.content": "Hydra multirun: brainbench train -m " + " ".join(overrides),
                "mlflow.source.git.commit": git_commit()})
            self.parent_run_id, self.created = run.info.run_id, True
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        client = MlflowClient(tracking_uri=self.tracking_uri)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        children = [run for run in child_runs(self.tracking_uri, self.parent_run_id)
                    if self.created or run.data.tags.get("sweep_dir") == str(sweep_dir)]
        # an adopted parent holds several sweeps (brainbench reproduce): each its own folder
        folder = Path("leaderboard") if self.created else Path("sweeps") / sweep_dir.name
        if (sweep_dir / "multirun.yaml").is_file():
            client.log_artifact(self.parent_run_id, str(sweep_dir / "multirun.yaml"), str(folder))
        with tempfile.TemporaryDirectory() as tmp:
            for path in sweep_board_files(self.tracking_uri, children, Path(tmp)):
                client.log_artifact(self.parent_run_id, str(path), str(folder / path.parent.relative_to(tmp)))
        if self.created:
            every_child_finished = bool(children) and all(run.info.status == "FINISHED" for run in children)
            client.set_terminated(self.parent_run_id, "FINISHED" if every_child_finished else "FAILED")


def sweep_parent_run(parent_run_id: str | None, sweep_dir: str | Path | None) -> str | None:
    """The parent run a job reports to: the configured one, else the one its sweep's launching
    process created (:class:`SweepTracking`), else none (a single run)."""
    if parent_run_id:
        return str(parent_run_id)
    marker = Path(sweep_dir) / PARENT_RUN_FILE if sweep_dir else None
    return marker.read_text().strip() if marker is not None and marker.is_file() else None


def child_runs(tracking_uri: str, parent_run_id: str) -> list:
    """Every run (any status, any experiment) whose parent is ``parent_run_id``, oldest first."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=50_000)


def config_hash(config: Mapping[str, Any]) -> str:
    """A run's configuration: the SHA-256 (16 hex digits) of its resolved config without seed, paths, logger
    and the other keys of :data:`RUN_LOCAL_KEYS`, classes (``_target_``) included. Runs with one hash differ
    only by seed: grouping by it in the MLflow UI gives the mean over seeds; hash and seed together identify
    a run (``resume``)."""
    return hashlib.sha256(json.dumps(_computed_settings(config), sort_keys=True).encode()).hexdigest()[:16]


def run_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config as MLflow params: flattened, without Hydra's instantiation keys (``_target_``,
    ``_partial_``), paths, logger settings, seed and run name (:data:`RUN_LOCAL_KEYS`). The full config
    stays an artifact (``config.yaml``); the seed is a tag."""
    return {key: value for key, value in _computed_settings(config).items()
            if key.rsplit(".", 1)[-1] not in ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")}


def _computed_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """The flattened config without what only says where or under which seed a run writes."""
    return {key: value for key, value in flatten(config).items()
            if key not in RUN_LOCAL_KEYS and not key.startswith(RUN_LOCAL_GROUPS)}


def runs_with_hash(tracking_uri: str, experiment_name: str, digest: str, seed: int | str) -> list:
    """Runs of ``experiment_name`` with config hash ``digest`` and ``seed``, newest first (empty without the
    experiment)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.config_hash = '{digest}' and tags.seed = '{seed}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}`` as MLflow params (values as strings, ≤ 500 chars)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


def git_commit(directory: str | Path | None = None) -> str:
    """The checkout's commit hash, ``unknown`` outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def variant_overrides(overrides: Sequence[str]) -> list[str]:
    """What distinguishes a sweep job's configuration from the others', for grouping its folds and seeds:
    its command-line overrides without ``seed``, ``fold`` and the keys that do not change the result."""
    ignored = {"fold", *RUN_LOCAL_KEYS}
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ignored
            and not o.lstrip("+~").startswith(RUN_LOCAL_GROUPS)]


def variant_label(overrides: Sequence[str]) -> str:
    """:func:`variant_overrides` as one label, ``default`` when there are none."""
    return " ".join(variant_overrides(overrides)) or "default"


def runs_frame(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    """Finished runs of an experiment, oldest first: ``run_id``, ``run_name``, ``tags.*``, ``metrics.*``.

    Empty when the experiment does not exist or has no finished run.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame()
    return runs_to_frame(client.search_runs([experiment.experiment_id],
                                            filter_string="attributes.status = 'FINISHED'",
                                            order_by=["attributes.start_time ASC"], max_results=50_000))


def experiment_case_metrics(tracking_uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-case ``metrics.csv`` artifacts of an experiment's runs as one long frame, team = run name.

    Runs without that artifact and earlier leaderboard runs (tag ``kind=leaderboard``) are skipped.
    """
    names = runs.get("run_name", pd.Series(index=runs.index, dtype=object)).fillna("")
    repeated = set(names[names.duplicated()]) | {""}
    teams = [f"{name} ({run_id[:8]})" if name in repeated else name for name, run_id in zip(names, runs["run_id"])]
    return _case_metrics(tracking_uri, runs, teams, pooled=False)


def configurations(runs: pd.DataFrame) -> pd.Series:
    """Each run's configuration: its ``variant`` tag (a sweep job's overrides without seed and fold), else
    its run name — what a leaderboard aggregates folds and seeds over."""
    names = runs.get("run_name", pd.Series("", index=runs.index)).fillna("")
    return runs.get("tags.variant", pd.Series(index=runs.index, dtype=object)).fillna(names)


def pooled_case_metrics(tracking_uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-case metrics of runs, team = configuration (:func:`configurations`), every fold × seed
    repetition of a test case kept as a case of its own (``case · fold F · seed S``): the pooled
    per-case values a cross-validated ranking compares."""
    return _case_metrics(tracking_uri, runs, list(configurations(runs)), pooled=True)


def _case_metrics(tracking_uri: str, runs: pd.DataFrame, teams: Sequence[str], pooled: bool) -> pd.DataFrame:
    """The runs' ``metrics.csv`` artifacts, one team label per run, as one long frame."""
    client = MlflowClient(tracking_uri=tracking_uri)
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for (_, run), team in zip(runs.iterrows(), teams):
            if run.get("tags.kind") == "leaderboard":
                continue
            if "metrics.csv" not in {artifact.path for artifact in client.list_artifacts(run["run_id"])}:
                continue
            local = client.download_artifacts(run["run_id"], "metrics.csv", f"{tmp}/{run['run_id']}")
            frame = pd.read_csv(local).assign(team=team)
            if pooled:
                frame["case"] = frame["case"].astype(str) + f" · fold {run.get('tags.fold', 'none')} · seed " \
                    + str(run.get("tags.seed", "?"))
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["team", "case", "region", "metric", "value"])
    frame = pd.concat(frames, ignore_index=True)
    return frame[["team", "case", "region", "metric", "value"]]


def runs_to_frame(runs: Sequence) -> pd.DataFrame:
    """MLflow ``Run`` objects → ``run_id``, ``run_name``, ``status``, ``tags.*``, ``metrics.*`` columns."""
    return pd.DataFrame([
        {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
         **{f"tags.{k}": v for k, v in run.data.tags.items()},
         **{f"metrics.{k}": v for k, v in run.data.metrics.items()}}
        for run in runs
    ])


def sweep_board_files(tracking_uri: str, children: Sequence, out_dir: Path) -> list[Path]:
    """The sweep's leaderboard files in ``out_dir/<edition>/``: configurations aggregated over folds and
    seeds (mean ± SD over runs), a box plot of the pooled per-case values of each headline metric, and
    — for a ranked edition with more than one configuration — the challenge ranking of the pooled
    per-case metrics with its rank-stability figure. Finished children only."""
    runs = runs_to_frame([run for run in children if run.info.status == "FINISHED"])
    files: list[Path] = []
    if runs.empty or "tags.edition" not in runs:
        return files
    for edition_name, edition_runs in runs.groupby("tags.edition"):
        try:
            edition = get_edition(str(edition_name))
        except BrainbenchError:  # a cohort declared in a user's YAML file: no declaration to read here
            continue
        folder, metrics = out_dir / edition.name, headline_metrics(edition)
        table = aggregate_runs(edition_runs, configurations(edition_runs), list(edition.regions), metrics)
        title = f"Sweep leaderboard — {edition.name} ({edition.protocol} protocol), folds × seeds aggregated"
        files += write_tables(table, folder, title, [aggregate_legend(metrics)])
        pooled = pooled_case_metrics(tracking_uri, edition_runs)
        if pooled.empty:
            continue
        labels = list(table["configuration"])
        for metric in metrics:
            files.append(case_metric_png(pooled, metric, labels, folder / f"cases_{metric}.png",
                                         title=f"{edition.name}: per-case {metric}, folds × seeds pooled"))
        if not isinstance(edition.ranking, Unranked) and len(labels) > 1:
            files += rank_teams(pooled, rule_for(edition), f"{title}: ranking of pooled per-case metrics",
                                ", ".join(sorted(set(table["data"]))), folder / "ranking", n_bootstrap=200).files
    return files


def download_run_model(tracking_uri: str, run_id: str, folder: Path, hydra_config: bool = False) -> dict[str, Path]:
    """Download what re-using a run needs into ``folder``: ``config`` (resolved config.yaml), ``weights``
    and ``preprocess`` (its ``model/`` artifacts), or with ``hydra_config`` Hydra's composed config
    (``hydra``). A run that lacks them is a one-line error."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise BrainbenchError(f"{tracking_uri}: no run {run_id!r} in this MLflow store") from None
    wanted = {"hydra": "hydra/config.yaml"} if hydra_config else {"config": "config.yaml", **MODEL_ARTIFACTS}
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    for key, artifact in wanted.items():
        try:
            found[key] = Path(client.download_artifacts(run_id, artifact, str(folder)))
        except (mlflow.exceptions.MlflowException, OSError):
            raise BrainbenchError(f"run {run_id} ({run.info.run_name}) has no {artifact} artifact: it was logged "
                                  "by an older brainbench or did not finish") from None
    return found


def log_leaderboard_run(tracking_uri: str, experiment: str, files: Sequence[Path], tags: Mapping[str, str]) -> str:
    """Log ``files`` as artifacts of a new finished run tagged ``kind=leaderboard``; return its id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(ensure_experiment(tracking_uri, experiment), run_name="leaderboard",
                            tags={"kind": "leaderboard", **tags})
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


COMPARISON_VIEW = "brainbench"
"""The key of the runs-table view brainbench saves in each experiment (:func:`save_comparison_view`)."""
COMPARISON_TAGS = ("challenge", "edition", "model", "fold", "seed", "data_source", "config_hash")
"""The tags a researcher compares runs by, shown as columns of that view."""


def _column(kind: str, key: str) -> str:
    """The runs table's column id of a run's tag or metric (``tags.`seed```), as MLflow's UI names it."""
    return f"{kind}.`{key}`"


def save_comparison_view(tracking_uri: str, experiment_id: str, metric_keys: Sequence[str]) -> None:
    """Save a view of the experiment's runs table with brainbench's tags and ``metric_keys`` (the edition's
    headline metrics in its region order; MLflow would sort them by name) as columns, and run names wide
    enough to show the seed — the state MLflow's own "Share" button saves (experiment tag
    ``mlflow.sharedViewState.<key>``), opened by :func:`runs_table_url`. A fresh MLflow runs table shows
    no tag or metric column at all."""
    run_name = "attributes.`Run Name`"
    columns = [_column("tags", tag) for tag in COMPARISON_TAGS] + [_column("metrics", key) for key in metric_keys]
    view = {"selectedColumns": columns, "columnOrder": [run_name, *columns], "columnWidths": {run_name: 420}}
    client = MlflowClient(tracking_uri=tracking_uri)
    key, value = f"mlflow.sharedViewState.{COMPARISON_VIEW}", json.dumps(view)
    if client.get_experiment(experiment_id).tags.get(key) == value:
        return
    _again_after_a_race(lambda: client.set_experiment_tag(experiment_id, key, value))


def _again_after_a_race(write: Callable[[], None]) -> None:
    """``write`` once more when it fails: a sweep's parallel jobs writing one experiment tag or one dataset at
    once race in MLflow's SQL store, which checks for the row, then inserts it, so that the slower job hits
    the unique key; by then the row exists, and the second write updates or links it."""
    try:
        write()
    except mlflow.exceptions.MlflowException:
        write()


def runs_table_url(tracking_uri: str, experiment_id: str) -> str:
    """Where a user compares an experiment's runs: its runs table in brainbench's view (MLflow 3's experiment
    page otherwise opens on a GenAI/traces overview). A SQLite store needs ``mlflow ui`` started on it first."""
    page = f"#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then http://127.0.0.1:5000/{page}"


def moved_artifact_location(tracking_uri: str, experiment_id: str) -> str | None:
    """A warning when a SQLite store's experiment keeps its artifacts outside the store's folder — what a
    copied or moved ``mlflow.db`` does: MLflow stores each experiment's artifact location as an absolute
    path when it creates the experiment, so new runs would write their artifacts into the original folder."""
    store_file = sqlite_store_file(tracking_uri)
    if store_file is None:
        return None
    store = store_file.parent
    location = MlflowClient(tracking_uri=tracking_uri).get_experiment(experiment_id).artifact_location
    local = location.removeprefix("file://")
    if "://" in local or Path(local).is_relative_to(store):  # a remote artifact store, or beside the store
        return None
    return (f"experiment {experiment_id} of {tracking_uri} stores its artifacts in {location}, outside the store's "
            f"folder {store} (MLflow keeps the location an experiment was created with, also in a copied or moved "
            "store): this run's artifacts go there; name a new experiment (logger.experiment_name=...) to keep "
            "them beside the store")


def metric_history(tracking_uri: str, run_id: str, keys: Sequence[str]) -> pd.DataFrame:
    """Every logged value of ``keys`` of a run: columns ``key``, ``step``, ``value`` (learning curves)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    rows = [{"key": key, "step": m.step, "value": m.value}
            for key in keys for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(rows, columns=["key", "step", "value"])


def log_dataset(tracking_uri: str, run_id: str, cases: pd.DataFrame, source: str, name: str, context: str) -> None:
    """Log ``cases`` (one row per case: id, files, grade…) as an MLflow dataset input of the run, in MLflow's
    own slot (``Dataset`` column, run page), with ``context`` (training, validation, test)."""
    with warnings.catch_warnings():  # MLflow registers its local-file source twice (schemes "" and "file") and
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(cases, source=source, name=name)  # says so on every local source
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])]
    client = MlflowClient(tracking_uri=tracking_uri)
    _again_after_a_race(lambda: client.log_inputs(run_id, datasets=inputs))  # the folds' common test set


def log_model(tracking_uri: str, run_id: str, net: Any, version: str, registered_name: str | None = None) -> None:
    """Log the trained net as the run's MLflow model (``mlflow.pytorch``, pickle format: the pt2 format needs
    an example input per model), registered as a new version of ``registered_name`` when given, loadable
    with ``mlflow.pytorch.load_model`` wherever brainbench ``version`` is installed (the module is pickled:
    load only models you trust)."""
    import mlflow.pytorch  # here: it imports torch and Lightning, which leaderboards and reproduce do not need

    mlflow.set_tracking_uri(tracking_uri)
    pytorch_log = logging.getLogger("mlflow.pytorch")
    level = pytorch_log.level
    pytorch_log.setLevel(logging.ERROR)  # its warning recommends pt2, which needs an example input per model
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(net, name="model", registered_model_name=registered_name,
                                     pip_requirements=[f"brainbench=={version}"], serialization_format="pickle")
    finally:
        pytorch_log.setLevel(level)
