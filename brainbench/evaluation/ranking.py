"""Challenge ranking rules: from per-case metric values of several teams to a final rank per team.

Every rule takes the long frame ``team, case, region, metric, value`` (the output of
:func:`brainbench.evaluation.evaluate.evaluate_folders` with a ``team`` column) and returns one row per
team with at least ``team``, ``score`` and ``rank`` (1 = best), sorted by rank. The rules differ in
*when* they rank (per case, then average; or average, then rank), how ties and missing cases count,
and how several rankings are combined (challenges.md §2.7, §3.3, §4.3, §5).

A value that is missing or NaN always counts as the worst possible value for its metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from brainbench.challenges.base import Edition, Unranked
from brainbench.errors import BrainbenchConfigError

LONG_COLUMNS = ("team", "case", "region", "metric", "value")
"""Columns every ranking rule reads."""

HIGHER_IS_BETTER = frozenset({
    "dice", "sensitivity", "specificity", "ppv", "volumetric_similarity", "lesion_tpr", "lesion_ppv", "lesion_f1",
    "lesion_dice",
})
LOWER_IS_BETTER = frozenset({
    "hd", "hd95", "assd", "avd", "volume_difference_ml", "volume_difference_mm3", "lesion_count_difference",
    "lesion_hd95", "lesion_false_positives",
})
"""Direction of each metric of :data:`brainbench.evaluation.protocols.METRIC_UNITS` that a rule may rank
(VDR is signed and ranked by no challenge)."""
TIES = ("min", "average", "max", "dense", "ordinal")
"""``scipy.stats.rankdata`` tie methods; 'min' (ties share the best rank) is nnU-Net's BraTS choice."""


def metric_sign(metric: str) -> float:
    """+1 when a larger value is better (Dice), −1 when a smaller one is (HD95 in mm)."""
    if metric in HIGHER_IS_BETTER:
        return 1.0
    if metric in LOWER_IS_BETTER:
        return -1.0
    raise BrainbenchConfigError(
        f"metric {metric!r}: ranking needs its direction; known: {sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER)}"
    )


def check_long_frame(frame: pd.DataFrame) -> None:
    """Raise when the frame lacks a ranking column or holds fewer than one team."""
    missing = [c for c in LONG_COLUMNS if c not in frame.columns]
    if missing:
        raise BrainbenchConfigError(f"metrics table: expected columns {list(LONG_COLUMNS)}, missing {missing}")
    if frame.empty:
        raise BrainbenchConfigError("metrics table: no rows to rank")


def _ranks(scores: np.ndarray, ties: str) -> np.ndarray:
    """Rank along the last axis, 1 = highest score; NaN scores share the worst rank."""
    if ties not in TIES:
        raise BrainbenchConfigError(f"ranking ties={ties!r}; expected one of {TIES}")
    return rankdata(-np.nan_to_num(scores, nan=-np.inf), method=ties, axis=-1)


def _signed_scores(frame: pd.DataFrame, metrics: Sequence[str], index: Sequence[str]) -> pd.DataFrame:
    """Rows ``index`` (in order of appearance) × columns team (sorted) of sign-adjusted values.

    Higher is better after the sign; NaN where a team has no value. Built with integer codes rather
    than ``pivot_table``: the bootstrap calls this hundreds of times.
    """
    check_long_frame(frame)
    absent = [metric for metric in metrics if metric not in set(frame["metric"])]
    if absent:
        raise BrainbenchConfigError(f"metrics table: ranked metrics {absent} are missing (it holds "
                                    f"{sorted(set(frame['metric']))}); a ranked metric is never dropped")
    selected = frame[frame["metric"].isin(metrics)]
    codes, levels = zip(*(pd.factorize(selected[column]) for column in index))
    shape = tuple(len(level) for level in levels)
    row_codes, rows = pd.factorize(np.ravel_multi_index(codes, shape))
    teams = pd.Index(sorted(frame["team"].unique()), name="team")
    values = np.full((len(rows), len(teams)), np.nan)
    values[row_codes, teams.get_indexer(selected["team"])] = selected["value"].to_numpy(dtype=float)
    row_index = pd.MultiIndex(levels=levels, codes=np.unravel_index(rows, shape), names=list(index))
    signs = np.array([metric_sign(m) for m in row_index.get_level_values("metric")])
    return pd.DataFrame(values * signs[:, None], index=row_index, columns=teams)


def _final(table: pd.DataFrame, score: pd.Series | np.ndarray, ties: str, ascending: bool = True) -> pd.DataFrame:
    """Add ``score`` and its ``rank`` (lowest score best when ``ascending``); sort by rank then team."""
    score = np.asarray(score, dtype=float)
    table = table.assign(score=score, rank=_ranks(-score if ascending else score, ties).astype(int))
    return table[["team", "score", "rank", *table.columns.drop(["team", "score", "rank"])]].sort_values(
        ["rank", "team"]).reset_index(drop=True)


def per_case_ranks(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "hd95"), ties: str = "min") -> pd.DataFrame:
    """Rank of every team in every case × region × metric (challenges.md §2.7, BraTS 2017–2020).

    Returns the rows ``(case, region, metric)`` × columns team of ranks (1 = best); a missing or NaN
    value takes the worst rank.
    """
    scores = _signed_scores(frame, metrics, ("case", "region", "metric"))
    return pd.DataFrame(_ranks(scores.to_numpy(), ties), index=scores.index, columns=scores.columns)


def rank_then_aggregate(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "hd95"),
                        ties: str = "min") -> pd.DataFrame:
    """BraTS 2017–2020 rank-then-aggregate (challenges.md §2.7, zenodo 3718904 via nnU-Net).

    Each team is ranked in each case for each region and metric (HD95 lower is better, ties by
    ``ties``); the ranks are averaged (``score`` = mean rank; ``normalised`` = score / number of teams,
    as the design document states); the final ``rank`` ranks the mean ranks with the same tie rule.
    Also returns one ``rank <region> <metric>`` column per combination (mean over cases).
    """
    ranks = per_case_ranks(frame, metrics, ties)
    detail = ranks.groupby(level=["region", "metric"], sort=False).mean().T
    detail.columns = [f"rank {region} {metric}" for region, metric in detail.columns]
    regions = frame["region"].unique()
    detail = detail[[f"rank {r} {m}" for r in regions for m in metrics if f"rank {r} {m}" in detail.columns]]
    score = ranks.mean(axis=0)
    table = detail.assign(normalised=score / ranks.shape[1]).rename_axis("team").reset_index()
    return _final(table, score.to_numpy(), ties)


def mean_of_metric_ranks(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "ppv", "sensitivity"),
                         ties: str = "min") -> pd.DataFrame:
    """BRATS 2012–2015 VSD online table (challenges.md §2.7).

    Per region and metric, the metric is averaged over *all* cases of the table, a case a team did not
    submit counting 0 ("divide by the number of cases"); teams are ranked on each average; a region's
    ``label rank`` is the mean of its metric ranks; ``score`` = mean of the label ranks; ``rank`` ranks it.
    """
    values = _signed_scores(frame, metrics, ("region", "metric", "case")).fillna(0.0)
    means = values.groupby(level=["region", "metric"], sort=False).mean()
    ranks = pd.DataFrame(_ranks(means.to_numpy(), ties), index=means.index, columns=means.columns)
    label_ranks = ranks.groupby(level="region", sort=False).mean().T
    label_ranks.columns = [f"label rank {region}" for region in label_ranks.columns]
    return _final(label_ranks.rename_axis("team").reset_index(), label_ranks.mean(axis=1).to_numpy(), ties)


def mrbrains13_rank_sum(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "hd95", "avd"),
                        ties: str = "min") -> pd.DataFrame:
    """MRBrainS13 (challenges.md §5, S-31): sum of the ranks of the 9 tissue × metric means.

    Each metric is averaged over the test cases per tissue; teams are ranked on each of the
    (tissues × metrics) means; ``score`` = sum of those ranks, lowest wins. Ties on the sum go to the
    team with the lowest standard deviation "over the tissue types"; the spec does not say of what,
    so ``tissue_sd`` is the standard deviation over tissues of the team's per-tissue rank sums
    (a team ranked evenly across GM, WM and CSF wins) [I].
    """
    values = _signed_scores(frame, metrics, ("region", "metric", "case"))
    means = values.groupby(level=["region", "metric"], sort=False).mean()
    ranks = pd.DataFrame(_ranks(means.to_numpy(), ties), index=means.index, columns=means.columns)
    per_tissue = ranks.groupby(level="region", sort=False).sum()
    table = pd.DataFrame({"score": ranks.sum(axis=0).astype(float), "tissue_sd": per_tissue.std(axis=0, ddof=0)})
    table = table.rename_axis("team").reset_index()
    order = np.lexsort((table["team"].to_numpy(), table["tissue_sd"].to_numpy(), table["score"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    keys = list(zip(table["score"], table["tissue_sd"].round(12)))
    table.insert(2, "rank", [keys.index(key) + 1 for key in keys])
    return table


def isles_mean_rank(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "assd", "hd"),
                    ties: str = "min") -> pd.DataFrame:
    """ISLES 2015–2017 VSD table (challenges.md §3.3, S-53).

    A case is *failed* for a team when its Dice is 0 (or missing). Per case and metric the successful
    teams are ranked; every failed team takes the lowest vacant rank (number of successful teams + 1).
    ``score`` = mean of these ranks over cases and metrics [R]. ``cases`` counts successful cases;
    ``<metric> mean``/``sd`` are over all cases for Dice and over successful cases for ASSD/HD, as
    the published table.
    """
    values = _signed_scores(frame, metrics, ("case", "metric"))
    dice = values.xs("dice", level="metric")
    failed = ~(dice.fillna(0.0) > 0.0)
    ranks = []
    for (case, metric), row in values.iterrows():
        bad = failed.loc[case].to_numpy()
        scores = np.where(bad, np.nan, row.to_numpy(dtype=float))
        case_ranks = np.full(scores.shape, float((~bad).sum() + 1))
        if (~bad).any():
            case_ranks[~bad] = _ranks(scores[~bad], ties)
        ranks.append(case_ranks)
    table = pd.DataFrame({"team": values.columns, "cases": (~failed).sum(axis=0).to_numpy()})
    for metric in metrics:
        per_case = values.xs(metric, level="metric") * metric_sign(metric)
        kept = per_case.fillna(0.0) if metric == "dice" else per_case.where(~failed)
        table[f"{metric} mean"] = kept.mean(axis=0).to_numpy()
        table[f"{metric} sd"] = kept.std(axis=0, ddof=0).to_numpy()
    return _final(table, np.mean(ranks, axis=0), ties)


def msseg_separate(frame: pd.DataFrame, metrics: Sequence[str] = ("dice", "lesion_f1"),
                   ties: str = "min") -> pd.DataFrame:
    """MSSEG 2016 (challenges.md §4.3): separate segmentation (mean Dice) and detection (mean F1) scores.

    No official composite exists [R], so the table carries both ranks; ``score``/``rank`` follow the
    segmentation score and ``detection rank`` the detection one. NaN values (no lesion on one side,
    anima's 0/0) are left out of the means.
    """
    segmentation, detection = metrics
    values = _signed_scores(frame, metrics, ("metric", "case"))
    means = values.groupby(level="metric").mean()
    table = pd.DataFrame({"team": means.columns, "detection score": means.loc[detection].to_numpy()})
    table["detection rank"] = _ranks(table["detection score"].to_numpy(), ties).astype(int)
    return _final(table, means.loc[segmentation].to_numpy(), ties, ascending=False)


@dataclass(frozen=True)
class RankingRule:
    """A named ranking rule, the metrics it ranks and where it is documented."""

    name: str
    function: Callable[..., pd.DataFrame]
    metrics: tuple[str, ...]
    source: str
    score_meaning: str

    def rank(self, frame: pd.DataFrame, ties: str = "min") -> pd.DataFrame:
        return self.function(frame, metrics=self.metrics, ties=ties)


RULES: dict[str, RankingRule] = {rule.name: rule for rule in (
    RankingRule("brats-rank-then-aggregate", rank_then_aggregate, ("dice", "hd95"), "challenges.md §2.7",
                "mean of per-case ranks over regions × {Dice, HD95} (lower is better)"),
    RankingRule("brats2023-lesionwise-rank-then-aggregate", rank_then_aggregate, ("lesion_dice", "lesion_hd95"),
                "challenges.md §2.6 item 9 [V], aggregation as §2.7 [I]",
                "mean of per-case ranks over regions × {lesion-wise Dice, lesion-wise HD95} (lower is better)"),
    RankingRule("vsd-mean-of-metric-ranks", mean_of_metric_ranks, ("dice", "ppv", "sensitivity"),
                "challenges.md §2.7", "mean over regions of the mean metric rank (lower is better)"),
    RankingRule("mrbrains13-rank-sum", mrbrains13_rank_sum, ("dice", "hd95", "avd"), "challenges.md §5",
                "sum of the tissue × metric ranks (lower is better; ties: lowest SD over tissues)"),
    RankingRule("isles-mean-rank", isles_mean_rank, ("dice", "assd", "hd"), "challenges.md §3.3",
                "mean per-case rank, failed cases (Dice 0) at the lowest vacant rank (lower is better)"),
    RankingRule("isles2022-mean-rank", rank_then_aggregate,
                ("dice", "volume_difference_ml", "lesion_count_difference", "lesion_f1"), "challenges.md §3.3 [P]",
                "mean per-case rank across the metrics (lower is better)"),
    RankingRule("msseg-separate", msseg_separate, ("dice", "lesion_f1"), "challenges.md §4.3",
                "mean Dice (segmentation; higher is better); detection ranked separately on mean F1"),
)}


def rule_for(edition: Edition) -> RankingRule:
    """The ranking rule ``edition`` declares; an edition without one is a one-line error saying why."""
    if isinstance(edition.ranking, Unranked):
        raise BrainbenchConfigError(f"{edition.name} is not ranked: {edition.ranking.reason}")
    if edition.ranking not in RULES:
        raise BrainbenchConfigError(f"{edition.name}: unknown ranking rule {edition.ranking!r}; "
                                    f"known: {', '.join(RULES)}")
    return RULES[edition.ranking]
