"""Every ranking rule on small tables whose ranks are worked out by hand in the comments."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from brainbench.challenges import EDITIONS
from brainbench.errors import BrainbenchConfigError
from brainbench.evaluation.ranking import (
    RULES,
    isles_mean_rank,
    mean_of_metric_ranks,
    mrbrains13_rank_sum,
    msseg_separate,
    rank_then_aggregate,
    rule_for,
)


def long(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["team", "case", "region", "metric", "value"])


def ranks(table: pd.DataFrame) -> dict[str, int]:
    return dict(zip(table["team"], table["rank"]))


BRATS = long([
    ("A", "c1", "WT", "dice", 0.9), ("A", "c1", "WT", "hd95", 2.0),
    ("A", "c2", "WT", "dice", 0.8), ("A", "c2", "WT", "hd95", 5.0),
    ("B", "c1", "WT", "dice", 0.9), ("B", "c1", "WT", "hd95", 3.0),
    ("B", "c2", "WT", "dice", 0.7), ("B", "c2", "WT", "hd95", 1.0),
    ("C", "c1", "WT", "dice", 0.5), ("C", "c1", "WT", "hd95", 2.0),
    ("C", "c2", "WT", "dice", math.nan),  # C's c2 HD95 row is missing altogether
])


def test_rank_then_aggregate_min_ties_hd95_lower_is_better_missing_is_worst():
    # c1 dice: A .9, B .9 → 1, 1; C → 3.   c1 hd95: A 2, C 2 → 1, 1; B 3 → 3.
    # c2 dice: A 1, B 2, C (NaN) 3.          c2 hd95: B 1 → 1, A 5 → 2, C (missing) → 3.
    table = rank_then_aggregate(BRATS)
    assert dict(zip(table["team"], table["score"])) == {"A": 5 / 4, "B": 7 / 4, "C": 10 / 4}
    assert ranks(table) == {"A": 1, "B": 2, "C": 3}
    assert table.loc[table.team == "B", "rank WT hd95"].item() == 2.0  # (3 + 1) / 2
    assert table.loc[table.team == "A", "normalised"].item() == pytest.approx(5 / 4 / 3)


def test_rank_then_aggregate_average_ties():
    table = rank_then_aggregate(BRATS, ties="average")
    # c1 dice: A, B 1.5; c1 hd95: A, C 1.5 → A (1.5+1.5+1+2)/4, B (1.5+3+2+1)/4, C (3+1.5+3+3)/4
    assert dict(zip(table["team"], table["score"])) == pytest.approx({"A": 1.5, "B": 1.875, "C": 2.625})


def test_identical_teams_share_the_best_rank():
    twin = BRATS[BRATS.team == "A"].assign(team="A2")
    assert ranks(rank_then_aggregate(pd.concat([BRATS, twin]))) == {"A": 1, "A2": 1, "B": 3, "C": 4}


def test_vsd_mean_of_metric_ranks_counts_a_missing_case_as_zero():
    rows = []
    for metric in ("dice", "ppv", "sensitivity"):
        # WT: A .8/.6, .5/.5, .5/.5; B submitted c1 only (.9) → B's means .45 < A's: A wins all 3 WT ranks.
        rows += [("A", "c1", "WT", metric, 0.8 if metric == "dice" else 0.5),
                 ("A", "c2", "WT", metric, 0.6 if metric == "dice" else 0.5),
                 ("B", "c1", "WT", metric, 0.9)]
        # TC: B wins dice and sensitivity, A wins ppv → TC label ranks A 5/3, B 4/3.
        a_value = 0.95 if metric == "ppv" else 0.1
        b_value = 0.5 if metric == "ppv" else 0.9
        rows += [("A", case, "TC", metric, a_value) for case in ("c1", "c2")]
        rows += [("B", case, "TC", metric, b_value) for case in ("c1", "c2")]
    table = mean_of_metric_ranks(long(rows))
    # final: A (1 + 5/3) / 2 = 4/3, B (2 + 4/3) / 2 = 5/3
    assert dict(zip(table["team"], table["score"])) == pytest.approx({"A": 4 / 3, "B": 5 / 3})
    assert ranks(table) == {"A": 1, "B": 2}
    assert table.loc[table.team == "B", "label rank WT"].item() == 2.0


def test_mrbrains13_rank_sum_tie_broken_by_lowest_sd_over_tissues():
    # ranks (dice, hd95, avd) per tissue; every combination is a permutation of 1..3:
    design = {
        "Y": {"GM": (1, 1, 3), "WM": (2, 2, 2), "CSF": (2, 2, 2)},  # sum 17, per tissue 5/6/6
        "X": {"GM": (2, 2, 1), "WM": (1, 1, 1), "CSF": (3, 3, 3)},  # sum 17, per tissue 5/3/9
        "Z": {"GM": (3, 3, 2), "WM": (3, 3, 3), "CSF": (1, 1, 1)},  # sum 20
    }
    value = {"dice": {1: 0.9, 2: 0.8, 3: 0.7}, "hd95": {1: 1.0, 2: 2.0, 3: 3.0}, "avd": {1: 1.0, 2: 2.0, 3: 3.0}}
    rows = [(team, case, tissue, metric, value[metric][rank])
            for team, tissues in design.items() for tissue, triple in tissues.items()
            for metric, rank in zip(("dice", "hd95", "avd"), triple) for case in ("1", "2")]
    table = mrbrains13_rank_sum(long(rows))
    assert dict(zip(table["team"], table["score"])) == {"Y": 17, "X": 17, "Z": 20}
    assert list(table["team"]) == ["Y", "X", "Z"] and ranks(table) == {"Y": 1, "X": 2, "Z": 3}


def test_isles_failed_cases_take_the_lowest_vacant_rank():
    rows = long([
        # c1: C failed (Dice 0) although its ASSD/HD would be best → rank 3 everywhere.
        ("A", "c1", "lesion", "dice", 0.8), ("A", "c1", "lesion", "assd", 2.0), ("A", "c1", "lesion", "hd", 10.0),
        ("B", "c1", "lesion", "dice", 0.6), ("B", "c1", "lesion", "assd", 1.0), ("B", "c1", "lesion", "hd", 20.0),
        ("C", "c1", "lesion", "dice", 0.0), ("C", "c1", "lesion", "assd", 0.5), ("C", "c1", "lesion", "hd", 5.0),
        # c2: A failed.
        ("A", "c2", "lesion", "dice", 0.0), ("A", "c2", "lesion", "assd", 50.0), ("A", "c2", "lesion", "hd", 80.0),
        ("B", "c2", "lesion", "dice", 0.7), ("B", "c2", "lesion", "assd", 3.0), ("B", "c2", "lesion", "hd", 9.0),
        ("C", "c2", "lesion", "dice", 0.5), ("C", "c2", "lesion", "assd", 2.0), ("C", "c2", "lesion", "hd", 12.0),
    ])
    table = isles_mean_rank(rows).set_index("team")
    # A: c1 1,2,1  c2 3,3,3 → 13/6.  B: c1 2,1,2  c2 1,2,1 → 9/6.  C: c1 3,3,3  c2 2,1,2 → 14/6.
    assert table["score"].to_dict() == pytest.approx({"A": 13 / 6, "B": 9 / 6, "C": 14 / 6})
    assert table["rank"].to_dict() == {"B": 1, "A": 2, "C": 3}
    assert table["cases"].to_dict() == {"A": 1, "B": 2, "C": 1}
    assert table.loc["A", "assd mean"] == 2.0  # the failed case's 50 mm is left out
    assert table.loc["A", "dice mean"] == 0.4  # Dice averages over all cases


def test_msseg_reports_segmentation_and_detection_separately():
    rows = long([
        ("A", "p1", "lesion", "dice", 0.7), ("A", "p1", "lesion", "lesion_f1", 0.3),
        ("A", "p2", "lesion", "dice", 0.6), ("A", "p2", "lesion", "lesion_f1", math.nan),
        ("B", "p1", "lesion", "dice", 0.5), ("B", "p1", "lesion", "lesion_f1", 0.6),
        ("B", "p2", "lesion", "dice", 0.6), ("B", "p2", "lesion", "lesion_f1", 0.4),
    ])
    table = msseg_separate(rows).set_index("team")
    assert table["rank"].to_dict() == {"A": 1, "B": 2}
    assert table["detection rank"].to_dict() == {"A": 2, "B": 1}
    assert table.loc["A", "detection score"] == 0.3  # NaN (anima's 0/0) left out


def test_rules_by_edition_and_unknown_metric_direction():
    assert rule_for(EDITIONS["brats2020"]).name == "brats-rank-then-aggregate"
    assert rule_for(EDITIONS["brats2016"]).name == "vsd-mean-of-metric-ranks"
    assert rule_for(EDITIONS["isles2015_siss"]).name == "isles-mean-rank"
    assert rule_for(EDITIONS["mrbrains13"]) is RULES["mrbrains13-rank-sum"]
    with pytest.raises(BrainbenchConfigError, match="mrbrains18 is not ranked: the spec found no verified"):
        rule_for(EDITIONS["mrbrains18"])
    with pytest.raises(BrainbenchConfigError, match=r"ranked metrics \['hd95'\] are missing"):
        rank_then_aggregate(BRATS[BRATS["metric"] != "hd95"])
    with pytest.raises(BrainbenchConfigError, match="vdr"):
        rank_then_aggregate(long([("A", "c", "WT", "vdr", 0.1)]), metrics=("vdr",))
    with pytest.raises(BrainbenchConfigError, match="ties"):
        rank_then_aggregate(BRATS, ties="best")
