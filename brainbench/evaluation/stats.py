"""Statistics on a leaderboard: are two teams really different, and how stable is the ranking?

* Pairwise Wilcoxon signed-rank tests on per-case values with Holm's step-down correction
  (challengeR's "test-then-rank" building block; anchors.md §9).
* The BraTS permutation test between teams adjacent in the final ranking, on their per-case ranks
  (challenges.md §2.7, Bakas et al. 2018 [R]).
* Bootstrap rank stability as challengeR's ``bootstrap()``: resample cases with replacement, rank
  again with the challenge's rule, report how often each team lands on each rank and Kendall's τ
  to the original ranking.

Every random draw comes from ``numpy.random.default_rng(seed)``: the same seed gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, wilcoxon

from brainbench.errors import BrainbenchConfigError
from brainbench.evaluation.ranking import check_long_frame, metric_sign

BOOTSTRAP_UNITS = ("case", "case-region")
"""What the bootstrap resamples: whole cases (challengeR), or (case, region) pairs for tiny test sets."""


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def pairwise_wilcoxon(frame: pd.DataFrame, region: str, metric: str, alpha: float = 0.05) -> pd.DataFrame:
    """Two-sided Wilcoxon signed-rank test for every pair of teams on the cases both scored.

    Returns one row per pair: ``team_a, team_b, n_cases, median_difference`` (a − b, in the metric's
    unit), ``p``, ``p_holm`` (Holm over all pairs) and ``a_better`` (significant at ``alpha`` after
    correction and a is better). Pairs whose differences are all zero get p = 1.
    """
    check_long_frame(frame)
    rows = frame[(frame["region"] == region) & (frame["metric"] == metric)]
    values = rows.pivot_table(index="case", columns="team", values="value", aggfunc="first")
    results = []
    for team_a, team_b in combinations(sorted(values.columns), 2):
        pair = values[[team_a, team_b]].dropna()
        differences = (pair[team_a] - pair[team_b]).to_numpy()
        p = float(wilcoxon(differences).pvalue) if np.any(differences != 0) else 1.0
        median = float(np.median(differences)) if differences.size else np.nan
        results.append({"team_a": team_a, "team_b": team_b, "n_cases": len(pair), "median_difference": median,
                        "p": p})
    table = pd.DataFrame(results, columns=["team_a", "team_b", "n_cases", "median_difference", "p"])
    table["p_holm"] = holm(table["p"].to_numpy()) if len(table) else []
    table["a_better"] = (table["p_holm"] < alpha) & (table["median_difference"] * metric_sign(metric) > 0)
    return table


def paired_permutation_test(a: np.ndarray, b: np.ndarray, n_permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value that the mean paired difference ``a − b`` is 0, by random sign flips.

    p = (1 + #{|mean of flipped differences| ≥ |observed mean|}) / (1 + n_permutations).
    """
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    observed = abs(differences.mean())
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_permutations, differences.size))
    permuted = np.abs((signs * differences).mean(axis=1))
    return float((1 + np.count_nonzero(permuted >= observed - 1e-12)) / (1 + n_permutations))


def adjacent_permutation_tests(case_scores: pd.DataFrame, ranking: pd.DataFrame, n_permutations: int = 10_000,
                               seed: int = 0) -> pd.DataFrame:
    """Permutation test between each team and the next one in ``ranking`` (BraTS, challenges.md §2.7).

    ``case_scores`` is cases × teams of per-case scores, e.g. the mean per-case rank from
    :func:`brainbench.evaluation.ranking.per_case_ranks` averaged over regions and metrics.
    """
    teams = list(ranking["team"])
    rows = []
    for position, (upper, lower) in enumerate(zip(teams, teams[1:])):
        p = paired_permutation_test(case_scores[upper].to_numpy(), case_scores[lower].to_numpy(), n_permutations,
                                    seed + position)
        rows.append({"team": upper, "next_team": lower, "p": p})
    return pd.DataFrame(rows, columns=["team", "next_team", "p"])


@dataclass
class BootstrapRanks:
    """Ranks of every team in every bootstrap sample.

    Attributes:
        ranks: long frame ``sample, team, rank``.
        original: the ranking of the full data (columns ``team``, ``rank``, …).
        kendall_tau: Kendall's τ between the original and each bootstrap ranking (one per sample).
    """

    ranks: pd.DataFrame
    original: pd.DataFrame
    kendall_tau: np.ndarray

    def frequencies(self) -> pd.DataFrame:
        """Teams (in original order) × rank: fraction of samples in which the team got that rank."""
        counts = pd.crosstab(self.ranks["team"], self.ranks["rank"], normalize="index")
        return counts.reindex(index=list(self.original["team"])).fillna(0.0)

    def summary(self) -> pd.DataFrame:
        """Per team: original rank, median bootstrap rank and its 2.5–97.5 % interval."""
        grouped = self.ranks.groupby("team")["rank"]
        table = self.original[["team", "rank"]].set_index("team")
        table["median"] = grouped.median()
        table["q2.5"] = grouped.quantile(0.025)
        table["q97.5"] = grouped.quantile(0.975)
        return table.reset_index()


def bootstrap_ranks(frame: pd.DataFrame, rank: Callable[[pd.DataFrame], pd.DataFrame], n_samples: int = 1000,
                    seed: int = 0, unit: str = "case") -> BootstrapRanks:
    """Resample ``unit`` s with replacement ``n_samples`` times and rank each sample with ``rank``.

    ``unit="case"`` draws whole cases (challengeR); ``"case-region"`` draws (case, region) pairs, the
    only resampling with any spread when a test set has a single case — a stand-in, not a BraTS rule.
    A case drawn twice enters the sample twice, under two new ids.
    """
    check_long_frame(frame)
    if unit not in BOOTSTRAP_UNITS:
        raise BrainbenchConfigError(f"bootstrap unit {unit!r}; expected one of {BOOTSTRAP_UNITS}")
    key = frame["case"].astype(str) if unit == "case" else frame["case"].astype(str) + "|" + frame["region"].astype(str)
    codes, uniques = pd.factorize(key)
    frame = frame.astype({"team": "category", "region": "category", "metric": "category"})
    rows_of = [np.flatnonzero(codes == u) for u in range(len(uniques))]
    original = rank(frame)
    rng = np.random.default_rng(seed)
    samples, taus = [], []
    for sample in range(n_samples):
        drawn = rng.integers(0, len(uniques), size=len(uniques))
        index = np.concatenate([rows_of[u] for u in drawn])
        new_case = np.repeat(np.arange(len(drawn)), [len(rows_of[u]) for u in drawn])
        resampled = frame.iloc[index].assign(case=new_case)
        ranking = rank(resampled)
        aligned = ranking.set_index("team")["rank"].reindex(original["team"])
        taus.append(kendalltau(original["rank"], aligned).statistic)
        samples.append(pd.DataFrame({"sample": sample, "team": aligned.index, "rank": aligned.to_numpy()}))
    ranks = pd.concat(samples, ignore_index=True)
    return BootstrapRanks(ranks=ranks, original=original, kendall_tau=np.asarray(taus, dtype=float))
