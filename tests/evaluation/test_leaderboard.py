"""Leaderboards through the real CLI: five real BraTS algorithms as teams, MLflow experiments, published tables."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from brainbench.errors import BrainbenchDataError
from brainbench.evaluation.leaderboard import EVIDENCE_TAGS, PUBLISHED_COLUMNS, SPLITS, load_published
from tests.helpers import REAL_DATA
from tests.helpers import run_cli as brainbench

REAL_CASE = REAL_DATA / "brats_toolkit_TCGA-DU-7294" / "TCGA-DU-7294_brainles"
TEAMS = ("hnfnetv1-20", "isen-20", "sanet0-20", "scan-20", "yixinmpl-20")
CASE_ID = "TCGA-DU-7294"


def rank_by_hand(metrics: pd.DataFrame) -> dict[str, int]:
    """BraTS rank-then-aggregate written out plainly: rank = 1 + number of strictly better teams."""
    totals = dict.fromkeys(metrics["team"].unique(), 0.0)
    combos = metrics[metrics["metric"].isin(["dice", "hd95"])].groupby(["case", "region", "metric"])
    for (_, _, metric), rows in combos:
        better = (lambda a, b: a > b) if metric == "dice" else (lambda a, b: a < b)
        for team, value in zip(rows["team"], rows["value"]):
            totals[team] += 1 + sum(better(other, value) for other in rows["value"])
    return {team: 1 + sum(other < total for other in totals.values()) for team, total in totals.items()}


@pytest.mark.slow
def test_real_case_five_algorithms_leaderboard(tmp_path):
    (tmp_path / "ref").mkdir()
    shutil.copy(REAL_CASE / "fusion" / "mav.nii.gz", tmp_path / "ref" / f"{CASE_ID}.nii.gz")
    for team in TEAMS:
        (tmp_path / "subs" / team).mkdir(parents=True)
        shutil.copy(REAL_CASE / "segmentation" / f"{team}.nii.gz", tmp_path / "subs" / team / f"{CASE_ID}.nii.gz")
    result = brainbench("leaderboard", "--submissions", *(f"subs/{t}" for t in TEAMS), "--ref", "ref",
                        "--challenge", "brats2020", "--out-dir", "board", "--bootstrap", "100",
                        "--bootstrap-unit", "case-region", "--data-source", "real", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    board = tmp_path / "board"
    metrics = pd.read_csv(board / "metrics.csv")
    assert len(metrics) == len(TEAMS) * 3 * 4  # teams × regions × metrics of the one case
    table = pd.read_csv(board / "leaderboard.csv")
    assert dict(zip(table["team"], table["rank"])) == rank_by_hand(metrics)
    assert list(table["rank"]) == sorted(table["rank"]) and table["rank"].iloc[0] == 1
    assert (board / "rank_stability.png").stat().st_size > 10_000
    written = {p.name for p in board.iterdir()}
    assert {"cases_dice.png", "cases_hd95.png", "leaderboard.html", "leaderboard.tex"} <= written
    markdown = (board / "leaderboard.md").read_text()
    assert "Data source: real." in markdown and "brats-rank-then-aggregate" in markdown
    assert "case-regions" in markdown  # the bootstrap unit is stated next to the numbers
    assert "\\begin{tabular}" in (board / "leaderboard.tex").read_text()
    assert "<table" in (board / "leaderboard.html").read_text()


@pytest.mark.slow
def test_experiment_leaderboard_ranks_run_artifacts_and_logs_to_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    for name, dice in (("good", 0.9), ("bad", 0.5)):
        run = client.create_run(experiment, run_name=name, tags={"edition": "brats2020", "data_source": "synthetic"})
        rows = [(c, r, m, dice if m == "dice" else (1 - dice) * 10) for c in ("a", "b") for r in ("WT", "TC", "ET")
                for m in ("dice", "hd95")]
        csv = tmp_path / name / "metrics.csv"
        csv.parent.mkdir()
        pd.DataFrame(rows, columns=["case", "region", "metric", "value"]).to_csv(csv, index=False)
        client.log_artifact(run.info.run_id, str(csv))
        client.set_terminated(run.info.run_id)
    result = brainbench("leaderboard", "--experiment", "e", "--tracking-uri", uri, "--out-dir", "out",
                        "--bootstrap", "20", "--log-to-mlflow", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(table["team"]) == ["good", "bad"] and list(table["rank"]) == [1, 2]
    assert "SYNTHETIC" in (tmp_path / "out" / "leaderboard.md").read_text()
    logged = client.search_runs([experiment], filter_string="tags.kind = 'leaderboard'")
    assert len(logged) == 1
    artifacts = {a.path for a in client.list_artifacts(logged[0].info.run_id)}
    assert {"leaderboard.md", "leaderboard.csv", "rank_stability.png"} <= artifacts


def test_experiment_leaderboard_aggregates_folds_and_pools_their_cases_for_ranking(tmp_path):
    """Two configurations × two folds: one row per configuration, mean ± SD over its folds of each run's
    mean Dice, and a ranking of the configurations on the per-case values of every fold pooled."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cv", artifact_location=(tmp_path / "artifacts").as_uri())
    dice = {("model=good", "0"): 0.9, ("model=good", "1"): 0.8, ("model=bad", "0"): 0.5, ("model=bad", "1"): 0.4}
    for (variant, fold), value in dice.items():
        run = client.create_run(experiment, run_name=f"{variant}-fold{fold}", tags={
            "edition": "brats2020", "data_source": "synthetic", "variant": variant, "fold": fold, "seed": "0"})
        rows = [(c, r, m, value if m == "dice" else (1 - value) * 10) for c in ("a", "b") for r in ("WT", "TC", "ET")
                for m in ("dice", "hd95")]
        csv = tmp_path / f"{variant}-{fold}" / "metrics.csv"
        csv.parent.mkdir()
        pd.DataFrame(rows, columns=["case", "region", "metric", "value"]).to_csv(csv, index=False)
        client.log_artifact(run.info.run_id, str(csv))
        for region in ("WT", "TC", "ET"):
            client.log_metric(run.info.run_id, f"dice_{region}", value)
            client.log_metric(run.info.run_id, f"hd95_{region}", (1 - value) * 10)
        client.set_terminated(run.info.run_id)
    result = brainbench("leaderboard", "--experiment", "cv", "--tracking-uri", uri, "--out-dir", "out",
                        "--bootstrap", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "configurations over folds × seeds" in result.stdout
    assert "0.850±0.071 (2)" in result.stdout and "0.450±0.071 (2)" in result.stdout  # SD of (0.9, 0.8), n − 1
    ranked = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(ranked["team"]) == ["model=good", "model=bad"]
    pooled = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert pooled.groupby("team")["case"].nunique().to_dict() == {"model=bad": 4, "model=good": 4}  # 2 cases × 2 folds


def test_leaderboard_submissions_needs_ref_and_challenge(tmp_path):
    (tmp_path / "a").mkdir()
    result = brainbench("leaderboard", "--submissions", "a", cwd=tmp_path)
    assert result.returncode == 2 and "--ref DIR and --challenge EDITION" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_published_table_parses_with_citation_split_and_tag():
    tables = load_published()
    assert {"akkus2017_table4", "brats", "isles", "msseg", "mrbrains"} <= set(tables["table"])
    assert set(PUBLISHED_COLUMNS) <= set(tables.columns)
    assert set(tables["split"]) <= set(SPLITS) and set(tables["verified"]) <= set(EVIDENCE_TAGS)
    assert tables["citation"].str.len().min() > 5
    table4 = load_published("akkus2017_table4").set_index(["model", "region"])
    assert table4.loc[("Pereira CNN", "TC"), "value"] == 0.83  # architectures.md §2.6
    isles = load_published("isles")
    frozen_2016 = isles[(isles.edition == "isles2016") & (isles.metric == "mean_rank")]
    assert frozen_2016["value"].tolist() == [3.34, 3.42, 3.68, 4.38]


def test_published_loader_rejects_an_unknown_tag(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("split,region,metric,value,verified,citation,spec\nchallenge test set,WT,dice,0.9,X,someone,§1\n")
    with pytest.raises(BrainbenchDataError, match=r"tags \['X'\]"):
        load_published("bad", folder=tmp_path)
