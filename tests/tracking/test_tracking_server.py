"""Parallel jobs lose no metric: four processes log like brainbench's trainer to a live ``mlflow server`` on
PostgreSQL, and to the embedded SQLite default (issue 12, item 5).

Each job is a fresh process (as in a joblib or SLURM sweep) that prepares the experiment
(:func:`~brainbench.tracking.mlflow.ensure_experiment`), opens its run with the trainer's logger
(:class:`~brainbench.training.fit.RunLogger`, Lightning's ``MLFlowLogger``), logs params, then per
epoch a validation and a training batch of metrics at the epoch's last step — all four jobs at once,
released by a barrier — and one artifact. Each job writes down what it sent; the test reads the
runs back through MLflow's client and compares every metric history, param and artifact with that
record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from multiprocessing.context import ForkServerContext
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from brainbench.tracking.mlflow import ensure_experiment
from brainbench.training.fit import RunLogger
from tests.helpers import check_sweep_store, run_sweep
from tests.servers import job_processes, mlflow_server, postgres_database

JOBS, EPOCHS, STEPS_PER_EPOCH = 4, 5, 20
EXPERIMENT = "parallel-sweep"
VAL_METRICS = ("val_cross_entropy", "val_ce_dice", "val_dice_segments", "val_tc_dice_segments",
               "val_et_dice_segments")
TRAIN_METRICS = ("train_loss", "train_ce_dice", "train_cross_entropy", "lr-SGD", "epoch")


def log_like_trainer(tracking_uri: str, job: int, start: Barrier, folder: Path) -> None:
    """One sweep job: open a run the way ``pipeline.train`` does, log, close it; write ``job-<job>.json``:
    the run id and every param, metric (key, step, value) and artifact text this job sent."""
    ensure_experiment(tracking_uri, EXPERIMENT)
    logger = RunLogger(experiment_name=EXPERIMENT, tracking_uri=tracking_uri, run_name=f"job-{job}",
                       tags={"job": str(job)}, log_model=False)
    params = {"seed": job, "model": "deepmedic", "optimizer.lr": 10.0 ** -(job + 1)}
    logger.log_hyperparams(params)
    rng = np.random.default_rng(job)
    sent: list[tuple[str, int, float]] = []
    start.wait(timeout=120)
    for epoch in range(EPOCHS):
        step = (epoch + 1) * STEPS_PER_EPOCH - 1
        for names in (VAL_METRICS, TRAIN_METRICS):
            metrics = {name: float(epoch) if name == "epoch" else float(rng.random()) for name in names}
            logger.log_metrics(metrics, step=step)
            sent += [(name, step, value) for name, value in metrics.items()]
    artifact = folder / f"job-{job}" / "notes.txt"
    artifact.parent.mkdir(parents=True)
    artifact.write_text(f"job {job}: {rng.random()!r}\n")
    logger.experiment.log_artifact(logger.run_id, str(artifact))
    logger.experiment.set_terminated(logger.run_id, "FINISHED")
    record = {"run_id": logger.run_id, "params": {k: str(v) for k, v in params.items()}, "metrics": sent,
              "artifact": artifact.read_text()}
    (folder / f"job-{job}.json").write_text(json.dumps(record))


def run_parallel_jobs(context: ForkServerContext, tracking_uri: str, folder: Path) -> list[dict]:
    """Start :data:`JOBS` job processes at once, wait for them, return their records."""
    start = context.Barrier(JOBS)
    jobs = [context.Process(target=log_like_trainer, args=(tracking_uri, job, start, folder))
            for job in range(JOBS)]
    for process in jobs:
        process.start()
    for process in jobs:
        process.join(timeout=300)
    assert [process.exitcode for process in jobs] == [0] * JOBS, "a job failed: see its traceback above"
    return [json.loads((folder / f"job-{job}.json").read_text()) for job in range(JOBS)]


def assert_everything_arrived(tracking_uri: str, records: list[dict], folder: Path) -> None:
    """Every run finished, with exactly the params, metric histories and artifact its job sent."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(record["run_id"] for record in records)
    for job, record in enumerate(records):
        run = client.get_run(record["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == f"job-{job}"
        assert run.data.params == record["params"]
        sent: dict[str, list[tuple[int, float]]] = {}
        for key, step, value in record["metrics"]:
            sent.setdefault(key, []).append((step, value))
        assert sum(map(len, sent.values())) == EPOCHS * (len(VAL_METRICS) + len(TRAIN_METRICS))
        assert set(run.data.metrics) == set(sent)
        for key, values in sent.items():
            stored = sorted((metric.step, metric.value) for metric in client.get_metric_history(record["run_id"], key))
            assert stored == sorted(values), f"job {job}, {key}: stored {stored}, sent {sorted(values)}"
        local = client.download_artifacts(record["run_id"], "notes.txt", str(folder / f"download-{job}"))
        assert Path(local).read_text() == record["artifact"]


def test_parallel_jobs_lose_nothing_on_sqlite(tmp_path):
    context = job_processes()  # its imports overlap the store's migration
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment(uri, EXPERIMENT)  # the launching process migrates the fresh store (see ensure_experiment)
    records = run_parallel_jobs(context, uri, tmp_path)
    assert_everything_arrived(uri, records, tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A live ``mlflow server`` on a fresh PostgreSQL database (its URL and artifact folder), shared by this
    module's tests: starting one costs 15–20 s."""
    folder = tmp_path_factory.mktemp("server")
    with postgres_database(folder) as database, mlflow_server(database, folder / "artifacts") as url:
        yield url, folder / "artifacts"


def test_parallel_jobs_lose_nothing_on_postgres_server(server, tmp_path):
    context = job_processes()
    url, artifacts = server
    records = run_parallel_jobs(context, url, tmp_path)  # the jobs race to create the experiment
    assert_everything_arrived(url, records, tmp_path)
    assert any(artifacts.rglob("notes.txt"))  # uploaded through the server to its store


@pytest.mark.slow
def test_joblib_sweep_of_2_models_by_2_folds_is_one_parent_run_on_postgres_server(server, tmp_path):
    url, _ = server
    check_sweep_store(run_sweep(tmp_path, url), tmp_path)
