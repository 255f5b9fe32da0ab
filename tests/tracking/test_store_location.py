"""A copied SQLite store keeps its experiments' absolute artifact locations: brainbench says so at run start."""

from __future__ import annotations

import shutil

from mlflow.tracking import MlflowClient

from brainbench.tracking.mlflow import ensure_experiment, moved_artifact_location


def test_a_copied_store_is_told_where_its_artifacts_still_go(tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    copy.mkdir()
    experiment_id = ensure_experiment(f"sqlite:///{original / 'mlflow.db'}", "brats2020")
    location = MlflowClient(tracking_uri=f"sqlite:///{original / 'mlflow.db'}").get_experiment(
        experiment_id).artifact_location
    assert moved_artifact_location(f"sqlite:///{original / 'mlflow.db'}", experiment_id) is None
    shutil.copy(original / "mlflow.db", copy / "mlflow.db")
    warning = moved_artifact_location(f"sqlite:///{copy / 'mlflow.db'}", experiment_id)
    assert warning is not None and location in warning and str(copy) in warning
    assert "logger.experiment_name" in warning


def test_a_new_experiment_keeps_its_artifacts_beside_the_store_not_in_the_launching_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(ensure_experiment(uri, "brats2020"))
    (tmp_path / "notes.txt").write_text("x")
    client.log_artifact(run.info.run_id, str(tmp_path / "notes.txt"))
    assert list((tmp_path / "store" / "mlartifacts" / "brats2020").rglob("notes.txt"))
    assert not (tmp_path / "mlruns").exists()
