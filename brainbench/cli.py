"""The ``brainbench`` command.

``brainbench train`` hands its arguments to Hydra (overrides, ``-m`` multiruns, ``--cfg job``);
the other subcommands are plain argparse. Any :class:`BrainbenchError` is printed as one line and
exits with status 2 — users see what to fix, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Transparent huge pages for PyTorch's large CPU tensors: 3D inference over a brain box ran about 10 %
# faster with them (BENCHMARKS.md, issue 10). PyTorch reads the setting once, so it is set before any
# torch import; a value in the user's environment wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
# MLflow draws a progress bar for every artifact download (predict --run, --from-run fetch three small files).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from brainbench.errors import BrainbenchError


CHALLENGE_HELP = "edition, e.g. brats2020 (see `brainbench data list`), or a YAML declaration of your own cohort"
INPUT_POLICY_HELP = ("official (default): read predictions as the edition's scorer did (an affine or labels it "
                     "accepts, listed one line per case); strict: score anything off the reference grid or "
                     "labels as empty")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        try:
            return _train(*_from_run(argv[1:]))
        except BrainbenchError as error:
            print(f"brainbench: error: {error}", file=sys.stderr)
            return 2
    if argv[:1] == ["reproduce"]:  # its parser lives with it, and imports MLflow: only for this command
        from brainbench.reproduce import add_parser

        commands = argparse.ArgumentParser(prog="brainbench").add_subparsers()
        add_parser(commands)
        args = commands.choices["reproduce"].parse_args(argv[1:])
    else:
        args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrainbenchError as error:
        print(f"brainbench: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainbench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train and evaluate (Hydra overrides follow, e.g. model=deepmedic seed=1); "
                                      "--from-run RUN_ID re-runs a logged run's config")

    predict = commands.add_parser("predict", help="segment new cases with the model an MLflow run logged")
    predict.add_argument("--run", required=True, help="MLflow run id of a finished brainbench train run")
    predict.add_argument("--input", required=True, type=Path,
                         help="folder of cases in the run's edition's layout (label maps not needed)")
    predict.add_argument("--out", required=True, type=Path, help="output folder for <case_id>.nii.gz")
    predict.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    predict.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the run's inference device)")
    predict.set_defaults(handler=_predict)

    data = commands.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic look-alike cases in an edition's official layout")
    synth.add_argument("--challenge", default="brats2020", help="edition to imitate (see `brainbench data list`)")
    synth.add_argument("--out", type=Path, default=None, help="output folder (default datasets/synthetic/<edition>)")
    synth.add_argument("--cases", type=int, default=None, help="number of cases (default: the edition's, e.g. 12)")
    synth.add_argument("--spacing", type=float, default=None,
                       help="voxel spacing in mm (default: the edition's synthetic default, e.g. 2 for BraTS)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="rewrite cases that already exist")
    synth.set_defaults(handler=_data_synth)
    check = data.add_parser("check", help="list the cases of a release folder and every problem found, one line each")
    check.add_argument("--challenge", required=True, help=CHALLENGE_HELP)
    check.add_argument("--root", required=True, type=Path, help="the release folder as unpacked")
    check.add_argument("--no-labels", action="store_true", help="a validation/test release without label maps")
    check.set_defaults(handler=_data_check)
    data.add_parser("list", help="every supported challenge edition").set_defaults(handler=_data_list)

    evaluate = commands.add_parser("evaluate", help="evaluate prediction files against references")
    evaluate.add_argument("--challenge", required=True, help=CHALLENGE_HELP)
    evaluate.add_argument("--pred", required=True, type=Path, help="folder of <case_id>.nii.gz predictions")
    evaluate.add_argument("--ref", required=True, type=Path,
                          help="the edition's release folder as released, or a flat folder of <case_id>.nii.gz")
    evaluate.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                          help="processes scoring cases in parallel (default: every core)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("--out", type=Path, default=Path("metrics.csv"), help="long-format CSV case,region,metric,value")
    evaluate.add_argument("--team", default=None, help="team name written as a leading 'team' column")
    evaluate.add_argument("--input-policy", default="official", help=INPUT_POLICY_HELP)
    evaluate.set_defaults(handler=_evaluate)

    commands.add_parser("reproduce", help="the Akkus et al. 2017 review's tables beside brainbench's runs "
                                          "(brainbench reproduce -h)")

    board = commands.add_parser("leaderboard", help="challenge-style ranked table of MLflow runs or submission folders")
    source = board.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment name (default per edition, e.g. brats2020)")
    source.add_argument("--submissions", nargs="+", type=Path, help="submission folders (team = folder name)")
    board.add_argument("--ref", type=Path, help="release or flat reference folder (with --submissions)")
    board.add_argument("--challenge", help=f"edition whose protocol and ranking rule apply; {CHALLENGE_HELP}")
    board.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes scoring cases in parallel (default: every core)")
    board.add_argument("--quiet", action="store_true", help="no progress bar")
    board.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    board.add_argument("--out", type=Path, default=None, help="also write the run summary table as Markdown here")
    board.add_argument("--out-dir", type=Path, default=None,
                       help="write leaderboard.{md,csv,html,tex}, metrics.csv and PNG figures here")
    board.add_argument("--data-source", default="unknown",
                       help="where the submissions' data come from (real, synthetic)")
    board.add_argument("--input-policy", default="official", help=f"with --submissions: {INPUT_POLICY_HELP}")
    board.add_argument("--ties", default="min", help="scipy rankdata tie method (default min, as nnU-Net)")
    board.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for rank stability (0: none)")
    board.add_argument("--bootstrap-unit", default="case", choices=("case", "case-region"),
                       help="what the bootstrap resamples (case-region for one-case test sets)")
    board.add_argument("--seed", type=int, default=0)
    board.add_argument("--log-to-mlflow", action="store_true",
                       help="log the files as artifacts of a new run tagged kind=leaderboard")
    board.set_defaults(handler=_leaderboard)

    models = commands.add_parser("models", help="model cards: paper, geometry, receptive field, parameter counts, "
                                                "recipe and reconstructed values of each model")
    models.add_argument("names", nargs="*", metavar="NAME", help="models to show, e.g. deepmedic (default: all)")
    models.add_argument("--markdown", action="store_true", help="print Markdown sections instead of tables")
    models.set_defaults(handler=_models)
    return parser


def _from_run(arguments: list[str]) -> tuple[list[str], str | None]:
    """``--from-run RUN_ID`` among the train arguments → the other arguments and a config folder that
    re-runs that run (its tracking URI: a ``logger.tracking_uri=`` override, else the default)."""
    if "--from-run" not in arguments:
        return arguments, None
    index = arguments.index("--from-run")
    if index + 1 >= len(arguments):
        raise BrainbenchError("train --from-run needs a run id")
    run_id, rest = arguments[index + 1], arguments[:index] + arguments[index + 2:]
    uris = [a.split("=", 1)[1] for a in rest if a.startswith("logger.tracking_uri=")]
    from brainbench.tracking.mlflow import DEFAULT_TRACKING_URI

    uri = uris[-1] if uris else DEFAULT_TRACKING_URI
    _require_sqlite_store(uri)
    import tempfile

    from brainbench.pipeline import from_run_config

    folder = Path(tempfile.mkdtemp(prefix="brainbench-from-run-"))
    return rest, str(from_run_config(uri, run_id, folder))


def _train(overrides: list[str], config_path: str | None = None) -> int:
    """The Hydra app; ``config_path`` replaces the shipped config tree (``--from-run``)."""
    import hydra
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from brainbench.config import CONFIG_PATH, register

    register()

    @hydra.main(config_path=config_path or CONFIG_PATH, config_name="config", version_base="1.3")
    def run(cfg: DictConfig) -> float:
        from brainbench.pipeline import train

        try:
            return train(cfg)
        except BrainbenchError as error:
            print(f"brainbench: error: {error}", file=sys.stderr)
        except OmegaConfBaseException as error:  # a missing or unresolvable value of the composed config
            key = getattr(error, "full_key", None)
            print(f"brainbench: error: config value {key or '?'}: {str(error).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)

    sys.argv = ["brainbench train", *overrides]
    run()
    return 0


def _predict(args: argparse.Namespace) -> int:
    from brainbench.pipeline import predict_from_run

    uri = _tracking_uri(args)
    _require_sqlite_store(uri)
    predictions = predict_from_run(uri, args.run, args.input, args.out, device=args.device)
    print(f"{len(predictions.array_grid)} cases segmented with run {args.run} → {args.out}")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    """Write the edition's declared look-alike (generator and defaults from its declaration)."""
    from brainbench.challenges import get_edition
    from brainbench.data.synth import synthesize

    edition = get_edition(args.challenge)
    out = args.out or Path("datasets/synthetic") / edition.name
    folders = synthesize(edition.name, out, n_cases=args.cases, spacing_mm=args.spacing, seed=args.seed,
                         overwrite=args.overwrite)
    print(f"{len(folders)} synthetic {edition.name} cases in {out}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    """Exit 0 when the release is clean, 2 when any problem was found."""
    from rich.console import Console
    from rich.table import Table

    from brainbench.challenges import adapter_for

    checks, problems = adapter_for(args.challenge, require_labels=not args.no_labels).check(args.root)
    table = Table(title=f"{args.challenge} cases in {args.root}")
    for column in ("case", "channels", "shape (X×Y×Z)", "spacing (mm)", "label values", "problems"):
        table.add_column(column)
    for check in checks:
        grid = check.grid
        table.add_row(check.case.case_id, " ".join(check.case.images),
                      "×".join(map(str, grid.shape)) if grid else "?",
                      "×".join(f"{s:.3g}" for s in grid.spacing) if grid else "?",
                      " ".join(map(str, check.label_values)) if check.label_values is not None else "-",
                      str(len(check.problems)))
        problems += check.problems
    Console(width=160).print(table)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(checks)} cases, {len(problems)} problems")
    return 2 if problems else 0


def _data_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from brainbench.challenges import EDITIONS, Unranked

    table = Table(title="Supported challenge editions")
    for column in ("edition", "family", "modalities", "labels", "regions", "protocol", "ranking"):
        table.add_column(column)
    for name, edition in EDITIONS.items():
        regions = "; ".join(f"{region}={'+'.join(map(str, values))}" for region, values in edition.regions.items())
        ranking = "unranked" if isinstance(edition.ranking, Unranked) else edition.ranking
        table.add_row(name, edition.challenge, " ".join(edition.modalities), " ".join(map(str, edition.label_values)),
                      regions, edition.protocol, ranking)
    Console(width=220).print(table)
    return 0


def _models(args: argparse.Namespace) -> int:
    """Each model composed for the edition of its paper, its full-width net built (a few seconds in all)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from brainbench.cards import model_cards
    from brainbench.config import compose

    cards = model_cards(args.names or None, compose=compose)
    if args.markdown:
        print("\n".join(card.to_markdown() for card in cards), end="")
        return 0
    console = Console(width=160)
    for card in cards:
        table = Table(title=f"{card.name}: {card.title}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for field, value in [*card.rows(), ("Reconstructions", "\n".join(card.reconstruction_lines()) or "none")]:
            table.add_row(field, Text(value))  # plain text: "[M]" is an evidence tag, not rich markup
        console.print(table)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from brainbench.challenges import get_edition
    from brainbench.evaluation.evaluate import evaluate_folders, write_metrics_csv
    from brainbench.evaluation.leaderboard import case_statistics
    from brainbench.evaluation.protocols import input_policy_note, protocol_for

    edition = get_edition(args.challenge)
    protocol = protocol_for(edition)
    result = evaluate_folders(args.pred, edition.find_references(args.ref), edition.regions, protocol,
                              allowed_labels=set(edition.label_values), workers=args.workers,
                              progress=not args.quiet, input_policy=args.input_policy)
    if args.team:
        result.metrics.insert(0, "team", args.team)
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    write_metrics_csv(result.metrics, args.out, input_policy=result.input_policy)
    n_cases = result.metrics["case"].nunique() if len(result.metrics) else 0
    print(f"{n_cases} cases evaluated with the {edition.protocol} protocol → {args.out}")
    print(input_policy_note(result.input_policy, protocol))
    for row in case_statistics(result.metrics).itertuples():
        print(f"  {row.region + '/' + row.metric:<22} {row.mean:.4f}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    if args.log_to_mlflow and not args.out_dir:
        raise BrainbenchError("leaderboard --log-to-mlflow needs --out-dir DIR for the files it logs")
    board = _experiment_board(args, _tracking_uri(args)) if args.experiment else _submissions_board(args)
    if board is not None:
        print(f"{board.title}\n{board.table.drop(columns='data').to_string(index=False)}")
        print("\n".join(board.notes))
        if args.out_dir:
            print(f"{len(board.files)} files → {args.out_dir}")
    if args.log_to_mlflow and board is not None:
        from brainbench.tracking.mlflow import log_leaderboard_run

        experiment = args.experiment or args.challenge
        run_id = log_leaderboard_run(_tracking_uri(args), experiment, board.files, {"edition": args.challenge or ""})
        print(f"logged to MLflow run {run_id} (experiment {experiment}, kind=leaderboard)")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    from brainbench.tracking.mlflow import DEFAULT_TRACKING_URI

    return args.tracking_uri or DEFAULT_TRACKING_URI


def _require_sqlite_store(uri: str) -> None:
    """Refuse a SQLite tracking URI whose file is missing: MLflow would create an empty store there."""
    from brainbench.tracking.mlflow import sqlite_store_file

    path = sqlite_store_file(uri)
    if path is not None and not path.is_file():
        raise BrainbenchError(f"{path}: no MLflow store found (tracking URI {uri}); run the command in the "
                              "folder that holds it or pass --tracking-uri")


def _submissions_board(args: argparse.Namespace):
    if args.ref is None or args.challenge is None:
        raise BrainbenchError("leaderboard --submissions needs --ref DIR and --challenge EDITION")
    from brainbench.challenges import get_edition
    from brainbench.evaluation.evaluate import evaluate_submissions
    from brainbench.evaluation.leaderboard import rank_teams
    from brainbench.evaluation.protocols import input_policy_note, protocol_for
    from brainbench.evaluation.ranking import rule_for

    edition = get_edition(args.challenge)
    protocol, rule = protocol_for(edition), rule_for(edition)  # an unranked edition stops here, before scoring
    result = evaluate_submissions(args.submissions, edition.find_references(args.ref), edition.regions, protocol,
                                  allowed_labels=set(edition.label_values), workers=args.workers,
                                  progress=not args.quiet, input_policy=args.input_policy)
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    title = f"Leaderboard — {edition.name} submissions ({edition.protocol} protocol)"
    return rank_teams(result.metrics, rule, title, args.data_source, args.out_dir, args.ties, args.bootstrap,
                      args.seed, args.bootstrap_unit, notes=[input_policy_note(result.input_policy, protocol)])


def _experiment_board(args: argparse.Namespace, uri: str):
    """Print the run summary table; with --out-dir also rank the runs' per-case metrics.csv artifacts.

    The edition is ``--challenge`` or the one the runs are tagged with (one edition per experiment).
    """
    from brainbench.challenges import get_edition
    from brainbench.evaluation.leaderboard import (aggregate_legend, aggregate_runs, headline_metrics, leaderboard_table,
                                                   mean_legend, print_leaderboard, rank_teams, to_markdown)
    from brainbench.evaluation.ranking import rule_for
    from brainbench.io import write_atomic
    from brainbench.tracking.mlflow import configurations, experiment_case_metrics, pooled_case_metrics, runs_frame

    _require_sqlite_store(uri)
    runs = runs_frame(uri, args.experiment)
    if runs.empty:
        raise BrainbenchError(f"{uri}: no finished runs in experiment '{args.experiment}'")
    editions = sorted(set(runs["tags.edition"].dropna())) if "tags.edition" in runs else []
    if args.challenge is None and len(editions) != 1:
        raise BrainbenchError(f"experiment '{args.experiment}' holds runs of editions {editions}; "
                              "name the one to rank with --challenge")
    edition = get_edition(args.challenge or editions[0])
    metrics = headline_metrics(edition)
    table = leaderboard_table(runs, list(edition.regions), metrics)
    title = f"Leaderboard — experiment {args.experiment}"
    print_leaderboard(table, title, mean_legend(metrics))
    repeated = configurations(runs).duplicated().any()  # folds or seeds of one configuration: aggregate them
    if repeated:
        aggregated = aggregate_runs(runs, configurations(runs), list(edition.regions), metrics)
        print_leaderboard(aggregated, f"{title}: configurations over folds × seeds", aggregate_legend(metrics))
    if args.out:
        write_atomic(args.out, lambda tmp: tmp.write_text(to_markdown(table, title, [mean_legend(metrics)])))
    if not args.out_dir:
        return None
    rule = rule_for(edition)
    frame = pooled_case_metrics(uri, runs) if repeated else experiment_case_metrics(uri, runs)
    if frame.empty:
        raise BrainbenchError(f"{uri}: no run of experiment '{args.experiment}' has a metrics.csv artifact")
    sources = ", ".join(sorted(set(runs["tags.data_source"].dropna()))) if "tags.data_source" in runs else "unknown"
    return rank_teams(frame, rule, f"{title} (ranked runs)", sources, args.out_dir, args.ties, args.bootstrap,
                      args.seed, args.bootstrap_unit)


if __name__ == "__main__":
    sys.exit(main())
