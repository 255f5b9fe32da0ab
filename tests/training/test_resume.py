"""Runs that survive faults, through the real CLI: a run SIGKILLed during epoch 2 resumes from its last
checkpoint into the same MLflow run and ends with exactly the metrics of an uninterrupted run;
re-launching the finished config in a sweep skips it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import TINY, held_out_metrics
from tests.helpers import run_cli as brainbench

RESUMABLE = [*TINY, "trainer.max_epochs=3", "sampler.segments_per_epoch=400", "trainer.enable_progress_bar=false",
             "model.scheduler.milestones=[1,2]", "resume=true"]
"""Epochs long enough (a few seconds) to be killed in the middle of one; the learning rate halves after each
epoch, so that a resumed fit that missed or repeated a scheduler step would end with other metrics."""


def _store(path: Path) -> str:
    return f"logger.tracking_uri=sqlite:///{path}"


def _only_run(store: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("brats2020").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def _kill_when_epoch_1_is_checkpointed(command: list[str], cwd: Path) -> Path:
    """Start ``command``; SIGKILL its process group as soon as the end-of-epoch-1 checkpoint is on disk."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            found = list((cwd / "runs").rglob("checkpoints/last.ckpt")) if (cwd / "runs").is_dir() else []
            if found:
                size = found[0].stat().st_size
                time.sleep(0.05)  # let the writer finish the file
                if found[0].stat().st_size == size and size > 0:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
                    return found[0]
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.stderr.read()[-3000:]}")
            time.sleep(0.02)
        pytest.fail("no epoch checkpoint within 300 s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_during_epoch_2_resumes_into_the_same_run_with_identical_metrics(tmp_path):
    uninterrupted = brainbench("train", *RESUMABLE, _store(tmp_path / "uninterrupted.db"), cwd=tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    (killed_dir / "datasets").symlink_to(tmp_path / "datasets")  # same synthetic cases, no second synthesis
    store = tmp_path / "killed.db"
    command = [sys.executable, "-m", "brainbench.cli", "train", *RESUMABLE, _store(store)]
    checkpoint = _kill_when_epoch_1_is_checkpointed(command, killed_dir)
    progress = torch.load(checkpoint, map_location="cpu", weights_only=False)["loops"]["fit_loop"]["epoch_progress"]
    assert progress["current"]["completed"] == 1 and progress["current"]["ready"] == 1  # killed in epoch 2
    _, killed = _only_run(store)
    assert killed.info.status == "RUNNING"  # SIGKILL: nobody closed the run

    resumed = brainbench("train", *RESUMABLE, _store(store), cwd=killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming run {killed.info.run_id}" in resumed.stdout
    client, run = _only_run(store)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"

    reference_client, reference = _only_run(tmp_path / "uninterrupted.db")
    test_metrics = held_out_metrics(reference.data.metrics)
    assert test_metrics and {k: run.data.metrics[k] for k in test_metrics} == test_metrics
    for key in ("train_loss", "val_cross_entropy"):
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        expected = [(m.step, m.value) for m in reference_client.get_metric_history(reference.info.run_id, key)]
        assert sorted(set(history)) == expected, key  # epoch 1 logged once before the kill, then epochs 2–3

    # the same config re-launched as a sweep: the finished job is skipped, and the new sweep's parent adopts it
    again = brainbench("train", "-m", *RESUMABLE, _store(store), cwd=killed_dir)
    assert again.returncode == 0 and f"Skipped: run {run.info.run_id}" in again.stdout, again.stderr[-3000:]
    runs = client.search_runs([run.info.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(runs) == 2 and client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
