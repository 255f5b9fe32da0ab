"""Leaderboards take their ranked metrics, columns and legend from the edition's rule and protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from brainbench.challenges import EDITIONS
from brainbench.cli import main
from brainbench.data.synth import synthesize
from brainbench.evaluation.leaderboard import headline_metrics, leaderboard_table, mean_legend
from brainbench.io import load_label, save_volume


def _submissions(tmp_path, edition_name: str):
    """A synthetic release and three teams: exact, eroded labels, and nothing but the largest label's core."""
    root = tmp_path / "release"
    synthesize(edition_name, root, n_cases=3, spacing_mm=2.0, seed=4)
    references = EDITIONS[edition_name].find_references(root)
    teams = {"exact": tmp_path / "exact", "eroded": tmp_path / "eroded", "sparse": tmp_path / "sparse"}
    for case_id, path in references.items():
        labels, grid = load_label(path)
        eroded = np.where(ndimage.binary_erosion(labels > 0, iterations=1), labels, 0).astype(np.uint8)
        sparse = np.where(ndimage.binary_erosion(labels > 0, iterations=3), labels, 0).astype(np.uint8)
        for team, array in zip(teams, (labels, eroded, sparse)):
            save_volume(array, grid, teams[team] / f"{case_id}.nii.gz")
    return root, teams


def _board(tmp_path, edition_name, root, teams, capsys):
    out = tmp_path / "board"
    code = main(["leaderboard", "--submissions", *map(str, teams.values()), "--ref", str(root), "--challenge",
                 edition_name, "--out-dir", str(out), "--bootstrap", "0", "--workers", "2", "--quiet"])
    assert code == 0, capsys.readouterr().err
    return pd.read_csv(out / "leaderboard.csv"), (out / "leaderboard.md").read_text(), \
        pd.read_csv(out / "metrics.csv")


def test_brats2016_ranks_with_the_vsd_rule_on_its_own_metrics(tmp_path, capsys):
    root, teams = _submissions(tmp_path, "brats2016")
    table, markdown, metrics = _board(tmp_path, "brats2016", root, teams, capsys)
    assert list(table["team"]) == ["exact", "eroded", "sparse"]
    assert set(metrics["metric"]) == {"dice", "ppv", "sensitivity"}
    assert "vsd-mean-of-metric-ranks" in markdown and "hd95" not in markdown.lower()
    assert not [c for c in table.columns if "hd95" in c]
    assert {"label rank complete", "complete dice", "core ppv", "enhancing sensitivity"} <= set(table.columns)
    # the VSD rule by hand: mean over cases per region × metric, rank, mean over metrics, mean over regions
    means = metrics.groupby(["region", "metric", "team"])["value"].mean().unstack("team")
    ranks = means.rank(axis=1, ascending=False, method="min")
    expected = ranks.groupby(level="region").mean().mean(axis=0)
    assert table.set_index("team")["score"].to_dict() == pytest.approx(expected.to_dict())


def test_brats2023_ranks_on_lesionwise_dice_and_hd95(tmp_path, capsys):
    root, teams = _submissions(tmp_path, "brats2023_gli")
    table, markdown, _ = _board(tmp_path, "brats2023_gli", root, teams, capsys)
    assert list(table["team"])[0] == "exact"
    assert {"rank WT lesion_dice", "rank ET lesion_hd95", "WT lesion_dice", "TC lesion_hd95"} <= set(table.columns)
    assert not {"WT dice", "WT hd95", "rank WT dice"} & set(table.columns)
    assert "lesion_dice [1]" in markdown and "lesion_hd95 [mm]" in markdown


def test_unranked_edition_says_why_instead_of_ranking(tmp_path, capsys):
    code = main(["leaderboard", "--submissions", str(tmp_path), "--ref", str(tmp_path), "--challenge",
                 "mrbrains18", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "mrbrains18 is not ranked: the spec found no verified MRBrainS18 ranking rule" in err[0]


@pytest.mark.parametrize("name", list(EDITIONS))
def test_run_table_columns_come_from_the_edition(name):
    edition = EDITIONS[name]
    metrics = headline_metrics(edition)
    region = next(iter(edition.regions))
    runs = pd.DataFrame([{"run_id": "r1", "run_name": "a", "tags.model": "m", "tags.seed": "0",
                          "tags.data_source": "synthetic",
                          **{f"metrics.{m}_{r}": 0.5 for r in edition.regions for m in metrics}}])
    table = leaderboard_table(runs, list(edition.regions), metrics)
    assert [c for c in table.columns if " " in c] == [f"{r} {m}" for r in edition.regions for m in metrics]
    assert not table.astype(str).apply(lambda column: column.str.contains("nan")).any().any()
    assert f"{region} hd95" not in table.columns or "hd95" in metrics
    assert all(f"{metric} [" in mean_legend(metrics) for metric in metrics)
