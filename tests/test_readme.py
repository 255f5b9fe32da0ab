"""Every command in README.md's ```bash blocks is run by a named test (issue 13, item 7).

The README's commands are parsed from its ```bash blocks: one command per line, ``\\`` continuations joined,
comments and blank lines dropped, whitespace collapsed. Each command is in exactly one of three lists kept
in sync here:

- :data:`COVERED`: command → the test (``path::function``) that runs it through the real CLI. A comment says
  what the test substitutes: a synthetic look-alike or a real case of ``../shared/data/real`` for a release
  path, tiny widths and schedules, fewer cases, seeds, folds or models.
- :data:`SHELL`: shell set-up lines (``source``, variable assignments) and the commands that run this suite:
  ``make test``, and ``pytest --nbmake notebooks/`` (``make test`` runs pytest with ``--nbmake`` over the
  testpaths ``tests`` and ``notebooks``, so each notebook is a test item).
- :data:`NOT_RUN`: command → why no test can run it here (hardware, a cluster, package installation), and
  which test checks the nearest thing.

The tests are checked by parsing their modules (no import): the named function must exist, and its module
must pass the same subcommand and options to the CLI, or run the README's own lines (``readme_commands``).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from itertools import takewhile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

E2E = "tests/training/test_train_e2e.py"
FAMILIES = "tests/training/test_train_families.py::test_train_on_synthetic_look_alike_beats_trivial_baselines"
FAMILY_CHECK = "tests/test_readme_commands.py::test_data_synth_and_check_of_every_family"
JOBLIB_SWEEP = "tests/training/test_sweeps.py::test_joblib_sweep_of_2_models_by_2_folds_is_one_parent_run_on_sqlite"
TABLE4 = "tests/test_reproduce.py::test_table4_reproduces_end_to_end_on_synthetic_data_with_the_tiny_schedule"
CUSTOM = "tests/challenges/test_custom_edition.py"
MLFLOW_UI = ("tests/tracking/test_mlflow_ui.py::"
             "test_a_sweep_shows_its_runs_tags_and_headline_metrics_in_the_mlflow_runs_table")
TRAIN_3D = "tests/training/test_train_3d.py"
DOU_CASCADE = f"{TRAIN_3D}::test_dou_cascade_on_valdo2021_beats_a_trivial_labelling_and_mines_hard_negatives"
SCALE = "tests/training/test_scale.py"
SERVER = "tests/tracking/test_tracking_server.py"
TRAINER_CHOICES = "test_scale.py::test_trainer_choices_compose_to_lightning_trainers composes it"

COVERED: dict[str, str] = {
    # `make demo` = set-up + `brainbench train` (the embedded default), which this test runs
    "make demo": f"{E2E}::test_default_run_reaches_a_dice_floor",
    "brainbench data list":
        "tests/test_data_check.py::test_data_check_clean_tree_exits_zero_and_list_names_every_edition",
    # 1 case at 4 mm instead of 10 at the default spacing
    "brainbench data synth --challenge isles2022 --cases 10": FAMILY_CHECK,
    "brainbench train": f"{E2E}::test_default_run_reaches_a_dice_floor",
    # the families' tests: a quarter-width DeepMedic, 4 cases, 3 epochs (so below for every `challenge=`)
    "brainbench train challenge=mrbrains13": FAMILIES,
    "brainbench train model=havaei_twopath":
        "tests/training/test_train_2d.py::test_model_trains_and_beats_constant_background_on_wt_dice",
    "brainbench train model=deepmedic_plus postprocess=crf crf=brats loss=ce_dice":
        f"{TRAIN_3D}::test_deepmedic_plus_with_the_crf_and_ce_dice_beats_a_trivial_labelling",
    "brainbench train challenge=mrbrains13 model=unet3d":
        f"{TRAIN_3D}::test_unet3d_on_mrbrains13_beats_a_trivial_labelling",
    "brainbench train challenge=msseg2016 model=brosch_cen":
        f"{TRAIN_3D}::test_brosch_cen_with_the_sensitivity_specificity_loss_beats_a_trivial_labelling",
    "brainbench train challenge=valdo2021 model=dou_cascade challenge.adapter.modalities=[t2s]": DOU_CASCADE,
    # seeds 0,1 of the tiny DeepMedic
    "brainbench train -m seed=1,2,3": MLFLOW_UI,
    # model=deepmedic,deepmedic_plus fold=0,1 (unet3d's smallest schedule is slower than both together)
    "brainbench train -m model=deepmedic,unet3d fold=0,1,2 hydra/launcher=joblib": JOBLIB_SWEEP,
    "brainbench reproduce akkus2017-table4 --data synthetic --schedule tiny --folds 2": TABLE4,
    "brainbench train --cfg job": "tests/test_config.py::test_outside_the_repository_with_a_user_config_folder",
    # reproduce runs `train -m experiment=kamnitsas2017_brats2015_crf fold=0,1` on the tiny schedule, synthetic data
    "brainbench train experiment=kamnitsas2017_brats2015_crf data.root=datasets/brats2015": TABLE4,
    "brainbench leaderboard --experiment brats2020 --out leaderboard.md":
        f"{E2E}::test_leaderboard_command_reads_experiment",
    # "Challenge releases": data check on each family's look-alike written by `data synth` (4 mm, 1 case)
    "brainbench data check --challenge brats2020 --root datasets/brats2020": FAMILY_CHECK,
    "brainbench data check --challenge brats2015 --root datasets/brats2015": FAMILY_CHECK,
    "brainbench data check --challenge isles2022 --root datasets/isles2022": FAMILY_CHECK,
    "brainbench data check --challenge msseg2016 --root datasets/msseg2016": FAMILY_CHECK,
    "brainbench data check --challenge mrbrains13 --root datasets/mrbrains13": FAMILY_CHECK,
    "brainbench data check --challenge neobrains12_axial40 --root datasets/neobrains12": FAMILY_CHECK,
    "brainbench data check --challenge valdo2021 --root datasets/valdo2021": FAMILY_CHECK,
    "brainbench data check --challenge dou2016 --root datasets/dou2016": FAMILY_CHECK,
    # the release: synthetic cases without the generator's record, read as real
    "brainbench train challenge=brats2020 data=real data.root=datasets/brats2020":
        "tests/training/test_provenance.py::test_release_folder_trains_and_is_tagged_real",
    # data=real on a release folder is the BraTS test above; these run the edition on its synthetic look-alike
    "brainbench train challenge=isles2022 data=real data.root=datasets/isles2022": FAMILIES,
    "brainbench train challenge=msseg2016 data=real data.root=datasets/msseg2016": FAMILIES,
    "brainbench train challenge=mrbrains13 data=real data.root=datasets/mrbrains13": FAMILIES,
    "brainbench train challenge=neobrains12_axial40 data=real data.root=datasets/neobrains12": FAMILIES,
    "brainbench train challenge=valdo2021 data=real data.root=datasets/valdo2021 model=dou_cascade "
    "challenge.adapter.modalities=[t2s]": DOU_CASCADE,
    "brainbench models": "tests/test_cards.py::test_brainbench_models_cli",
    "brainbench models deepmedic_plus --markdown": "tests/test_cards.py::test_brainbench_models_cli",
    # folders pred/ and ref/ (flat) for teamA/ and the release
    "brainbench evaluate --challenge brats2020 --pred teamA/ --ref datasets/brats2020 --out teamA.csv":
        "tests/test_cli.py::test_evaluate_writes_long_csv_and_reports_bad_files",
    # five real BraTS 2020 algorithms as teams, their fusion as the flat reference
    "brainbench leaderboard --challenge brats2020 --ref datasets/brats2020 --submissions teamA/ teamB/ teamC/ "
    "--out-dir board/": "tests/evaluation/test_leaderboard.py::test_real_case_five_algorithms_leaderboard",
    # `mlflow ui` is MLflow's local `mlflow server`: the test serves the sweep's SQLite store and opens it in Chromium
    "mlflow ui --backend-store-uri sqlite:///mlflow.db": MLFLOW_UI,
    # the tiny DeepMedic at 4 mm
    "brainbench train quiet=true": MLFLOW_UI,  # its sweep runs quiet: no epoch line on screen, all in run.log
    "BRAINBENCH_QUIET=1 brainbench train": FAMILIES,  # every family's training runs so
    # 2 models × 2 folds × 1 seed
    "brainbench train -m model=deepmedic,unet3d fold=0,1,2,3,4 seed=0,1": JOBLIB_SWEEP,
    # a sweep of 3 epochs killed in epoch 2, launched again with resume=true
    "brainbench train -m model=deepmedic,unet3d fold=0,1,2 resume=true":
        "tests/training/test_resume.py::test_sigkill_during_epoch_2_resumes_into_the_same_run_with_identical_metrics",
    "brainbench train --from-run 3f2a…": f"{E2E}::test_a_rerun_from_the_logged_config_reproduces_every_test_metric",
    # new cases: the run's test case copied to a new folder
    "brainbench predict --run 3f2a… --input /data/new_cases --out segmentations/":
        f"{E2E}::test_predict_with_a_logged_run_reproduces_its_test_prediction",
    # helpers.SWEEP: hydra/launcher=joblib hydra.launcher.n_jobs=2 model=deepmedic,deepmedic_plus fold=0,1
    "brainbench train -m $SWEEP hydra/launcher=joblib hydra.launcher.n_jobs=2": JOBLIB_SWEEP,
    # seeds 1,2; skipped where the ray extra is not installed (it is not in CI's dev set)
    "brainbench train -m $SWEEP hydra/launcher=ray": f"{SCALE}::test_launcher_sweep_runs_both_jobs",
    # tests/servers.py: mlflow server on a temporary PostgreSQL 15 cluster, on 127.0.0.1 and a free port
    "mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri postgresql://USER@DBHOST/mlflow "
    "--artifacts-destination /shared/mlflow-artifacts":
        f"{SERVER}::test_parallel_jobs_lose_nothing_on_postgres_server",
    # the joblib launcher in place of SLURM, that server in place of HOST:5000
    "brainbench train -m model=deepmedic,unet3d fold=0,1,2 hydra/launcher=slurm logger.tracking_uri=http://HOST:5000":
        f"{SERVER}::test_joblib_sweep_of_2_models_by_2_folds_is_one_parent_run_on_postgres_server",
    # hydra.sweeper.n_trials=2 of one epoch each
    "brainbench train hparams_search=deepmedic_optuna": f"{SCALE}::test_optuna_sweep_maximises_what_train_returns",
    "brainbench train trainer=ddp_cpu": f"{SCALE}::test_ddp_on_two_cpu_processes_logs_one_run",
    "brainbench reproduce akkus2017-table4 --data synthetic --schedule tiny --folds 2 --seeds 0": TABLE4,
    # a store holding a run of real data and one of synthetic data
    "brainbench reproduce akkus2017-table4 --collect-only --data real":
        "tests/test_readme_commands.py::test_reproduce_collect_only_keeps_the_real_runs",
    # the cohort: four subjects made from the real MS case, on two oblique grids
    "brainbench data check --challenge myconf/challenge/my_cohort.yaml --root /data/my_cohort":
        f"{CUSTOM}::test_data_check_passes",
    "brainbench train --config-dir myconf challenge=my_cohort data=real data.root=/data/my_cohort":
        f"{CUSTOM}::test_train_and_evaluate_the_declared_cohort",
    "brainbench evaluate --challenge myconf/challenge/my_cohort.yaml --pred runs/.../predictions "
    "--ref /data/my_cohort": f"{CUSTOM}::test_train_and_evaluate_the_declared_cohort",
    # the README's own YAML declaration, three small subjects; --bootstrap 50 --workers 1 added
    "brainbench leaderboard --challenge myconf/challenge/my_cohort.yaml --ref /data/my_cohort --submissions a/ b/":
        "tests/test_readme_commands.py::test_leaderboard_of_the_readme_cohort_declaration",
}

SHELL: set[str] = {
    "source .venv/bin/activate",
    'SWEEP="model=deepmedic,unet3d fold=0,1,2,3,4 logger.experiment_name=cv"',
    "make test",  # runs this suite
    "pytest --nbmake notebooks/",  # the notebooks as test items, as `make test` runs them
}

NOT_RUN: dict[str, str] = {
    "pip install -e '.[optuna]'": "installs an extra; `make setup` installs CI's dev set, optuna included",
    "pip install -e '.[ray]'": "installs an extra that CI does not install (its pins conflict with joblib 1.6)",
    "pip install -e '.[postgres]'": "installs an extra; `make setup` installs CI's dev set, psycopg included",
    "brainbench train trainer.accelerator=gpu": f"needs a GPU; {TRAINER_CHOICES}",
    "brainbench train trainer=gpu": f"needs a GPU; {TRAINER_CHOICES}",
    "brainbench train trainer=ddp": f"needs GPUs (NCCL); {TRAINER_CHOICES}",
    "brainbench train trainer=ddp trainer.devices=4": f"needs 4 GPUs; {TRAINER_CHOICES}",
    "brainbench train -m $SWEEP hydra/launcher=slurm hydra.launcher.partition=gpu":
        "needs a SLURM cluster; test_scale.py composes the preset and runs the same jobs with submitit_local",
    "brainbench train -m $SWEEP hydra/launcher=ray hydra.launcher.ray.init.address=auto "
    "hydra.launcher.ray.remote.num_gpus=1": "needs a running Ray cluster with GPUs",
    "brainbench train hparams_search=deepmedic_optuna hydra.sweeper.n_trials=50 hydra/launcher=slurm "
    "hydra.sweeper.n_jobs=8": "needs a SLURM cluster; test_scale.py runs the search with 2 trials locally",
    "brainbench reproduce akkus2017-table4 --data real --folds 5 --seeds 0,1 --data-root brats2013=/data/BRATS2013 "
    "--data-root brats2015=/data/BRATS2015_Training --data-root isbi2015=/data/ISBI2015 "
    "--data-root miccai2008=/data/MICCAI2008 --data-root dou2016=/data/cmb-3dcnn-data trainer.accelerator=gpu":
        "needs five challenge releases and a GPU for days; test_reproduce.py checks its arguments and runs the "
        "tiny schedule",
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks of ``text``, in order, each once."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if command and command not in commands:
                commands.append(command)
    return commands


@cache
def module_tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(encoding="utf-8"))


def test_the_parser_joins_continuations_and_drops_comments():
    text = "x\n```bash\n# a comment\nbrainbench  train a=1 \\\n    b=2   # why\n\nmlflow ui   # /#/runs\n```\n"
    assert readme_commands(text) == ["brainbench train a=1 b=2", "mlflow ui"]


def test_every_readme_command_is_covered_listed_or_explained():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) > 40  # a parser that finds nothing would pass the rest vacuously
    unlisted = [c for c in commands if c not in COVERED and c not in SHELL and c not in NOT_RUN]
    assert not unlisted, "README commands without a test (list each in COVERED, SHELL or NOT_RUN):\n" + "\n".join(
        unlisted)


def test_every_listed_command_is_in_the_readme():
    commands = set(readme_commands(README.read_text(encoding="utf-8")))
    stale = [c for c in [*COVERED, *SHELL, *NOT_RUN] if c not in commands]
    assert not stale, "listed commands no longer in the README:\n" + "\n".join(stale)
    assert not set(COVERED) & set(NOT_RUN) and not set(COVERED) & SHELL and not set(NOT_RUN) & SHELL


def cli_words(path: str) -> set[str]:
    """Every whitespace-separated word of the string constants (f-string parts too) of the test module and of
    tests/helpers.py, where the shared CLI argument lists live."""
    trees = (module_tree(path), module_tree("tests/helpers.py"))
    return {word for tree in trees for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) for word in node.value.split()}


@pytest.mark.parametrize("command", sorted(COVERED))
def test_the_mapped_test_exists_and_runs_the_same_subcommand(command):
    path, name = COVERED[command].split("::")
    assert (ROOT / path).is_file(), f"{command}: {path} does not exist"
    tree = module_tree(path)
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert name in functions, f"{command}: {path} defines no {name}"
    words = command.split()
    runs_the_readme = any(isinstance(node, ast.Name) and node.id == "readme_commands" for node in ast.walk(tree))
    if words[0] == "brainbench" and not runs_the_readme:  # the subcommand, its positionals and every option
        leading = takewhile(lambda word: not word.startswith("-") and "=" not in word, words[1:])
        wanted = [*leading, *(word for word in words if word.startswith("-"))]
        missing = [word for word in wanted if word not in cli_words(path)]
        assert not missing, f"{command}: {path} never passes {missing}"


def test_the_model_table_has_every_model_with_its_parameter_counts():
    """The README's summary of the cards: one row per shipped model config, with the parameter counts of the
    module its card describes (built here as test_cards.py builds it; imported here only)."""
    from brainbench.cards import parameter_counts
    from tests.test_cards import FRESH

    section = README.read_text(encoding="utf-8").split("\n## Models\n")[1].split("\n## ")[0]
    rows = {match[1]: (match[2], match[3]) for match in re.finditer(
        r"^\| `(\w+)` \|.*\| ([\d,]+ \([\d,]+\)) \| ([^|]+) \|$", section, flags=re.MULTILINE)}
    assert sorted(rows) == sorted(path.stem for path in (ROOT / "conf" / "model").glob("*.yaml"))
    for name, (cell, reconstructed) in rows.items():
        counts = parameter_counts(FRESH[name]())
        actual, paper = counts["model/parameters_actual"], counts["model/parameters_paper_convention"]
        assert cell == f"{actual:,} ({paper:,})", name
        listed = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").card.reconstructions
        assert reconstructed.strip() == (str(len(listed)) if listed else "none"), name
