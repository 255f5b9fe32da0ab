"""The MLflow UI, checked in a real browser: a sweep made with the real CLI, served by a real ``mlflow server``,
opened in headless Chromium (Debian's ``chromium``, driven by Playwright through ``executable_path``; no
browser download). What a researcher must see in the runs table: the sweep's runs grouped under their parent,
brainbench's tags and the headline metrics as columns, with the values stored in the runs.

The columns come from the view brainbench saves in each experiment (MLflow's own mechanism behind the runs
page's "Share" button: an experiment tag ``mlflow.sharedViewState.<key>`` holding the view's JSON), opened
with the URL ``brainbench train`` prints (``#/experiments/<id>/runs?viewStateShareKey=brainbench``). The
parent row is expanded with its own button, as a user does (a shared view does not carry expanded rows).

The same sweep's store is also checked directly: what each run logs (names, params, tags, dataset inputs,
description, artifacts, model) and that grouping by ``config_hash`` is the mean over seeds. MLflow's page keeps polling, so the test waits for the
``load`` event and for the rows it needs, never for network idle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from playwright.sync_api import Locator, Page, expect, sync_playwright

from brainbench.tracking.mlflow import runs_table_url
from tests.helpers import TINY, run_cli, summary_metric_keys
from tests.servers import mlflow_server

TAGS = ("challenge", "edition", "model", "fold", "seed", "data_source")
"""brainbench's tags a researcher compares runs by."""
HEADLINE_METRICS = ("dice_WT", "dice_TC", "dice_ET")
"""The headline metrics shown as columns (run metrics ``<metric>_<region>``, the edition's region order)."""
EXPERIMENT = "ui"
RUN_NAME_COLUMN = "attributes.`Run Name`"
TIMEOUT_MS = 60_000
"""How long a page element may take to appear: the first load parses MLflow's 20 MB bundle on two busy cores."""


def column_id(kind: str, key: str) -> str:
    """The runs table's column id of a run's tag or metric (``tags.`seed```), as MLflow's UI names it."""
    return f"{kind}.`{key}`"


def sweep_of_two_seeds(workdir: Path) -> tuple[MlflowClient, str, Run, list[Run]]:
    """``brainbench train -m seed=0,1`` (the tiny DeepMedic on synthetic data) into a SQLite store in
    ``workdir``; the store's client, its experiment id, the sweep's parent run and its child runs by seed."""
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    result = run_cli("train", "-m", "seed=0,1", *TINY, "quiet=true", f"logger.experiment_name={EXPERIMENT}",
                     f"logger.tracking_uri={tracking_uri}", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Epoch " not in result.stdout and "Compare runs" not in result.stdout  # quiet: run.log has them
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    children = sorted((run for run in runs if run.info.run_id != parent.info.run_id),
                      key=lambda run: run.data.tags["seed"])
    assert [run.data.tags.get("mlflow.parentRunId") for run in children] == [parent.info.run_id] * 2
    for run in children:
        assert set(HEADLINE_METRICS) <= set(run.data.metrics), f"{run.info.run_name} lacks headline metrics"
    return client, experiment_id, parent, children


def artifact_folder(tmp_path: Path) -> Path:
    """Where screenshots go: ``$BRAINBENCH_TEST_ARTIFACTS`` when set (a folder to keep), else the test's own."""
    folder = Path(os.environ.get("BRAINBENCH_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page: Page, path: Path) -> None:
    """A screenshot of the whole page, its path printed for the test's report."""
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


@contextmanager
def screenshot_on_failure(page: Page, path: Path) -> Iterator[None]:
    """Record what the browser showed when a step or assertion of the block failed."""
    try:
        yield
    except BaseException:
        screenshot(page, path)
        raise


def cell(page: Page, run: Run, column: str) -> Locator:
    """The runs table's cell of ``run`` in ``column`` (rows are keyed by run id)."""
    return page.locator(f'[role="row"][row-id="{run.info.run_id}"] [role="gridcell"][col-id="{column}"]')


def open_runs_table(page: Page, url: str, experiment_id: str, parent: Run) -> None:
    """The experiment's runs table in brainbench's view, at the address ``brainbench train`` prints (not the
    GenAI overview an experiment opens on), the assistant panel closed so that the columns fit, and the
    sweep's parent row expanded."""
    page.goto(runs_table_url(url, experiment_id), wait_until="load")
    parent_name = cell(page, parent, RUN_NAME_COLUMN)
    expect(parent_name).to_contain_text(parent.info.run_name, timeout=TIMEOUT_MS)
    close_assistant = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close_assistant.is_visible():
        close_assistant.click()
    parent_name.locator('button[data-component-id*="runnamecellrenderer"]').click()  # the row's expand button


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, MlflowClient, str, Run, list[Run]]:
    workdir = tmp_path_factory.mktemp("ui")
    return workdir, *sweep_of_two_seeds(workdir)


@pytest.mark.slow
def test_a_sweep_shows_its_runs_tags_and_headline_metrics_in_the_mlflow_runs_table(sweep, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
    workdir, client, experiment_id, parent, children = sweep
    folder = artifact_folder(tmp_path)

    with (mlflow_server(f"sqlite:///{workdir / 'mlflow.db'}", tmp_path / "artifacts") as url,
          sync_playwright() as playwright):
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 2200, "height": 700})
            with screenshot_on_failure(page, folder / "mlflow_ui_failure.png"):
                open_runs_table(page, url, experiment_id, parent)
                for run in children:
                    expect(cell(page, run, RUN_NAME_COLUMN)).to_contain_text(run.info.run_name, timeout=TIMEOUT_MS)
                    for tag in TAGS:
                        expect(cell(page, run, column_id("tags", tag))).to_have_text(run.data.tags[tag])
                    for metric in HEADLINE_METRICS:
                        shown = cell(page, run, column_id("metrics", metric)).inner_text()  # full precision
                        assert float(shown) == pytest.approx(run.data.metrics[metric]), (metric, shown)
                for metric in HEADLINE_METRICS:
                    header = page.locator(f'[role="columnheader"][col-id="{column_id("metrics", metric)}"]')
                    expect(header).to_have_text(metric)
                shown_tags = [{tag: cell(page, run, column_id("tags", tag)).inner_text() for tag in TAGS}
                              for run in children]
                assert [tags["seed"] for tags in shown_tags] == ["0", "1"]
                assert {(tags["challenge"], tags["edition"], tags["model"], tags["data_source"])
                        for tags in shown_tags} == {("brats", "brats2020", "deepmedic", "synthetic")}
                screenshot(page, folder / "mlflow_ui_sweep.png")
        finally:
            browser.close()


def test_each_run_logs_readable_metrics_plain_params_and_mlflow_own_slots(sweep, tmp_path):
    workdir, client, experiment_id, parent, children = sweep
    regions, measured = ("WT", "TC", "ET"), ("dice", "hd95", "sensitivity", "specificity")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert summary_metric_keys(run.data.metrics) == {
            f"{metric}_{region}" for metric in measured for region in regions} | {"inference_seconds_per_case",
                                                                                  "n_test_cases"}
        assert not [key for key in params if key.rsplit(".", 1)[-1].startswith("_")
                    or key.startswith(("paths.", "logger.", "hydra.", "model.card."))
                    or key in ("run_name", "seed")]
        assert params["trainer.max_epochs"] == "2" and params["model.net.feature_maps"] == "[4, 4, 4, 4, 4, 4, 6, 6]"
        assert tags["mlflow.parentRunId"] == tags["sweep_id"] == parent.info.run_id
        assert Path(tags["sweep_dir"]).is_dir() and f"seed={tags['seed']}" in tags["overrides"]
        assert tags["mlflow.source.git.commit"] == commit
        assert run.info.run_name.startswith(f"deepmedic-brats2020-seed{tags['seed']} ")
        assert "max_epochs=2" in run.info.run_name  # the settings that differ from the defaults
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "validation", "test"}
        assert {dataset.name for dataset in inputs.values()} == {"brats2020 (synthetic)"}
        assert json.loads(inputs["test"].profile)["num_rows"] == run.data.metrics["n_test_cases"] == 1
        folder = tmp_path / run.info.run_id
        card = Path(client.download_artifacts(run.info.run_id, "model_card.md", str(folder))).read_text()
        assert tags["mlflow.note.content"] == card and card.startswith("### deepmedic")
        log = Path(client.download_artifacts(run.info.run_id, "run.log", str(folder))).read_text()
        assert "Data source: synthetic" in log and "Epoch 2/2" in log
        per_case = pd.read_json(client.download_artifacts(run.info.run_id, "evaluation/per_case.json", str(folder)),
                                orient="split")
        metrics_csv = pd.read_csv(client.download_artifacts(run.info.run_id, "metrics.csv", str(folder)))
        pd.testing.assert_frame_equal(per_case.reset_index(drop=True),
                                      metrics_csv[["case", "region", "metric", "value"]], check_dtype=False)
        (model,) = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
        assert model.name == "model"
    assert len({run.data.tags["config_hash"] for run in children}) == 1  # the seeds of one configuration


def test_grouping_runs_by_config_hash_gives_the_mean_over_seeds(sweep, tmp_path):
    """What "group by config_hash" shows in the MLflow UI, computed here from the runs' per-case files."""
    workdir, client, experiment_id, parent, children = sweep
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    grouped = runs.groupby("tags.config_hash")["metrics.dice_WT"].mean()
    per_seed = [pd.read_csv(client.download_artifacts(run.info.run_id, "metrics.csv", str(tmp_path / run.info.run_id)))
                .query("region == 'WT' and metric == 'dice'")["value"].mean() for run in children]
    assert len(runs) == 2 and grouped.to_dict() == {children[0].data.tags["config_hash"]: pytest.approx(np.mean(per_seed))}
