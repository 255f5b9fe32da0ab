"""BraTS-style summaries of per-case metrics and leaderboards across runs or submission folders.

Per run (or team) and region: mean, standard deviation, median and the 25th/75th percentiles over
cases — the statistics the BraTS organisers publish — next to the rank under the edition's ranking
rule (:mod:`brainbench.evaluation.ranking`) and its bootstrap stability. Every table states its data
source, so synthetic numbers are never mistaken for a challenge's. Tables are written as Markdown,
CSV, HTML and LaTeX; figures as PNG.
"""

from __future__ import annotations

import html
from importlib.resources import files
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brainbench.challenges.base import Edition, Unranked
from brainbench.io import write_atomic
from brainbench.errors import BrainbenchDataError
from brainbench.evaluation.plots import case_metric_png, rank_stability_png
from brainbench.evaluation.protocols import METRIC_UNITS, protocol_for
from brainbench.evaluation.ranking import RankingRule, per_case_ranks, rule_for
from brainbench.evaluation.stats import adjacent_permutation_tests, bootstrap_ranks

PUBLISHED_DIR = Path(str(files("brainbench.leaderboards").joinpath("published")))
"""Published numbers (the repository's ``leaderboards/published``, shipped as package data) (CSV, one value per row) with citation, split and the spec's evidence tag."""
PUBLISHED_COLUMNS = ("split", "region", "metric", "value", "verified", "citation", "spec")
SPLITS = ("training CV", "leaderboard set", "challenge test set", "unknown")
EVIDENCE_TAGS = {
    "V": "verified in an official or organiser source",
    "P": "partly verified (third-party code or a truncated official page)",
    "R": "recollection of the literature or the review summary, unverified",
    "M": "from memory of the paper, unverified",
    "I": "inferred",
    "B": "quoted from the Akkus et al. 2017 review's tables, not re-verified",
}
"""The ``verified`` column's tags, as defined in specs/challenges.md §0 and specs/architectures.md §0.1."""

STATISTICS = {
    "mean": np.mean,
    "std": np.std,
    "median": np.median,
    "q25": lambda v: np.percentile(v, 25),
    "q75": lambda v: np.percentile(v, 75),
}


def metric_key(metric: str, region: str) -> str:
    """A run's headline metric name: the mean over test cases of ``metric`` in ``region``, e.g. ``dice_WT``
    (no slash, so MLflow's filters and column headers take it as is)."""
    return f"{metric}_{region}"


def _units(metrics: Sequence[str]) -> str:
    """``dice [1], hd95 [mm] (1 = unitless)``: the legends' unit list."""
    return ", ".join(f"{metric} [{METRIC_UNITS[metric]}]" for metric in metrics) + " (1 = unitless)"


def cell_legend(metrics: Sequence[str]) -> str:
    """How to read a ``mean±std (median; q25–q75)`` cell, with the unit of each metric shown."""
    return f"Cells: mean±std (median; 25th–75th percentile) over test cases; units: {_units(metrics)}."


def mean_legend(metrics: Sequence[str]) -> str:
    """How to read a :func:`leaderboard_table` cell."""
    return f"Cells: each run's mean over its test cases; units: {_units(metrics)}."


def case_statistics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long per-case frame (case, region, metric, value) → one row per (region, metric) in the frame's
    order: ``n`` and the :data:`STATISTICS` over cases. NaN values (undefined under a protocol) are left out."""
    rows = []
    for (region, metric), group in metrics.groupby(["region", "metric"], sort=False):
        values = group["value"].dropna().to_numpy(dtype=float)
        if values.size:
            rows.append({"region": region, "metric": metric, "n": int(values.size),
                         **{stat: float(function(values)) for stat, function in STATISTICS.items()}})
    return pd.DataFrame(rows, columns=["region", "metric", "n", *STATISTICS])


def headline_values(statistics: pd.DataFrame) -> dict[str, float]:
    """:func:`case_statistics` → the run metrics ``{metric_region: mean}`` (:func:`metric_key`), region by region."""
    return {metric_key(row.metric, row.region): row.mean for row in statistics.itertuples()}


def statistics_table(statistics: pd.DataFrame, regions: Sequence[str], metrics: Sequence[str],
                     data_source: str) -> pd.DataFrame:
    """One row per region, a ``mean±std (median; q25–q75)`` cell per metric: a run's own results."""
    indexed = statistics.set_index(["region", "metric"])
    rows = []
    for region in regions:
        row = {"region": region, "data": data_source}
        for metric in metrics:
            row[metric] = _cell(indexed.loc[(region, metric)], metric) if (region, metric) in indexed.index else ""
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard_table(runs: pd.DataFrame, regions: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per run: for each region × metric, the run's mean over its test cases (``metrics.dice_WT``, …).

    ``metrics`` are the edition's headline metrics (:func:`headline_metrics`), so a protocol without
    HD95 gets no HD95 column.

    ``runs`` is :func:`brainbench.tracking.mlflow.runs_frame` output; runs lacking the headline
    metrics (e.g. interrupted before evaluation) are left out.
    """
    rows = []
    for _, run in runs.iterrows():
        if pd.isna(run.get(f"metrics.{metric_key(metrics[0], regions[0])}")):
            continue
        row = {
            "run": run.get("run_name") or run["run_id"][:8],
            "model": run.get("tags.model", ""),
            "seed": run.get("tags.seed", ""),
            "data": run.get("tags.data_source", "unknown"),
        }
        for region in regions:
            for metric in metrics:
                row[f"{region} {metric}"] = _number(run.get(f"metrics.{metric_key(metric, region)}", np.nan), metric)
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate_runs(runs: pd.DataFrame, configurations: pd.Series, regions: Sequence[str],
                   metrics: Sequence[str]) -> pd.DataFrame:
    """One row per configuration (``configurations``: a label per run, e.g. a sweep job's overrides without
    seed and fold): for each region × metric, ``mean±SD (n)`` over its runs of each run's mean over test
    cases — the spread over folds and seeds, the number cross-validated papers report.

    ``runs`` is :func:`brainbench.tracking.mlflow.runs_frame`-shaped; runs without the summary metric
    are left out.
    """
    key = f"metrics.{metric_key(metrics[0], regions[0])}"
    if key not in runs:
        return pd.DataFrame(columns=["configuration", "runs", "folds", "seeds", "data"])
    kept = runs[key].notna()
    runs, labels = runs[kept], configurations[kept].fillna("default")
    rows = []
    for label, group in runs.groupby(labels, sort=False):
        row = {"configuration": label, "runs": len(group),
               "folds": _listed(group.get("tags.fold")), "seeds": _listed(group.get("tags.seed")),
               "data": ", ".join(sorted(set(group.get("tags.data_source", pd.Series("unknown")).fillna("unknown"))))}
        for region in regions:
            for metric in metrics:
                values = group.get(f"metrics.{metric_key(metric, region)}", pd.Series(dtype=float)).dropna()
                row[f"{region} {metric}"] = _spread_cell(values.to_numpy(dtype=float), metric)
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate_legend(metrics: Sequence[str]) -> str:
    """How to read an :func:`aggregate_runs` cell."""
    return ("Cells: mean±SD (n) over runs (folds × seeds) of each run's mean over its test cases; SD with "
            f"n − 1 degrees of freedom, '±–' for a single run; units: {_units(metrics)}.")


def _listed(values: pd.Series | None) -> str:
    """Distinct tag values, sorted naturally: ``0,1,2``."""
    if values is None:
        return ""
    distinct = sorted(set(values.dropna().astype(str)), key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else v))
    return ",".join(distinct)


def _spread_cell(values: np.ndarray, metric: str) -> str:
    if not values.size:
        return ""
    digits = _digits(metric)
    spread = f"{np.std(values, ddof=1):.{digits}f}" if values.size > 1 else "–"
    return f"{np.mean(values):.{digits}f}±{spread} ({values.size})"


def _digits(metric: str) -> int:
    """3 decimals for fractions, 1 for mm, mm³, ml and counts."""
    return 3 if METRIC_UNITS.get(metric, "1") == "1" else 1


def _number(value: float, metric: str) -> str:
    return "" if pd.isna(value) else f"{value:.{_digits(metric)}f}"


def _cell(stats: Mapping[str, float], metric: str) -> str:
    """``mean±std (median; q25–q75)``."""
    digits = _digits(metric)
    return (f"{stats['mean']:.{digits}f}±{stats['std']:.{digits}f} "
            f"({stats['median']:.{digits}f}; {stats['q25']:.{digits}f}–{stats['q75']:.{digits}f})")


def data_source_note(table: pd.DataFrame) -> str:
    """The sentence every leaderboard carries about where its numbers come from."""
    sources = sorted(set(table["data"])) if "data" in table and len(table) else ["unknown"]
    if sources == ["synthetic"]:
        return ("Data source: SYNTHETIC phantoms generated by brainbench — not comparable with any "
                "published challenge result.")
    return f"Data source: {', '.join(sources)}."


def headline_metrics(edition: Edition) -> tuple[str, ...]:
    """The metrics a leaderboard shows for ``edition``: its ranking rule's, or its protocol's when unranked."""
    if isinstance(edition.ranking, Unranked):
        return protocol_for(edition).metrics
    return rule_for(edition).metrics


def to_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = (), source_note: bool = True) -> str:
    """GitHub Markdown with a title, the data-source note (unless ``source_note`` is false: a table that says
    it per row) and ``notes`` (default: the cell legend); ``|`` in cells escaped."""
    lines = [f"# {title}", ""]
    for note in ([data_source_note(table)] if source_note else []) + list(notes):
        lines.extend([note, ""])
    if table.empty:
        return "\n".join([*lines, "(no finished runs with test metrics)", ""])
    shown = _display(table)
    header = list(shown.columns)

    def cell(value: object) -> str:
        return str(value).replace("|", r"\|")

    lines.append("| " + " | ".join(map(cell, header)) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines.extend("| " + " | ".join(cell(row[c]) for c in header) + " |" for _, row in shown.iterrows())
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame, title: str, notes: Sequence[str] = (), source_note: bool = True) -> str:
    """A standalone HTML page: title, notes as paragraphs, the table (all text escaped)."""
    notes = ([data_source_note(table)] if source_note else []) + list(notes)
    paragraphs = "".join(f"<p>{html.escape(note)}</p>\n" for note in notes)
    body = _display(table).to_html(index=False, escape=True, border=0)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body>\n<h1>{html.escape(title)}</h1>\n{paragraphs}{body}\n</body></html>\n")


def to_latex(table: pd.DataFrame, title: str, notes: Sequence[str] = (), source_note: bool = True,
             label: str = "leaderboard", longtable: bool = False) -> str:
    """A LaTeX table (booktabs; ``longtable`` for tables that run over a page) whose caption holds the
    title and the notes."""
    caption = " ".join([title + ".", *([data_source_note(table)] if source_note else []), *notes])
    return _display(table).to_latex(index=False, escape=True, caption=caption.replace("%", r"\%"),
                                    label=f"tab:{label}", longtable=longtable)


def write_tables(table: pd.DataFrame, out_dir: str | Path, title: str,
                 notes: Sequence[str] = ()) -> list[Path]:
    """``leaderboard.{md,csv,html,tex}`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    texts = {"md": to_markdown(table, title, notes), "html": to_html(table, title, notes),
             "tex": to_latex(table, title, notes)}
    paths = [write_atomic(out_dir / f"leaderboard.{suffix}", lambda tmp, text=text: tmp.write_text(text))
             for suffix, text in texts.items()]
    paths.append(write_atomic(out_dir / "leaderboard.csv", lambda tmp: table.to_csv(tmp, index=False)))
    return paths


def _values_cell(values: pd.Series, metric: str) -> str:
    """The ``mean±std (median; q25–q75)`` cell of per-case values; NaNs left out, "—" when none remain."""
    finite = values.dropna().to_numpy(dtype=float)
    return _cell({s: f(finite) for s, f in STATISTICS.items()}, metric) if finite.size else "—"


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Floats shown with 3 decimals (NaN as "—"); everything else as is."""
    def show(value: float) -> str:
        return "—" if np.isnan(value) else f"{value:.3f}"

    return table.apply(lambda column: column.map(show) if column.dtype.kind == "f" else column)


@dataclass
class Leaderboard:
    """A ranked table of teams with the notes it must be shown with, and the files written for it."""

    table: pd.DataFrame
    title: str
    notes: list[str]
    files: list[Path]


def rank_teams(frame: pd.DataFrame, rule: RankingRule, title: str, data_source: str,
               out_dir: str | Path | None = None, ties: str = "min", n_bootstrap: int = 1000, seed: int = 0,
               bootstrap_unit: str = "case", notes: Sequence[str] = ()) -> Leaderboard:
    """Rank the teams of a long ``team, case, region, metric, value`` frame with ``rule``.

    The table holds rank, team, the rule's score and detail columns, the bootstrap rank interval
    (median [2.5–97.5 %] over ``n_bootstrap`` samples of ``bootstrap_unit`` s; challengeR), for the
    BraTS rule the permutation-test p-value against the next team, and a ``mean±std (median;
    q25–q75)`` cell per region × ranked metric. With ``out_dir`` it writes ``leaderboard.{md,csv,html,tex}``,
    ``metrics.csv`` (the input), ``cases_<metric>.png`` per ranked metric and ``rank_stability.png``.
    ``notes`` (e.g. how the predictions were read) follow the ranking rule's note in every table.
    """
    ranking = rule.rank(frame, ties)
    teams = list(ranking["team"])
    metrics = rule.metrics
    table = ranking.copy()
    notes = [f"Ranking: {rule.name} ({rule.source}); score = {rule.score_meaning}; ties '{ties}'.", *notes]
    if rule.name == "brats-rank-then-aggregate":
        case_scores = per_case_ranks(frame, rule.metrics, ties).groupby(level="case").mean()
        tests = adjacent_permutation_tests(case_scores, ranking, seed=seed)
        table["p vs next"] = table["team"].map(tests.set_index("team")["p"])
        notes.append("p vs next: paired permutation test of the per-case mean ranks against the next team "
                     "(10,000 sign flips).")
    boot = None
    if n_bootstrap > 0:
        boot = bootstrap_ranks(frame, lambda f: rule.rank(f, ties), n_samples=n_bootstrap, seed=seed,
                               unit=bootstrap_unit)
        summary = boot.summary().set_index("team")
        table["bootstrap rank"] = [
            f"{summary.at[t, 'median']:g} [{summary.at[t, 'q2.5']:g}–{summary.at[t, 'q97.5']:g}]" for t in teams]
        notes.append(f"Bootstrap rank: median [2.5–97.5 %] over {n_bootstrap} resamplings of {bootstrap_unit}s "
                     f"(seed {seed}); mean Kendall τ to the full ranking {np.nanmean(boot.kendall_tau):.3f}.")
    for region in dict.fromkeys(frame["region"]):
        for metric in metrics:
            values = frame[(frame["region"] == region) & (frame["metric"] == metric)]
            table[f"{region} {metric}"] = [_values_cell(values[values["team"] == t]["value"], metric) for t in teams]
    table["data"] = data_source
    notes.append(cell_legend(metrics))
    files: list[Path] = []
    if out_dir is not None:
        out_dir = Path(out_dir)
        files = write_tables(table, out_dir, title, notes)
        files.append(write_atomic(out_dir / "metrics.csv", lambda tmp: frame.to_csv(tmp, index=False)))
        for metric in metrics:
            files.append(case_metric_png(frame, metric, teams, out_dir / f"cases_{metric}.png",
                                         title=f"{title}: per-case {metric}"))
        if boot is not None:
            stability = f"rank stability: {n_bootstrap} bootstrap samples of {bootstrap_unit}s"
            files.append(rank_stability_png(boot.frequencies(), list(ranking["rank"]),
                                            out_dir / "rank_stability.png", title=stability))
    return Leaderboard(table=table, title=title, notes=notes, files=files)


def load_published(name: str | None = None, folder: str | Path = PUBLISHED_DIR) -> pd.DataFrame:
    """One published table (``name`` = file stem, e.g. ``akkus2017_table4``) or all of them, checked.

    Adds a ``table`` column (the file stem). Raises :class:`BrainbenchDataError` naming the file when
    a required column is missing, a value is not a number, or a split or evidence tag is unknown.
    """
    folder = Path(folder)
    paths = [folder / f"{name}.csv"] if name else sorted(folder.glob("*.csv"))
    if not paths:
        raise BrainbenchDataError(folder, "no published tables (*.csv)")
    frames = []
    for path in paths:
        if not path.is_file():
            raise BrainbenchDataError(path, f"no such published table; known: {[p.stem for p in folder.glob('*.csv')]}")
        frame = pd.read_csv(path, dtype={"verified": str, "split": str})
        missing = [c for c in PUBLISHED_COLUMNS if c not in frame.columns]
        bad_split = sorted(set(frame.get("split", [])) - set(SPLITS))
        bad_tag = sorted(set(frame.get("verified", [])) - set(EVIDENCE_TAGS))
        if missing or bad_split or bad_tag:
            raise BrainbenchDataError(path, f"expected columns {list(PUBLISHED_COLUMNS)}, splits {list(SPLITS)} and "
                                            f"tags {list(EVIDENCE_TAGS)}; missing {missing}, splits {bad_split}, "
                                            f"tags {bad_tag}")
        values = pd.to_numeric(frame["value"], errors="coerce")
        if values.isna().any() or frame["citation"].isna().any():
            raise BrainbenchDataError(path, f"rows {list(frame.index[values.isna() | frame['citation'].isna()] + 2)}: "
                                            "value must be a number and citation non-empty")
        frames.append(frame.assign(value=values, table=path.stem))
    return pd.concat(frames, ignore_index=True)


def print_leaderboard(table: pd.DataFrame, title: str, legend: str) -> None:
    """Render the table on the terminal with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, Console().width))
    rich_table = Table(title=title, caption=data_source_note(table), show_lines=False)
    for column in table.columns:
        rich_table.add_column(column, overflow="fold", no_wrap=column == "run")
    for _, row in table.iterrows():
        rich_table.add_row(*(str(row[c]) for c in table.columns))
    console.print(rich_table)
    console.print(legend, markup=False)  # "[mm]", "[lesions]" are units, not rich style tags
