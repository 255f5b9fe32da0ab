"""Cross-validated sweeps through the real CLI (:func:`tests.helpers.check_sweep_store` says what is checked;
the same sweep against a live PostgreSQL-backed server is in tests/tracking/test_tracking_server.py), and
the names and hashes that identify a sweep's configurations."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from brainbench.config import compose
from brainbench.tracking.mlflow import config_hash, variant_label
from tests.helpers import check_sweep_store, run_sweep


@pytest.mark.slow
def test_joblib_sweep_of_2_models_by_2_folds_is_one_parent_run_on_sqlite(tmp_path):
    client = run_sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_sweep_store(client, tmp_path)


def test_a_configuration_is_named_by_its_overrides_without_seed_fold_and_logging():
    overrides = ["model=deepmedic_plus", "seed=2", "fold=1", "logger.experiment_name=x", "+logger.parent_run_id=abc",
                 "resume=true", "model.optimizer.lr=0.01"]
    assert variant_label(overrides) == "model=deepmedic_plus model.optimizer.lr=0.01"
    assert variant_label(["seed=0", "fold=0"]) == "default"


def test_the_config_hash_ignores_the_seed_and_where_a_run_writes_but_not_what_it_computes(tmp_path):
    def resolved(*overrides):
        return OmegaConf.to_container(compose([f"paths.data_dir={tmp_path}", *overrides]), resolve=False)

    base = resolved("seed=1")
    moved = {**base, "paths": {**base["paths"], "output_dir": "/elsewhere"}, "resume": True,
             "logger": {**base["logger"], "tracking_uri": "http://127.0.0.1:5000", "parent_run_id": "abc"}}
    assert config_hash(moved) == config_hash(base)
    assert config_hash(resolved("seed=2")) == config_hash(base)  # the seeds of one configuration share it
    assert config_hash(resolved("seed=1", "fold=0")) != config_hash(base)
    assert config_hash(resolved("seed=1", "trainer.max_epochs=7")) != config_hash(base)  # the default is 6
    # a configuration that differs only in a class (Hydra's _target_) is another configuration
    assert config_hash(resolved("seed=1", "loss._target_=brainbench.training.losses.SoftDice")) != config_hash(base)
