"""``brainbench reproduce TABLE``: the review's tables and the papers' own, as printed, beside brainbench's numbers.

The review (Akkus et al., J Digit Imaging 30(4):449–459, 2017; transcribed in specs/review_tables.md)
prints three tables of results: Table 2 (brain structures), Table 3 (the MRBrainS13 top ten) and Table 4
(brain lesions). The papers' own result tables, as far as the specs give them, are here too: Havaei et
al.'s Table 2 (``havaei2017-table2``), Pereira et al.'s and Kamnitsas et al.'s BRATS results
(``pereira2016-brats2013``, ``kamnitsas2017-brats2015``) and Dou et al.'s detection sensitivity
(``dou2016-cmb``); Brosch et al.'s own figures are not in the specs beyond the review's. Every printed row
keeps its place here. A row brainbench can run names the paper
experiment(s) that reproduce it (``conf/experiment/<name>.yaml``); any other row says why it cannot
run (private data, a method outside the five implemented families, an edition brainbench does not host).

Run mode launches, for each runnable row, one Hydra multirun ``brainbench train -m experiment=<name>
fold=0,..,k-1 seed=<seeds>`` as a subprocess, every job a child of one MLflow run (tag
``kind=reproduce``) in the MLflow experiment named after the table; then it collects. ``--collect-only``
gathers the finished runs already in that experiment. The rendered table gives, per row, the published
values (``leaderboards/published/<table>.csv``), the reproduced mean ± SD over runs (folds ×
seeds) of each run's mean over its test cases, the number of runs, the data source (synthetic look-alike
or real release), the number of test cases and, for Table 3, the inference time per case beside the
printed Speed column. It is written as Markdown, HTML and LaTeX and logged to the reproduce run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from brainbench.errors import BrainbenchConfigError
from brainbench.evaluation.leaderboard import (EVIDENCE_TAGS, aggregate_legend, aggregate_runs, data_source_note,
                                               load_published,
                                               to_html, to_latex, to_markdown)
from brainbench.io import existing_dir, write_atomic
from brainbench.tracking.mlflow import (DEFAULT_TRACKING_URI, child_runs, ensure_experiment, runs_frame,
                                        runs_to_frame)

REVIEW = "Akkus et al., J Digit Imaging 30(4):449–459, 2017"
DATA_SOURCES = {"synthetic": "synthetic look-alike", "real": "real release"}
"""A run's ``data_source`` tag → how the table names it."""
OUTSIDE_FAMILIES = "a method outside brainbench's five implemented families"


@dataclass(frozen=True)
class Measure:
    """One reproduced number: the run metric ``<metric>_<region>`` (a mean over test cases) and its name in the row."""

    label: str
    region: str
    metric: str


@dataclass(frozen=True)
class Target:
    """A paper experiment (``conf/experiment/<experiment>.yaml``) on ``edition`` that reproduces a printed row.

    ``label`` names the target inside a row of several (Brosch: ISBI and MICCAI); ``caveat`` says where
    brainbench's number differs from the printed one (another metric, another data set).
    """

    experiment: str
    edition: str
    measures: tuple[Measure, ...]
    label: str = ""
    caveat: str = ""


@dataclass(frozen=True)
class PrintedRow:
    """A row as the review prints it (``cells``, verbatim), with its targets or the reason it cannot run."""

    cells: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class ReviewTable:
    """A printed table: its columns and rows in print order, and the published-values file (``row`` = 1-based
    position in print order). ``speed_column``: the printed column beside which the inference time goes."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[PrintedRow, ...]
    published: str
    speed_column: str | None = None
    notes: tuple[str, ...] = ()
    source: str = REVIEW
    printed_from: str = "specs/review_tables.md"

    @property
    def targets(self) -> list[Target]:
        return [target for row in self.rows for target in row.targets]


def _dice(*regions: str) -> tuple[Measure, ...]:
    """The Dice of each of ``regions``, named after the region."""
    return tuple(Measure(f"{region} Dice", region, "dice") for region in regions)


BRATS_VSD = _dice("complete", "core", "enhancing")
"""The review's complete/core/enhancing are the VSD-era BRATS regions, i.e. WT/TC/ET (challenges.md §2)."""

TABLE2 = ReviewTable(
    name="akkus2017-table2", title="Table 2 — deep learning for brain structure segmentation",
    columns=("Authors", "CNN style", "Dim", "Accuracy as printed", "Data"), published="akkus2017_table2",
    rows=(
        PrintedRow(("Zhang et al. 2015", "patch-wise", "2D", "DSC 83.5 % (CSF), 85.2 % (GM), 86.4 % (WM)",
                    "private (10 healthy infants; T1, T2, FA)"),
                   reason="private data (10 infants, not released)"),
        PrintedRow(("Nie et al. 2016", "semantic-wise", "2D", "DSC 85.5 % (CSF), 87.3 % (GM), 88.7 % (WM)",
                    "private (same 10 infants)"),
                   reason="private data (the same 10 infants)"),
        PrintedRow(("de Brebisson et al. 2015", "patch-wise", "2D/3D", "overall DSC 72.5 % ± 16.3 %",
                    "MICCAI 2012 multi-atlas labeling"),
                   reason="brainbench does not host MICCAI 2012 multi-atlas labeling (a sixth family it could host), "
                          f"and {OUTSIDE_FAMILIES}"),
        PrintedRow(("Moeskops et al. 2016", "patch-wise (multi-scale 25², 51², 75²)", "2D/3D", "overall DSC 73.53 %",
                    "MICCAI 2012 multi-atlas labeling"),
                   reason=f"brainbench does not host MICCAI 2012 multi-atlas labeling, and {OUTSIDE_FAMILIES}"),
        PrintedRow(("Bao et al. 2016", "patch-wise (multi-scale + dynamic random walker)", "2D", "DSC 82.2 % / 85 %",
                    "IBSR / LPBA40"),
                   reason=f"brainbench does not host IBSR or LPBA40, and {OUTSIDE_FAMILIES}"),
    ),
)

_MRBRAINS_TEAM = f"{OUTSIDE_FAMILIES}: the team's own"
TABLE3 = ReviewTable(
    name="akkus2017-table3", title="Table 3 — top ten of the MRBrainS13 challenge",
    columns=("Rank", "Team", "Submission", "Sequences", "Speed"), published="akkus2017_table3", speed_column="Speed",
    rows=(
        PrintedRow(("1", "CU_DL", "3D deep learning; voxnet1", "T1; T1_IR; FLAIR", "~2 min"),
                   reason=f"{_MRBRAINS_TEAM} 3D network (voxnet1)"),
        PrintedRow(("2", "CU_DL2", "3D deep learning; voxnet2", "T1; T1_IR; FLAIR", "~2 min"),
                   reason=f"{_MRBRAINS_TEAM} 3D network (voxnet2)"),
        PrintedRow(("3", "MDGRU", "multi-dimensional gated recurrent units", "T1; T1_IR; FLAIR", "~2 min"),
                   reason=f"{OUTSIDE_FAMILIES} (recurrent units)"),
        PrintedRow(("4", "PyraMiD-LSTM2", "NOCC with rounds", "T1; T1_IR; FLAIR", "~2 min"),
                   reason=f"{OUTSIDE_FAMILIES} (LSTM)"),
        PrintedRow(("5", "FBI/LMB Freiburg", "U-Net (3D)", "T1; T1_IR; FLAIR", "~2 min"),
                   targets=(Target("cicek2016_mrbrains13_unet3d", "mrbrains13", _dice("CSF", "GM", "WM"),
                                   caveat="the table prints a rank and a speed, no score: brainbench gives its Dice "
                                          "per tissue (the rank needs the other teams' per-case scores); the Freiburg "
                                          "submission's settings are unpublished (the 3D U-Net paper's instead)"),)),
        PrintedRow(("6", "IDSIA", "PyraMiD-LSTM", "T1; T1_IR; FLAIR", "~2 min"),
                   reason=f"{OUTSIDE_FAMILIES} (LSTM)"),
        PrintedRow(("7", "STH", "hybrid ANN-based auto-context method", "T1; T1_IR; FLAIR", "~5 min"),
                   reason=f"{OUTSIDE_FAMILIES} (auto-context ANN)"),
        PrintedRow(("8", "ISI-Neonatology", "multi-stage voxel classification", "T1", "~1.5 h"),
                   reason=f"{OUTSIDE_FAMILIES} (voxel classification)"),
        PrintedRow(("9", "UNC-IDEA", "LINKS: learning-based multi-source integration", "T1; T1_IR; FLAIR", "~3 min"),
                   reason=f"{OUTSIDE_FAMILIES} (random-forest auto-context)"),
        PrintedRow(("10", "MNAB2", "random forests", "T1; T1_IR; FLAIR", "~25 min"),
                   reason=f"{OUTSIDE_FAMILIES} (random forests)"),
    ),
)

TABLE4 = ReviewTable(
    name="akkus2017-table4", title="Table 4 — deep learning for brain lesions",
    columns=("Authors", "Aim", "CNN style", "Dim", "Accuracy as printed", "Dataset"), published="akkus2017_table4",
    notes=("The review's complete/core/enhancing are the published files' WT/TC/ET and the regions brainbench "
           "scores for the VSD-era BRATS editions (2013, 2015) under those same names.",),
    rows=(
        PrintedRow(("Havaei et al. 2016", "tumour segmentation", "patch-wise", "2D",
                    "DSC 0.88 (complete), 0.79 (core), 0.73 (enhancing)", "BRATS-2013"),
                   targets=(Target("havaei2017_brats2013_inputcascade", "brats2013", BRATS_VSD),)),
        PrintedRow(("Pereira et al. 2016", "tumour segmentation", "patch-wise", "2D",
                    "DSC 0.88 (complete), 0.83 (core), 0.77 (enhancing)", "BRATS-2013"),
                   targets=(Target("pereira2016_brats2013_hgg", "brats2013", BRATS_VSD,
                                   caveat="the HGG model: Pereira trains one model per grade (architectures.md §2.4) "
                                          "and the printed figures are the BRATS 2013 Challenge set's (§2.6), whose "
                                          "cases are all high-grade (Menze et al., IEEE TMI 2015; not in the spec); "
                                          "the LGG model is experiment=pereira2016_brats2013_lgg"),)),
        PrintedRow(("Zhao and Jia 2015", "tumour segmentation", "patch-wise (tri-planar)", "2D",
                    "overall accuracy 0.81", "BRATS-2013"),
                   reason=f"{OUTSIDE_FAMILIES} (tri-planar patches)"),
        PrintedRow(("Kamnitsas et al. 2016", "tumour segmentation", "patch-wise", "3D",
                    "DSC 0.9 (complete), 0.75 (core), 0.73 (enhancing)", "BRATS-2015"),
                   targets=(Target("kamnitsas2017_brats2015_crf", "brats2015", BRATS_VSD),)),
        PrintedRow(("Dvorak et al. 2015", "tumour segmentation", "patch-wise (structured local predictions)", "2D",
                    "DSC 0.83 (complete), 0.75 (core), 0.77 (enhancing)", "BRATS-2014"),
                   reason="brainbench does not host BRATS 2014 (challenges.md §2: not in scope), and "
                          f"{OUTSIDE_FAMILIES}"),
        PrintedRow(("Brosch et al. 2016", "MS segmentation", "semantic-wise", "3D",
                    "DSC 0.68 (ISBI); DSC 0.84 (MICCAI)", "MICCAI 2008 – ISBI 2015"),
                   targets=(Target("brosch2016_isbi2015", "isbi2015", (Measure("lesion Dice", "lesion", "dice"),),
                                   label="ISBI"),
                            Target("brosch2016_miccai2008", "miccai2008", (Measure("lesion Dice", "lesion", "dice"),),
                                   label="MICCAI",
                                   caveat="the printed MICCAI 0.84 may not be a Dice (MICCAI 2008 scores TPR/FPR/"
                                          "volume difference against 90 = inter-rater, architectures.md §4.4); "
                                          "brainbench gives the miccai-2008 protocol's Dice"))),
        PrintedRow(("Dou et al. 2016", "cerebral microbleed detection", "cascaded (semantic/patch-wise)", "3D",
                    "sensitivity 98.29 %", "private (320 subjects)"),
                   targets=(Target("dou2016_cmb", "dou2016",
                                   (Measure("sensitivity (lesion TPR)", "cmb", "lesion_tpr"),),
                                   caveat="the printed figure (98.29 % in the table, 93.2 % in the text) is on the 320 "
                                          "private subjects; brainbench runs the authors' 20-scan public release "
                                          "(edition dou2016), and its lesion TPR is a mean over test cases of detected/"
                                          "annotated CMBs, not the paper's pooled sensitivity (dou-2016 protocol)"),)),
        PrintedRow(("Maier et al. 2015", "ischemic stroke detection", "patch-wise", "2D",
                    "DSC 0.67 ± 0.18; HD 29.64 ± 24.6", "private (37 subjects)"),
                   reason="private data (37 subjects)"),
        PrintedRow(("Akkus et al. 2016", "tumour genomic prediction (1p/19q)", "patch-wise", "2D",
                    "0.93 sensitivity, 0.82 specificity, 0.88 accuracy", "private (159 subjects)"),
                   reason="private data (159 subjects), and a classification of the tumour, not a segmentation"),
    ),
)

DICE_COLUMNS = ("Dice complete", "Dice core", "Dice enhancing")
HAVAEI_TABLE2 = ReviewTable(
    name="havaei2017-table2", title="Table 2 — BRATS 2013 test set (the rows the spec covers)",
    columns=("Method", *DICE_COLUMNS), published="havaei2017_table2",
    source="Havaei et al., Medical Image Analysis 35:18–31, 2017", printed_from="specs/architectures.md §1.10",
    rows=tuple(PrintedRow((method, *dice), targets=(Target(f"havaei2017_brats2013_{name}", "brats2013", BRATS_VSD),))
               for method, name, dice in (("TwoPathCNN*", "twopath", ("0.85", "0.78", "0.73")),
                                          ("InputCascadeCNN*", "inputcascade", ("0.88", "0.79", "0.73")),
                                          ("MFCascadeCNN*", "mfcascade", ("0.86", "0.77", "0.73")),
                                          ("LocalCascadeCNN*", "localcascade", ("0.88", "0.76", "0.72")))),
)

PEREIRA_BRATS2013 = ReviewTable(
    name="pereira2016-brats2013", title="BRATS 2013 results — Challenge and Leaderboard sets",
    columns=("Set", *DICE_COLUMNS), published="pereira2016_brats2013",
    source="Pereira et al., IEEE TMI 35(5):1240–1251, 2016", printed_from="specs/architectures.md §2.6, from memory",
    rows=(
        PrintedRow(("Challenge", "0.88", "0.83", "0.77"),
                   targets=(Target("pereira2016_brats2013_hgg", "brats2013", BRATS_VSD,
                                   caveat="the HGG model (the Challenge set's cases are high-grade, Menze et al. 2015; "
                                          "not in the spec)"),)),
        PrintedRow(("Leaderboard", "0.84", "0.72", "0.62"),
                   targets=(Target("pereira2016_brats2013_hgg", "brats2013", BRATS_VSD, label="HGG"),
                            Target("pereira2016_brats2013_lgg", "brats2013", BRATS_VSD, label="LGG",
                                   caveat="the Leaderboard set mixes grades; Pereira ran one model per grade (§2.4)"))),
    ),
)

KAMNITSAS_BRATS2015 = ReviewTable(
    name="kamnitsas2017-brats2015", title="BRATS 2015 results — training-set cross-validation and test set",
    columns=("Evaluation", *DICE_COLUMNS), published="kamnitsas2017_brats2015",
    source="Kamnitsas et al., Medical Image Analysis 36:61–78, 2017",
    printed_from="specs/architectures.md §3.9 and challenges.md §2, partly from memory",
    rows=(
        PrintedRow(("training set, cross-validation", "0.898", "0.755", "0.729"),
                   targets=(Target("kamnitsas2017_brats2015_crf", "brats2015", BRATS_VSD,
                                   caveat="brainbench's folds rotate validation over the non-test cases and score a "
                                          "fixed held-out split, not each fold's validation cases"),)),
        PrintedRow(("test set (online)", "0.847", "0.670", "0.629"),
                   targets=(Target("kamnitsas2017_brats2015_crf", "brats2015", BRATS_VSD,
                                   caveat="the challenge's test set is not released with labels: brainbench's "
                                          "held-out split of the training release stands in"),)),
    ),
)

DOU_SENSITIVITY = (Measure("sensitivity (lesion TPR)", "cmb", "lesion_tpr"),)
DOU_CMB = ReviewTable(
    name="dou2016-cmb", title="Microbleed detection sensitivity — the cascade and its screening stage",
    columns=("Stage", "Sensitivity as printed"), published="dou2016_cmb",
    source="Dou et al., IEEE TMI 35(5):1182–1195, 2016", printed_from="specs/architectures.md §5.5–5.6",
    rows=(
        PrintedRow(("screening FCN + discrimination CNN (abstract)", "93.16 %"),
                   targets=(Target("dou2016_cmb", "dou2016", DOU_SENSITIVITY,
                                   caveat="the paper's figure is pooled over 320 private subjects; brainbench runs "
                                          "the authors' 20-scan public release and reports the mean over test cases "
                                          "of detected/annotated CMBs"),)),
        PrintedRow(("screening FCN alone (the review's 98.29 %, inferred)", "98.29 %"),
                   reason="brainbench scores the whole cascade; the screening stage alone is "
                          "brainbench.inference.cascade.predict_cascade(stage2=False), not a run of its own"),
    ),
)

TABLES: dict[str, ReviewTable] = {table.name: table for table in (TABLE2, TABLE3, TABLE4, HAVAEI_TABLE2,
                                                                  PEREIRA_BRATS2013, KAMNITSAS_BRATS2015, DOU_CMB)}


def review_table(name: str) -> ReviewTable:
    """The table called ``name``, or a one-line error listing the known ones."""
    if name not in TABLES:
        raise BrainbenchConfigError(f"TABLE: unknown table '{name}'; choose one of {', '.join(TABLES)}")
    return TABLES[name]


# ---------------------------------------------------------------------------------------------- schedules

def schedule_overrides(schedule: str, experiment: str, data: str) -> list[str]:
    """The overrides of ``experiment`` under ``schedule``: none for ``full`` (the experiment file as it is,
    the paper's schedule), ``conf/reproduce/<schedule>.yaml``'s ``common`` + per-experiment lists otherwise,
    plus its ``synthetic`` lists when the data are synthetic (``data.synth.*`` exists only there); a key set
    twice keeps its last value."""
    if schedule == "full":
        return []
    path = files("brainbench.conf").joinpath("reproduce", f"{schedule}.yaml")
    if not path.is_file():
        raise BrainbenchConfigError(f"--schedule: no schedule '{schedule}' (full, or conf/reproduce/<name>.yaml)")
    spec = OmegaConf.to_container(OmegaConf.load(str(path)))
    if experiment not in spec.get("experiments", {}):
        raise BrainbenchConfigError(f"--schedule {schedule}: conf/reproduce/{schedule}.yaml has no entry for "
                                    f"experiment {experiment}")
    overrides = [*spec.get("common", []), *spec["experiments"][experiment]]
    if data == "synthetic":
        synthetic = spec.get("synthetic", {})
        overrides += [*synthetic.get("common", []), *synthetic.get("experiments", {}).get(experiment, [])]
    by_key = {}  # an experiment's value of a key replaces the common one
    for override in overrides:
        by_key[override.split("=", 1)[0]] = override
    return list(by_key.values())


# ---------------------------------------------------------------------------------------------- collect

def _selected(runs: pd.DataFrame, target: Target) -> pd.DataFrame:
    """The training runs of ``target``: its experiment and edition tags, no ``kind`` (sweep, reproduce,
    leaderboard runs carry one)."""
    if runs.empty or "tags.experiment" not in runs:
        return runs.iloc[0:0]
    keep = (runs["tags.experiment"] == target.experiment) & (runs.get("tags.edition") == target.edition)
    if "tags.kind" in runs:
        keep &= runs["tags.kind"].isna()
    return runs[keep]


def _count_range(values: pd.Series | None) -> str:
    """``12`` or ``11–12``: the range of the counts ``values``; ``?`` when none is logged."""
    finite = values.dropna().to_numpy(dtype=float) if values is not None else np.array([])
    if not finite.size:
        return "?"
    low, high = f"{finite.min():.0f}", f"{finite.max():.0f}"
    return low if low == high else f"{low}–{high}"


@dataclass
class TargetResult:
    """What the runs of one target on one data source give: the cells of its row."""

    reproduced: str
    runs: int
    data: str
    cases: str
    seconds: str


def target_results(runs: pd.DataFrame, target: Target) -> list[TargetResult]:
    """One result per data source among ``target``'s runs (real first), empty without runs.

    ``reproduced``: per measure, mean ± SD (n) over runs of each run's ``<metric>_<region>``
    (:func:`brainbench.evaluation.leaderboard.aggregate_runs`); ``seconds``: the mean over runs of
    ``inference_seconds_per_case``; ``cases``: the range of ``n_test_cases``.
    """
    runs = _selected(runs, target)
    if runs.empty:
        return []
    sources = runs.get("tags.data_source", pd.Series("unknown", index=runs.index)).fillna("unknown")
    results = []
    for source in sorted(set(sources), key=lambda s: (s != "real", s)):
        group = runs[sources == source]
        regions = list(dict.fromkeys(m.region for m in target.measures))
        metrics = list(dict.fromkeys(m.metric for m in target.measures))
        cells = aggregate_runs(group, group["tags.experiment"], regions, metrics)
        if cells.empty:
            continue
        row = cells.iloc[0]
        seconds = group.get("metrics.inference_seconds_per_case")
        results.append(TargetResult(
            reproduced="; ".join(f"{m.label} {row[f'{m.region} {m.metric}'] or '—'}" for m in target.measures),
            runs=int(row["runs"]), data=DATA_SOURCES.get(source, source),
            cases=_count_range(group.get("metrics.n_test_cases")),
            seconds=f"{seconds.mean():.1f} s" if seconds is not None and seconds.notna().any() else "?"))
    return results


def _published_cell(published: pd.DataFrame) -> str:
    """``WT dice 0.88; TC dice 0.79``: region (unless ``all``), metric, value, ``± sd`` where printed, unit
    unless unitless, ``[text]`` for a value of the review's text; the edition first when the row has several."""
    parts = []
    for _, value in published.iterrows():
        edition = f"{value['edition']} " if published["edition"].nunique() > 1 else ""
        region = f"{value['region']} " if value["region"] != "all" else ""
        sd = f" ± {value['sd']:g}" if pd.notna(value.get("sd")) else ""
        unit = f" {value['unit']}" if str(value.get("unit", "1")) not in ("1", "nan") else ""
        where = " [text]" if value.get("printed_in") == "text" else ""
        parts.append(f"{edition}{region}{value['metric']} {value['value']:g}{sd}{unit}{where}")
    return "; ".join(parts)


def _joined(results: Mapping[Target, list[TargetResult]], field: str) -> str:
    """The ``field`` of every result, each named by its target's label in a row of several targets; a target
    without runs is "not run" in the reproduced column."""
    labelled = len(results) > 1
    parts = []
    for target, found in results.items():
        values = [str(getattr(r, field)) for r in found] or (["not run"] if field == "reproduced" else [])
        parts += [f"{target.label}: {value}" if labelled else value for value in values]
    return "; ".join(parts)


def collect(table: ReviewTable, runs: pd.DataFrame) -> pd.DataFrame:
    """The rendered table: the printed columns of every row in print order, then brainbench's columns.

    ``runs`` is :func:`brainbench.tracking.mlflow.runs_frame`-shaped (finished runs with ``tags.*``,
    ``metrics.*``). Added columns: ``brainbench time/case`` beside the printed speed column (Table 3),
    ``Published`` (the published CSV), ``Reproduced``, ``Runs``, ``Data source``, ``Test cases``, ``Note``.
    """
    published = load_published(table.published)
    rows = []
    for number, printed in enumerate(table.rows, start=1):
        row = dict(zip(table.columns, printed.cells))
        results = {target: target_results(runs, target) for target in printed.targets}
        joined = partial(_joined, results)
        if printed.reason:
            status = f"cannot run: {printed.reason}"
        elif not any(results.values()):
            status = "not run"
        else:
            status = joined("reproduced")
        if table.speed_column:
            row["brainbench time/case"] = joined("seconds") or "—"
        row.update({
            "Published": _published_cell(published[published["row"] == number]),
            "Reproduced: mean±SD (n runs)": status,
            "Runs": "—" if printed.reason else joined("runs") or "0",
            "Data source": joined("data") or "—",
            "Test cases": joined("cases") or "—",
            "Note": "; ".join(f"experiment={t.experiment}" + (f": {t.caveat}" if t.caveat else "")
                              for t in printed.targets),
        })
        rows.append(row)
    frame = pd.DataFrame(rows)
    if table.speed_column:  # the measured time beside the printed one
        columns = list(frame.columns)
        columns.remove("brainbench time/case")
        columns.insert(columns.index(table.speed_column) + 1, "brainbench time/case")
        frame = frame[columns]
    return frame


def table_notes(table: ReviewTable, runs: pd.DataFrame) -> list[str]:
    """The sentences every rendering carries: source of the print and of the published values, how to read a
    reproduced cell, and where the runs' data come from (synthetic numbers are never the challenge's)."""
    sources = sorted({s for target in table.targets
                      for s in _selected(runs, target).get("tags.data_source", pd.Series(dtype=object)).dropna()})
    metrics = list(dict.fromkeys(m.metric for target in table.targets for m in target.measures))
    tags = sorted(set(load_published(table.published)["verified"]))
    notes = [f"Columns up to the published values: {table.source}, {table.title.split(' — ')[0]}, as printed "
             f"({table.printed_from}); every printed row keeps its place.",
             f"Published: leaderboards/published/{table.published}.csv (evidence tags "
             f"{'; '.join(f'{tag}: {EVIDENCE_TAGS[tag]}' for tag in tags)}); [text] marks a value of the "
             "review's text rather than its table."]
    if metrics:
        notes.append(aggregate_legend(metrics))
    notes.append(data_source_note(pd.DataFrame({"data": sources})) if sources else
                 "Data source: no finished run yet.")
    notes.append("Reproduced numbers are never the challenge's: a synthetic look-alike only imitates an edition's "
                 "layout and labels (it tests the pipeline, its numbers say nothing about the paper), and a real "
                 "release is scored on brainbench's held-out split of the training cases, not on the challenge's "
                 "test set that most printed figures come from.")
    notes += table.notes
    if table.speed_column:
        notes.append("brainbench time/case: mean over runs of inference_seconds_per_case on the machine that "
                     "ran them; the printed speeds are the teams' own, on their hardware.")
    return notes


# ---------------------------------------------------------------------------------------------- render

def render(table: ReviewTable, runs: pd.DataFrame, out_dir: str | Path) -> tuple[str, list[Path]]:
    """Collect ``runs`` into ``table`` and write ``<table>.{md,html,tex}`` atomically; return the Markdown and files."""
    frame = collect(table, runs)
    notes = table_notes(table, runs)
    title = f"{table.source}, {table.title}: as printed, and reproduced by brainbench"
    texts = {"md": to_markdown(frame, title, notes, source_note=False),
             "html": to_html(frame, title, notes, source_note=False),
             "tex": to_latex(frame, title, notes, source_note=False, label=table.name, longtable=True)}
    paths = [write_atomic(Path(out_dir) / f"{table.name}.{suffix}", lambda tmp, text=text: tmp.write_text(text))
             for suffix, text in texts.items()]
    return texts["md"], paths


# ---------------------------------------------------------------------------------------------- run

def unique_experiments(table: ReviewTable) -> list[Target]:
    """One target per experiment: a sweep's runs serve every row that compares against them (Kamnitsas'
    cross-validation and test-set rows)."""
    return list({target.experiment: target for target in table.targets}.values())


def data_overrides(table: ReviewTable, data: str, roots: Mapping[str, str]) -> dict[str, list[str]]:
    """Per edition the data overrides of its runs: ``data=synthetic``, or ``data=real data.root=PATH``.

    Checked before anything runs: every edition of a runnable row has a root with real data, each root
    exists, and no root names an edition the table does not use.
    """
    editions = list(dict.fromkeys(target.edition for target in table.targets))
    if data == "synthetic":
        if roots:
            raise BrainbenchConfigError("--data-root is for --data real; --data synthetic generates its own cases")
        return {edition: ["data=synthetic"] for edition in editions}
    unknown = sorted(set(roots) - set(editions))
    if unknown:
        raise BrainbenchConfigError(f"--data-root {unknown[0]}: not an edition of {table.name} "
                                    f"(it runs {', '.join(editions)})")
    missing = [edition for edition in editions if edition not in roots]
    if missing:
        raise BrainbenchConfigError(f"--data real needs --data-root EDITION=PATH for {', '.join(missing)} "
                                    f"({table.name} runs {', '.join(editions)})")
    return {edition: ["data=real", f"data.root={existing_dir(roots[edition])}"] for edition in editions}


def train_command(target: Target, folds: int, seeds: Sequence[int], table: str, parent_run_id: str,
                  tracking_uri: str, overrides: Sequence[str]) -> list[str]:
    """The ``brainbench train -m`` multirun of ``target`` over folds × seeds, its jobs children of the
    reproduce run ``parent_run_id``."""
    return [sys.executable, "-m", "brainbench.cli", "train", "-m", f"experiment={target.experiment}",
            f"fold={','.join(map(str, range(folds)))}", f"data.datamodule.folds={folds}",
            f"seed={','.join(map(str, seeds))}", f"logger.experiment_name={table}",
            f"logger.parent_run_id={parent_run_id}", f"logger.tracking_uri={tracking_uri}", *overrides]


def _parse_roots(values: Sequence[str]) -> dict[str, str]:
    roots = {}
    for value in values:
        edition, sep, path = value.partition("=")
        if not sep or not edition or not path:
            raise BrainbenchConfigError(f"--data-root {value!r}: expected EDITION=PATH, e.g. brats2013=/data/BRATS2013")
        roots[edition] = path
    return roots


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in value.split(",")]
    except ValueError:
        raise BrainbenchConfigError(f"--seeds {value!r}: expected comma-separated integers, e.g. 0,1") from None
    if len(set(seeds)) != len(seeds):
        raise BrainbenchConfigError(f"--seeds {value!r}: a seed is repeated")
    return seeds


def _start(tracking_uri: str, table: ReviewTable, tags: Mapping[str, str]) -> tuple[MlflowClient, str]:
    """Create the reproduce run (tag ``kind=reproduce``, name = table) in the MLflow experiment named after
    the table; return the client and the run's id."""
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(ensure_experiment(tracking_uri, table.name), run_name=table.name,
                            tags={"kind": "reproduce", "table": table.name, **tags})
    return client, run.info.run_id


def _finish(client: MlflowClient, run_id: str, table: ReviewTable, runs: pd.DataFrame, out_dir: Path,
            status: str) -> None:
    """Render, print, log the files to the reproduce run and close it with ``status``."""
    markdown, paths = render(table, runs, out_dir)
    print(markdown)
    for path in paths:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)
    print(f"Wrote {', '.join(map(str, paths))}; MLflow run {run_id} (experiment {table.name})")


def reproduce(args: argparse.Namespace) -> int:
    """The ``reproduce`` handler: check every argument, then run (or with ``--collect-only`` gather) and render.

    Returns 0, or 1 when a training sweep failed (the table is still rendered from the runs that finished).
    """
    table = review_table(args.table)
    if args.folds < 2:
        raise BrainbenchConfigError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    seeds = _parse_seeds(args.seeds)
    out_dir = args.out_dir or Path("reproduce") / table.name
    if args.collect_only:
        if args.data_root:
            raise BrainbenchConfigError("--data-root: --collect-only trains nothing, it reads the runs already logged")
        client, run_id = _start(args.tracking_uri, table, {"mode": "collect"})
        runs = runs_frame(args.tracking_uri, table.name)
        if args.data and not runs.empty:
            runs = runs[runs.get("tags.data_source", pd.Series(index=runs.index, dtype=object)) == args.data]
        _finish(client, run_id, table, runs, out_dir, "FINISHED")
        return 0

    data = args.data or "synthetic"
    by_edition = data_overrides(table, data, _parse_roots(args.data_root))
    plans = [(target, [*by_edition[target.edition], *schedule_overrides(args.schedule, target.experiment, data),
                       *args.overrides]) for target in unique_experiments(table)]
    client, run_id = _start(args.tracking_uri, table, {
        "mode": "run", "data": data, "schedule": args.schedule, "folds": str(args.folds),
        "seeds": ",".join(map(str, seeds)), "overrides": " ".join(args.overrides)})
    failed = []
    for target, overrides in plans:
        command = train_command(target, args.folds, seeds, table.name, run_id, args.tracking_uri, overrides)
        print(f"reproduce {table.name}: brainbench {' '.join(command[3:])}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(target.experiment)
    children = runs_to_frame([run for run in child_runs(args.tracking_uri, run_id) if run.info.status == "FINISHED"])
    _finish(client, run_id, table, children, out_dir, "FAILED" if failed else "FINISHED")
    if failed:
        print(f"brainbench: reproduce {table.name}: training failed for {', '.join(failed)} "
              "(their rows show the runs that finished)", file=sys.stderr)
        return 1
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """Lets the Hydra overrides follow the options (``TABLE --data synthetic trainer.max_epochs=1``): a plain
    argparse parse assigns every positional at the first positional string and rejects later ones."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``reproduce`` to the ``brainbench`` subcommands (handler: :func:`reproduce`)."""
    parser = subparsers.add_parser(
        "reproduce", help="render a table of the Akkus et al. 2017 review beside brainbench's runs",
        description=__doc__.split("\n\n")[1].replace("\n", " ").replace("``", ""))
    parser.__class__ = _IntermixedParser
    parser.add_argument("table", metavar="TABLE", help=f"one of {', '.join(TABLES)}")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                        help="Hydra overrides passed to every training run, e.g. trainer.accelerator=gpu")
    parser.add_argument("--data", choices=tuple(DATA_SOURCES), default=None,
                        help="synthetic (default when running): every experiment on its edition's look-alike; "
                             "real: the releases named by --data-root. With --collect-only: only runs on this source")
    parser.add_argument("--data-root", action="append", default=[], metavar="EDITION=PATH",
                        help="with --data real, one per edition the table runs, e.g. brats2013=/data/BRATS2013")
    parser.add_argument("--schedule", default="full",
                        help="full (default): the experiment files as they are, the papers' schedules (hours to "
                             "days per run); tiny: conf/reproduce/tiny.yaml, seconds per run on a CPU")
    parser.add_argument("--folds", type=int, default=5, help="k of the k-fold cross-validation (default 5)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                        help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write TABLE.{md,html,tex} "
                                                                   "(default reproduce/TABLE)")
    parser.add_argument("--collect-only", action="store_true",
                        help="train nothing: render the finished runs already in the MLflow experiment TABLE")
    parser.set_defaults(handler=reproduce)
    return parser
