"""Wilcoxon + Holm, the adjacent-team permutation test, bootstrap rank stability and its blob plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon
from statsmodels.stats.multitest import multipletests

from brainbench.errors import BrainbenchConfigError
from brainbench.evaluation.plots import rank_stability_png
from brainbench.evaluation.ranking import per_case_ranks, rank_then_aggregate
from brainbench.evaluation.stats import (
    adjacent_permutation_tests,
    bootstrap_ranks,
    holm,
    paired_permutation_test,
    pairwise_wilcoxon,
)


def frame_of(values: dict[str, np.ndarray], region: str = "WT", metric: str = "dice") -> pd.DataFrame:
    return pd.DataFrame([(team, f"c{i}", region, metric, v) for team, vs in values.items() for i, v in enumerate(vs)],
                        columns=["team", "case", "region", "metric", "value"])


def test_holm_by_hand():
    # sorted .01, .03, .04 × 3, 2, 1 → .03, .06, .04 → running max .03, .06, .06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 0.2, 12)
    p[3] = p[7]  # a tie
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-15)


def test_pairwise_wilcoxon_with_holm():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.8, 12)
    frame = frame_of({"A": base + rng.uniform(0.05, 0.1, 12), "B": base, "B2": base.copy()})
    table = pairwise_wilcoxon(frame, "WT", "dice").set_index(["team_a", "team_b"])
    expected_p = wilcoxon(frame[frame.team == "A"]["value"].to_numpy() - base).pvalue
    assert table.loc[("A", "B"), "p"] == pytest.approx(expected_p)
    assert table.loc[("B", "B2"), "p"] == 1.0  # all differences zero
    assert table["p_holm"].to_numpy() == pytest.approx(multipletests(table["p"], method="holm")[1])
    assert table.loc[("A", "B"), "a_better"] and not table.loc[("B", "B2"), "a_better"]
    hd = pairwise_wilcoxon(frame.assign(metric="hd95"), "WT", "hd95").set_index(["team_a", "team_b"])
    assert not hd.loc[("A", "B"), "a_better"]  # a larger HD95 is worse


def test_permutation_test_seeded_and_sensible():
    a, b = np.arange(10.0) + 1.0, np.arange(10.0)
    p = paired_permutation_test(a, b, n_permutations=5000, seed=3)
    assert p == paired_permutation_test(a, b, n_permutations=5000, seed=3)
    assert p < 0.01  # exact two-sided value: 2 / 2**10
    assert paired_permutation_test(a, a.copy(), n_permutations=500) == 1.0


def test_adjacent_permutation_tests_follow_the_ranking():
    rng = np.random.default_rng(0)
    frame = pd.concat([frame_of({t: rng.uniform(0.1, 0.3, 8) + s for t, s in (("A", 0.6), ("B", 0.3), ("C", 0.29))}),
                       frame_of({t: rng.uniform(1, 2, 8) + s for t, s in (("A", 0), ("B", 1), ("C", 1))},
                                metric="hd95")])
    ranking = rank_then_aggregate(frame)
    scores = per_case_ranks(frame).groupby(level="case").mean()
    tests = adjacent_permutation_tests(scores, ranking, n_permutations=2000, seed=1)
    assert list(tests["team"]) == list(ranking["team"])[:-1] and tests.iloc[0]["team"] == "A"
    assert tests.iloc[0]["p"] < 0.05


def test_bootstrap_rank_frequencies_are_seeded_and_normalised(tmp_path):
    rng = np.random.default_rng(2)
    frame = frame_of({"best": rng.uniform(0.9, 1.0, 10), "mid1": rng.uniform(0.3, 0.7, 10),
                      "mid2": rng.uniform(0.3, 0.7, 10)})
    rank = lambda f: rank_then_aggregate(f, metrics=("dice",))  # noqa: E731
    first = bootstrap_ranks(frame, rank, n_samples=60, seed=7)
    again = bootstrap_ranks(frame, rank, n_samples=60, seed=7)
    pd.testing.assert_frame_equal(first.ranks, again.ranks)
    frequencies = first.frequencies()
    assert list(frequencies.index) == list(first.original["team"])
    assert frequencies.sum(axis=1).to_numpy() == pytest.approx(1.0)
    assert frequencies.loc["best", 1] == 1.0  # best in every case → first in every sample
    assert 0 < frequencies.loc["mid1", 2] < 1  # the middle teams swap
    assert first.summary().set_index("team").loc["best", "q97.5"] == 1
    assert len(first.kendall_tau) == 60
    path = rank_stability_png(frequencies, list(first.original["rank"]), tmp_path / "blob.png")
    assert path.stat().st_size > 5000 and [p.name for p in tmp_path.iterdir()] == ["blob.png"]


def test_bootstrap_over_case_region_pairs_of_a_single_case():
    frame = pd.concat([frame_of({"A": [0.9], "B": [0.8]}, region="WT"), frame_of({"A": [0.7], "B": [0.8]}, region="TC"),
                       frame_of({"A": [0.9], "B": [0.5]}, region="ET")])
    rank = lambda f: rank_then_aggregate(f, metrics=("dice",))  # noqa: E731
    by_case = bootstrap_ranks(frame, rank, n_samples=40, seed=0)
    assert (by_case.ranks.groupby("team")["rank"].nunique() == 1).all()  # one case: no spread at all
    by_pair = bootstrap_ranks(frame, rank, n_samples=40, seed=0, unit="case-region")
    assert by_pair.ranks[by_pair.ranks.team == "B"]["rank"].min() == 1  # B wins samples drawing TC often
    with pytest.raises(BrainbenchConfigError, match="unit"):
        bootstrap_ranks(frame, rank, n_samples=2, unit="region")
