"""MLflow at sweep scale: N parallel jobs logging per-epoch metrics to SQLite and to a PostgreSQL-backed server.

Usage: python benchmarks/bench_tracking_scale.py [--jobs 2 4 8] [--epochs 20] [--metrics 10] [--epoch-seconds 0.2]

For each backend — the embedded default ``sqlite:///…/mlflow.db`` and a real ``mlflow server`` (one uvicorn
worker) on a PostgreSQL 15 database, both started here in a temporary folder (tests/servers.py) — and
each N, N fresh job processes (a sweep's jobs) open one run each in a fresh experiment (created first
by the launching process, as brainbench's sweep callback does) with brainbench's trainer logger
(``RunLogger``, Lightning's ``MLFlowLogger``), then, released together, run ``--epochs`` epochs: an
"epoch" sleeps ``--epoch-seconds`` ±25 % (training, without taking the shared cores) then logs
``--metrics`` metrics as the trainer does, a validation and a training ``log_metrics`` call at the
epoch's last step. The logging overhead of an epoch is the wall time of those two calls.

Prints, per backend and N: metrics sent, metrics found afterwards in the store (every run's metric
histories, read back through MLflow's client) and lost, the median and 95th percentile of the logging
overhead per epoch over all jobs' epochs (ms), and the wall time from the first job's start to the last
job's end (process start, run creation, epochs). A 0.2 s epoch is far shorter than a real one: with 8
jobs it asks the store for 80 writes per second, a stress, not a typical load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from multiprocessing.context import ForkServerContext
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests/servers.py

from brainbench.tracking.mlflow import ensure_experiment  # noqa: E402
from brainbench.training.fit import RunLogger  # noqa: E402
from tests.servers import job_processes, mlflow_server, postgres_database  # noqa: E402

STEPS_PER_EPOCH = 50


def job(tracking_uri: str, experiment: str, index: int, epochs: int, n_metrics: int, epoch_seconds: float,
        start: Barrier, results: Queue) -> None:
    """One sweep job; puts (run id, metric names, metrics sent, per-epoch logging overheads in s) on ``results``."""
    ensure_experiment(tracking_uri, experiment)
    logger = RunLogger(experiment_name=experiment, tracking_uri=tracking_uri, run_name=f"job-{index}", log_model=False)
    logger.log_hyperparams({"job": index, "epochs": epochs})
    halves = ([f"val/metric_{k}" for k in range(n_metrics // 2)],
              [f"train/metric_{k}" for k in range(n_metrics - n_metrics // 2)])
    rng = np.random.default_rng(index)
    overheads, sent = [], 0
    start.wait(timeout=600)
    for epoch in range(epochs):
        time.sleep(epoch_seconds * rng.uniform(0.75, 1.25))
        began = time.perf_counter()
        for names in halves:
            logger.log_metrics({name: float(rng.random()) for name in names}, step=(epoch + 1) * STEPS_PER_EPOCH - 1)
        overheads.append(time.perf_counter() - began)
        sent += n_metrics
    logger.experiment.set_terminated(logger.run_id, "FINISHED")
    results.put((logger.run_id, [*halves[0], *halves[1]], sent, overheads))


def sweep(context: ForkServerContext, tracking_uri: str, n_jobs: int, args: argparse.Namespace) -> dict[str, float]:
    """Run ``n_jobs`` jobs in parallel into a fresh experiment; count what arrived."""
    experiment = f"scale-{n_jobs}-jobs"
    ensure_experiment(tracking_uri, experiment)
    start, results = context.Barrier(n_jobs), context.Queue()
    processes = [context.Process(target=job, args=(tracking_uri, experiment, index, args.epochs, args.metrics,
                                                   args.epoch_seconds, start, results)) for index in range(n_jobs)]
    began = time.perf_counter()
    for process in processes:
        process.start()
    reports = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    wall = time.perf_counter() - began
    if any(process.exitcode for process in processes):
        raise RuntimeError(f"a job failed on {tracking_uri}: see its traceback above")
    client = MlflowClient(tracking_uri=tracking_uri)
    found = sum(len(client.get_metric_history(run_id, name)) for run_id, names, _, _ in reports for name in names)
    overheads = 1000 * np.concatenate([report[3] for report in reports])
    sent = sum(report[2] for report in reports)
    return {"sent": sent, "found": found, "lost": sent - found, "median": float(np.median(overheads)),
            "p95": float(np.percentile(overheads, 95)), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=10, help="metrics logged per epoch")
    parser.add_argument("--epoch-seconds", type=float, default=0.2)
    args = parser.parse_args()
    context = job_processes()  # its imports overlap the servers' start-up
    rows = []
    with tempfile.TemporaryDirectory(prefix="brainbench-bench-tracking-") as tmp:
        folder = Path(tmp)
        sqlite = f"sqlite:///{folder / 'mlflow.db'}"
        began = time.perf_counter()
        with postgres_database(folder) as database:
            postgres_up = time.perf_counter()
            with mlflow_server(database, folder / "artifacts") as server:
                server_up = time.perf_counter()
                for name, uri in (("SQLite (embedded)", sqlite), ("mlflow server + PostgreSQL", server)):
                    rows += [(name, n, sweep(context, uri, n, args)) for n in args.jobs]
    print(f"{args.epochs} epochs × {args.metrics} metrics per job (2 log_metrics calls per epoch), "
          f"epoch {args.epoch_seconds:g} s ±25 %; PostgreSQL up in {postgres_up - began:.1f} s, "
          f"mlflow server in {server_up - postgres_up:.1f} s\n")
    print("| backend | jobs | metrics sent | metrics found | lost | log overhead/epoch median (ms) | p95 (ms) "
          "| wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, r in rows:
        print(f"| {name} | {n} | {r['sent']} | {r['found']} | {r['lost']} | {r['median']:.1f} | {r['p95']:.1f} "
              f"| {r['wall']:.1f} |")


if __name__ == "__main__":
    main()
