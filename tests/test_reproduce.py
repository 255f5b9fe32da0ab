"""`brainbench reproduce TABLE` (issue 12): the review's tables as printed, beside runs from a real MLflow store."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from brainbench.config import compose
from brainbench.reproduce import TABLES as REVIEW_TABLES
from brainbench.reproduce import add_parser, schedule_overrides
from brainbench.tracking.mlflow import ensure_experiment
from tests.helpers import run_cli as brainbench

SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "review_tables.md"
TABLES = {"akkus2017-table2": "Table 2", "akkus2017-table3": "Table 3", "akkus2017-table4": "Table 4"}


def reproduce(*argv: str) -> int:
    """``brainbench reproduce ARGV`` through the subcommand's own parser and handler, in this process."""
    parser = argparse.ArgumentParser(prog="brainbench")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["reproduce", *argv])
    return args.handler(args)


def printed_rows(section: str) -> list[list[str]]:
    """The rows of the first Markdown table under ``## <section>`` of review_tables.md, cells stripped."""
    text = SPEC.read_text(encoding="utf-8")
    body = text[text.index(f"## {section}"):].split("\n## ")[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]  # header, rule


def rendered_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Markdown table in a rendered file."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))] for line in lines]
    return split[0], split[2:]


def log_run(client: MlflowClient, experiment_id: str, tags: dict[str, str], metrics: dict[str, float],
            finished: bool = True) -> str:
    run = client.create_run(experiment_id, tags=tags)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    if finished:
        client.set_terminated(run.info.run_id)
    return run.info.run_id


def training_tags(experiment: str, edition: str, source: str, fold: int, seed: int = 0) -> dict[str, str]:
    """The tags every training run logs (issue 12 contract)."""
    return {"experiment": experiment, "edition": edition, "data_source": source, "fold": str(fold), "folds": "2",
            "seed": str(seed), "model": "m", "challenge": "c", "config_hash": f"{experiment}{fold}{seed}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A SQLite MLflow store with runs of Tables 3 and 4 logged as training runs log them, plus runs that
    must not count (a sweep parent, another edition, an unfinished run)."""
    folder = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    table4 = ensure_experiment(uri, "akkus2017-table4")
    havaei = "havaei2017_brats2013_inputcascade"
    for fold, (wt, tc, et) in enumerate([(0.6, 0.5, 0.4), (0.8, 0.7, 0.4)]):
        log_run(client, table4, training_tags(havaei, "brats2013", "synthetic", fold),
                {"dice_complete": wt, "dice_core": tc, "dice_enhancing": et,
                 "n_test_cases": 1 + fold, "inference_seconds_per_case": 3.0})
    log_run(client, table4, {**training_tags(havaei, "brats2013", "synthetic", 0), "kind": "sweep"},
            {"dice_complete": 0.0})
    log_run(client, table4, training_tags(havaei, "brats2020", "synthetic", 0), {"dice_complete": 0.0})
    log_run(client, table4, training_tags(havaei, "brats2013", "synthetic", 1), {"dice_complete": 0.0},
            finished=False)
    log_run(client, table4, training_tags("brosch2016_isbi2015", "isbi2015", "real", 0),
            {"dice_lesion": 0.55, "n_test_cases": 4})
    table3 = ensure_experiment(uri, "akkus2017-table3")
    for fold, (csf, seconds) in enumerate([(0.7, 100.0), (0.9, 140.0)]):
        log_run(client, table3, training_tags("cicek2016_mrbrains13_unet3d", "mrbrains13", "synthetic", fold),
                {"dice_CSF": csf, "dice_GM": 0.5, "dice_WM": 0.5, "n_test_cases": 1,
                 "inference_seconds_per_case": seconds})
    return folder


@pytest.mark.skipif(not SPEC.is_file(), reason="specs/review_tables.md is not in this checkout")
@pytest.mark.parametrize("table", TABLES)
def test_every_printed_row_keeps_its_place_and_the_runs_are_aggregated(store, tmp_path, capsys, table):
    assert reproduce(table, "--collect-only", "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}",
                     "--out-dir", str(tmp_path)) == 0
    markdown = (tmp_path / f"{table}.md").read_text()
    assert markdown in capsys.readouterr().out
    header, rows = rendered_rows(markdown)
    printed = printed_rows(TABLES[table])
    assert len(rows) == len(printed)
    for row, expected in zip(rows, printed):
        assert [c for c, h in zip(row, header) if h != "brainbench time/case"][:len(expected)] == expected
    cells = [dict(zip(header, row)) for row in rows]
    for cell in cells:
        assert cell["Reproduced: mean±SD (n runs)"].startswith(("cannot run: ", "not run")) or cell["Runs"] != "0"
    if table == "akkus2017-table2":
        assert all(c["Reproduced: mean±SD (n runs)"].startswith("cannot run: ") for c in cells)
        assert cells[0]["Published"].startswith("CSF dice 0.835; GM dice 0.852; WM dice 0.864")
    if table == "akkus2017-table4":
        havaei, pereira, brosch = cells[0], cells[1], cells[5]
        # by hand: mean (0.6, 0.8) = 0.7, SD (n − 1) = 0.1414; (0.5, 0.7): 0.6 ± 0.1414; (0.4, 0.4): 0.4 ± 0
        assert havaei["Reproduced: mean±SD (n runs)"] == \
            "complete Dice 0.700±0.141 (2); core Dice 0.600±0.141 (2); enhancing Dice 0.400±0.000 (2)"
        assert (havaei["Runs"], havaei["Data source"], havaei["Test cases"]) == ("2", "synthetic look-alike", "1–2")
        assert havaei["Published"] == "WT dice 0.88; TC dice 0.79; ET dice 0.73"
        assert pereira["Reproduced: mean±SD (n runs)"] == "not run" and pereira["Runs"] == "0"
        assert brosch["Reproduced: mean±SD (n runs)"] == "ISBI: lesion Dice 0.550±– (1); MICCAI: not run"
        assert brosch["Data source"] == "ISBI: real release" and brosch["Test cases"] == "ISBI: 4"
        assert cells[6]["Published"] == "microbleed sensitivity 0.9829; microbleed sensitivity 0.932 [text]"
        assert "never the challenge's" in markdown
    if table == "akkus2017-table3":
        assert header[header.index("Speed") + 1] == "brainbench time/case"
        freiburg = cells[4]
        assert freiburg["brainbench time/case"] == "120.0 s"  # mean of 100 s and 140 s
        assert freiburg["Reproduced: mean±SD (n runs)"].startswith("CSF Dice 0.800±0.141 (2)")
        assert "SYNTHETIC" in markdown
    run = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}").search_runs(
        [ensure_experiment(f"sqlite:///{store / 'mlflow.db'}", table)], filter_string="tags.kind = 'reproduce'",
        order_by=["attributes.start_time DESC"])[0]
    artifacts = {a.path for a in MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}").list_artifacts(
        run.info.run_id)}
    assert artifacts == {f"{table}.{suffix}" for suffix in ("md", "html", "tex")}
    assert run.info.status == "FINISHED"


def test_collect_only_with_data_keeps_the_runs_on_that_source(store, tmp_path):
    assert reproduce("akkus2017-table4", "--collect-only", "--data", "synthetic", "--tracking-uri",
                     f"sqlite:///{store / 'mlflow.db'}", "--out-dir", str(tmp_path)) == 0
    header, rows = rendered_rows((tmp_path / "akkus2017-table4.md").read_text())
    cells = [dict(zip(header, row)) for row in rows]
    assert cells[5]["Reproduced: mean±SD (n runs)"] == "not run"  # Brosch's one run is on real data
    assert cells[0]["Reproduced: mean±SD (n runs)"].startswith("complete Dice 0.700±0.141 (2)")


@pytest.mark.parametrize("args, message", [
    (["akkus2017-table5"], "TABLE: unknown table 'akkus2017-table5'; choose one of akkus2017-table2"),
    (["akkus2017-table4", "--data", "real", "--data-root", "brats2013=."],
     "--data real needs --data-root EDITION=PATH for brats2015, isbi2015, miccai2008, dou2016"),
    (["akkus2017-table4", "--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
])
def test_bad_arguments_are_one_line_before_anything_runs(tmp_path, args, message):
    result = brainbench("reproduce", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no output folder


@pytest.mark.slow
def test_table4_reproduces_end_to_end_on_synthetic_data_with_the_tiny_schedule(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = brainbench("reproduce", "akkus2017-table4", "--data", "synthetic", "--schedule", "tiny", "--folds", "2",
                        "--seeds", "0", "--tracking-uri", uri, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header, rows = rendered_rows((tmp_path / "reproduce" / "akkus2017-table4" / "akkus2017-table4.md").read_text())
    assert [row[0] for row in rows] == ["Havaei et al. 2016", "Pereira et al. 2016", "Zhao and Jia 2015",
                                        "Kamnitsas et al. 2016", "Dvorak et al. 2015", "Brosch et al. 2016",
                                        "Dou et al. 2016", "Maier et al. 2015", "Akkus et al. 2016"]
    cells = {row[0]: dict(zip(header, row)) for row in rows}

    client = MlflowClient(tracking_uri=uri)
    (parent,) = client.search_runs([ensure_experiment(uri, "akkus2017-table4")], "tags.kind = 'reproduce'")
    children = client.search_runs([ensure_experiment(uri, "akkus2017-table4")],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    experiments = ["havaei2017_brats2013_inputcascade", "pereira2016_brats2013_hgg", "kamnitsas2017_brats2015_crf",
                   "brosch2016_isbi2015", "brosch2016_miccai2008", "dou2016_cmb"]
    assert sorted((r.data.tags["experiment"], r.data.tags["fold"]) for r in children) == \
        sorted((e, f) for e in experiments for f in ("0", "1"))
    assert {r.data.tags["data_source"] for r in children} == {"synthetic"} and parent.info.status == "FINISHED"

    def by_hand(experiment: str, key: str) -> str:
        values = np.array([r.data.metrics[key] for r in children if r.data.tags["experiment"] == experiment])
        return f"{values.mean():.3f}±{values.std(ddof=1):.3f} (2)"

    havaei = cells["Havaei et al. 2016"]
    assert havaei["Reproduced: mean±SD (n runs)"].startswith(
        f"complete Dice {by_hand('havaei2017_brats2013_inputcascade', 'dice_complete')}; core Dice")
    assert cells["Brosch et al. 2016"]["Runs"] == "ISBI: 2; MICCAI: 2"
    assert f"sensitivity (lesion TPR) {by_hand('dou2016_cmb', 'lesion_tpr_cmb')}" in \
        cells["Dou et al. 2016"]["Reproduced: mean±SD (n runs)"]
    for name, experiment in [("Havaei et al. 2016", "havaei2017_brats2013_inputcascade"),
                             ("Pereira et al. 2016", "pereira2016_brats2013_hgg"),
                             ("Kamnitsas et al. 2016", "kamnitsas2017_brats2015_crf"),
                             ("Dou et al. 2016", "dou2016_cmb")]:
        cases = {int(r.data.metrics["n_test_cases"]) for r in children if r.data.tags["experiment"] == experiment}
        assert (cells[name]["Runs"], cells[name]["Data source"]) == ("2", "synthetic look-alike")
        assert cells[name]["Test cases"] == "–".join(map(str, sorted(cases)))
    for name in ("Zhao and Jia 2015", "Dvorak et al. 2015", "Maier et al. 2015", "Akkus et al. 2016"):
        assert cells[name]["Reproduced: mean±SD (n runs)"].startswith("cannot run: ")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        f"akkus2017-table4.{suffix}" for suffix in ("md", "html", "tex")}


@pytest.mark.parametrize("experiment", sorted({target.experiment for table in REVIEW_TABLES.values()
                                               for target in table.targets}))
def test_the_tiny_schedule_composes_with_every_experiment_a_table_runs(experiment):
    overrides = schedule_overrides("tiny", experiment, "synthetic")
    cfg = compose([f"experiment={experiment}", "data=synthetic", "fold=0", "data.datamodule.folds=2", *overrides])
    assert cfg.trainer.max_epochs == 1 and cfg.data.source == "synthetic"
    assert cfg.data.synth.n_cases >= 4 and cfg.sampler.segments_per_epoch <= 64
    real = compose([f"experiment={experiment}", "data.root=/data", *schedule_overrides("tiny", experiment, "real")])
    assert real.data.source == "real" and real.trainer.max_epochs == 1
    assert schedule_overrides("full", experiment, "real") == []


ARCHITECTURES = SPEC.parent / "architectures.md"
CHALLENGES = SPEC.parent / "challenges.md"


@pytest.mark.skipif(not ARCHITECTURES.is_file(), reason="specs/architectures.md is not in this checkout")
@pytest.mark.parametrize("table", ["havaei2017-table2", "pereira2016-brats2013", "kamnitsas2017-brats2015"])
def test_the_papers_own_tables_render_every_row_the_specs_give(store, tmp_path, table):
    """Each printed Dice triple is the spec's (read here from the spec text), every row keeps its place with
    its published values, and a row whose experiment has no run yet says so."""
    assert reproduce(table, "--collect-only", "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}",
                     "--out-dir", str(tmp_path)) == 0
    header, rows = rendered_rows((tmp_path / f"{table}.md").read_text())
    spec = ARCHITECTURES.read_text(encoding="utf-8") + CHALLENGES.read_text(encoding="utf-8")
    assert len(rows) == len(REVIEW_TABLES[table].rows)
    for row in rows:
        cells = dict(zip(header, row))
        printed = [cells[column] for column in ("Dice complete", "Dice core", "Dice enhancing")]
        percent = [f"{float(v) * 100:.1f}".removesuffix(".0") for v in printed]
        as_in_spec = {separator.join(values) for separator in ("/", " / ") for values in (printed, percent)}
        assert any(text in spec for text in as_in_spec), printed
        assert cells["Published"] == f"WT dice {float(printed[0]):g}; TC dice {float(printed[1]):g}; " \
                                     f"ET dice {float(printed[2]):g}"
        assert cells["Reproduced: mean±SD (n runs)"].endswith("not run")


def test_dous_table_keeps_the_screening_row_it_cannot_run(store, tmp_path):
    """Both printed sensitivities are the spec's; the cascade row is reproducible, the screening-stage row says why not."""
    assert reproduce("dou2016-cmb", "--collect-only", "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}",
                     "--out-dir", str(tmp_path)) == 0
    header, rows = rendered_rows((tmp_path / "dou2016-cmb.md").read_text())
    cells = [dict(zip(header, row)) for row in rows]
    spec = ARCHITECTURES.read_text(encoding="utf-8")
    assert [c["Sensitivity as printed"] for c in cells] == ["93.16 %", "98.29 %"]
    assert "93.16%" in spec and "98.29%" in spec
    assert [c["Published"] for c in cells] == ["microbleed sensitivity 0.9316 [text]", "microbleed sensitivity 0.9829"]
    assert cells[0]["Reproduced: mean±SD (n runs)"] == "not run"
    assert cells[1]["Reproduced: mean±SD (n runs)"].startswith("cannot run: brainbench scores the whole cascade")
