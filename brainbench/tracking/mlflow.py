"""MLflow conventions: tracking URI, store preparation, run tags and flattened params.

MLflow ≥ 3.13 refuses the old ``./mlruns`` file store, so every entry point passes an explicit
tracking URI (default ``sqlite:///mlflow.db``). A fresh SQLite store migrates its schema on first
use and parallel first uses race, so the launching process prepares the store and experiment
before any job starts (:class:`PrepareTrackingStore`, a Hydra callback).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_TAGS = ("challenge", "edition", "model", "seed", "data_source", "git_commit")


def ensure_experiment(tracking_uri: str, experiment_name: str) -> str:
    """Create the store (schema migration) and the experiment if needed; return its id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(experiment_name)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(experiment_name).experiment_id


class PrepareTrackingStore(Callback):
    """Hydra callback: prepare the MLflow store once in the launching process, before any job of a
    multirun. A single run prepares it itself once its config has been checked, so that a config
    error leaves no store behind."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ensure_experiment(self.tracking_uri, self.experiment_name)


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


def runs_frame(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    """Finished runs of an experiment, oldest first: ``run_id``, ``run_name``, ``tags.*``, ``metrics.*``.

    Empty when the experiment does not exist or has no finished run.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame()
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"], max_results=50_000)
    return pd.DataFrame([
        {"run_id": run.info.run_id, "run_name": run.info.run_name,
         **{f"tags.{k}": v for k, v in run.data.tags.items()},
         **{f"metrics.{k}": v for k, v in run.data.metrics.items()}}
        for run in runs
    ])


def experiment_case_metrics(tracking_uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-case ``metrics.csv`` artifacts of an experiment's runs as one long frame, team = run name.

    Runs without that artifact and earlier leaderboard runs (tag ``kind=leaderboard``) are skipped.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    frames = []
    names = runs.get("run_name", pd.Series(index=runs.index, dtype=object)).fillna("")
    repeated = set(names[names.duplicated()]) | {""}
    with tempfile.TemporaryDirectory() as tmp:
        for (_, run), name in zip(runs.iterrows(), names):
            if run.get("tags.kind") == "leaderboard":
                continue
            if "metrics.csv" not in {artifact.path for artifact in client.list_artifacts(run["run_id"])}:
                continue
            local = client.download_artifacts(run["run_id"], "metrics.csv", f"{tmp}/{run['run_id']}")
            team = f"{name} ({run['run_id'][:8]})" if name in repeated else name
            frames.append(pd.read_csv(local).assign(team=team))
    if not frames:
        return pd.DataFrame(columns=["team", "case", "region", "metric", "value"])
    frame = pd.concat(frames, ignore_index=True)
    return frame[["team", "case", "region", "metric", "value"]]


def log_leaderboard_run(tracking_uri: str, experiment: str, files: Sequence[Path], tags: Mapping[str, str]) -> str:
    """Log ``files`` as artifacts of a new finished run tagged ``kind=leaderboard``; return its id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(ensure_experiment(tracking_uri, experiment), run_name="leaderboard",
                            tags={"kind": "leaderboard", **tags})
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id
