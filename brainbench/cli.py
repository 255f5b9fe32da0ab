"""The ``brainbench`` command.

``brainbench train`` hands its arguments to Hydra (overrides, ``-m`` multiruns, ``--cfg job``);
the other subcommands are plain argparse. Any :class:`BrainbenchError` is printed as one line and
exits with status 2 — users see what to fix, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainbench.errors import BrainbenchError

CONF_DIR = Path(__file__).parent / "conf"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrainbenchError as error:
        print(f"brainbench: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainbench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("train", help="train and evaluate (Hydra overrides follow, e.g. model=deepmedic seed=1)")

    data = commands.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic BraTS 2020-style cases in the official layout")
    synth.add_argument("--out", type=Path, default=Path("datasets/synthetic/brats2020"), help="output folder")
    synth.add_argument("--cases", type=int, default=12, help="number of cases")
    synth.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel spacing in mm (2 fast, 1 BraTS)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="rewrite cases that already exist")
    synth.set_defaults(handler=_data_synth)

    evaluate = commands.add_parser("evaluate", help="evaluate prediction files against references")
    evaluate.add_argument("--challenge", required=True, help="edition, e.g. brats2020")
    evaluate.add_argument("--pred", required=True, type=Path, help="folder of <case_id>.nii.gz predictions")
    evaluate.add_argument("--ref", required=True, type=Path,
                          help="folder of references: <case_id>.nii.gz or the release layout <case>/<case>_seg.nii.gz")
    evaluate.add_argument("--out", type=Path, default=Path("metrics.csv"), help="long-format CSV case,region,metric,value")
    evaluate.set_defaults(handler=_evaluate)

    board = commands.add_parser("leaderboard", help="challenge-style table of the runs of an MLflow experiment")
    board.add_argument("--experiment", required=True, help="MLflow experiment name (default per edition, e.g. brats2020)")
    board.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///mlflow.db)")
    board.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    board.set_defaults(handler=_leaderboard)
    return parser


def _train(overrides: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def run(cfg: DictConfig) -> float:
        from brainbench.training.run import train

        try:
            return train(cfg)
        except BrainbenchError as error:
            print(f"brainbench: error: {error}", file=sys.stderr)
            sys.exit(2)

    sys.argv = ["brainbench train", *overrides]
    run()
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from brainbench.data.synth.brats import synthesize_brats

    folders = synthesize_brats(args.out, n_cases=args.cases, spacing_mm=args.spacing, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"{len(folders)} synthetic BraTS 2020-style cases in {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from brainbench.challenges import adapter_for
    from brainbench.evaluation.evaluate import evaluate_folders, write_metrics_csv
    from brainbench.evaluation.leaderboard import summary_metrics
    from brainbench.evaluation.protocols import PROTOCOLS

    edition = adapter_for(args.challenge).edition
    result = evaluate_folders(args.pred, args.ref, edition.regions, PROTOCOLS[edition.protocol],
                              allowed_labels=set(edition.label_values))
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    write_metrics_csv(result.metrics, args.out)
    n_cases = result.metrics["case"].nunique() if len(result.metrics) else 0
    print(f"{n_cases} cases evaluated with the {edition.protocol} protocol → {args.out}")
    for name, value in summary_metrics(result.metrics, prefix="mean").items():
        if name.endswith("/mean"):
            print(f"  {name.removeprefix('mean/').removesuffix('/mean'):<22} {value:.4f}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from brainbench.challenges import EDITIONS
    from brainbench.data.io import write_atomic
    from brainbench.evaluation.leaderboard import leaderboard_table, print_leaderboard, to_markdown
    from brainbench.tracking.mlflow import DEFAULT_TRACKING_URI, runs_frame

    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    runs = runs_frame(uri, args.experiment)
    if runs.empty:
        raise BrainbenchError(f"{uri}: no finished runs in experiment '{args.experiment}'")
    editions = set(runs.get("tags.edition", []))
    regions = next((list(EDITIONS[e].regions) for e in editions if e in EDITIONS), ["WT", "TC", "ET"])
    table = leaderboard_table(runs, regions)
    title = f"Leaderboard — experiment {args.experiment}"
    print_leaderboard(table, title)
    if args.out:
        write_atomic(args.out, lambda tmp: tmp.write_text(to_markdown(table, title)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
