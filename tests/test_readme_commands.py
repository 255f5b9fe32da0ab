"""README commands no other test runs, run here through the real CLI as the README writes them.

- every family's `data check` of "Challenge releases", on a look-alike of 1 case at 4 mm written into the
  folder the README names (by `data synth` for ISLES 2022, by its generator in this process for the others);
- the README's quoted `data check` output on the real ISLES'22 and MS cases of ../shared/data/real;
- `leaderboard --submissions` with the README's own YAML declaration of a cohort;
- `reproduce --collect-only --data real` (its parser and handler, in this process) on a store that holds runs
  of real and of synthetic data;
"""

from __future__ import annotations

import re
import shlex

import nibabel as nib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from brainbench.challenges import get_edition
from brainbench.data.synth import synthesize
from brainbench.tracking.mlflow import ensure_experiment
from tests.helpers import REAL_DATA, run_cli, write_nifti
from tests.test_readme import README, ROOT, readme_commands
from tests.test_reproduce import log_run, rendered_rows, reproduce, training_tags

TEXT = README.read_text(encoding="utf-8")
FAMILY_CHECKS = [command for command in readme_commands(TEXT)
                 if re.fullmatch(r"brainbench data check --challenge \S+ --root datasets/\S+", command)]
MS_CASE = REAL_DATA / "ms_lesion_ljubljana_patient19"
MS_FILES = {"FLAIR": "FLAIR", "T1": "T1", "GADO": "T1POST", "T2": "T2"}
"""MSSEG 2016 channel file → the Ljubljana case's file prefix (the case has no PD image)."""


def readme_block(language: str, containing: str) -> str:
    """The README's one fenced block of ``language`` that contains ``containing``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", TEXT, re.MULTILINE | re.DOTALL)
    (block,) = [block for block in blocks if containing in block]
    return block


def brainbench(command: str, cwd, **kwargs):
    """A README command line (``brainbench ...``) through the real CLI."""
    return run_cli(*shlex.split(command.removeprefix("$ "))[1:], cwd=cwd, **kwargs)


def assert_quoted(lines: list[str], result) -> None:
    """Every quoted output line (after the ``$`` command line) is a line of what the command printed."""
    printed = {line.rstrip() for line in result.stdout.splitlines()}
    missing = [line for line in lines[1:] if line.rstrip() not in printed]
    assert not missing, f"README lines not printed: {missing}\n{result.stdout}"


def test_the_readme_has_a_check_per_family():
    families = {get_edition(c.split()[4]).challenge for c in FAMILY_CHECKS}
    assert families == {"brats", "isles", "msseg", "mrbrains", "neobrains", "microbleeds"}


@pytest.mark.parametrize("command", FAMILY_CHECKS)
def test_data_synth_and_check_of_every_family(command, tmp_path):
    edition, root = command.split()[4], command.split()[6]
    if edition == "isles2022":  # the README's `data synth --challenge isles2022 --cases 10`, with 1 case at 4 mm
        synth = run_cli("data", "synth", "--challenge", edition, "--cases", "1", "--spacing", "4", "--out", root,
                        cwd=tmp_path)
        assert synth.returncode == 0, synth.stderr[-2000:]
    else:
        synthesize(edition, tmp_path / root, n_cases=1, spacing_mm=4.0)
    result = brainbench(command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("1 cases, 0 problems")
    assert " ".join(get_edition(edition).modalities) in result.stdout  # the case row lists its channels


def test_the_quoted_check_of_the_real_isles22_case():
    lines = readme_block("text", "isles22_sub-strokecase0009").splitlines()
    result = brainbench(lines[0], cwd=ROOT)  # the README's relative path ../shared/data/real/...
    assert result.returncode == 0, result.stderr
    assert_quoted(lines, result)


def test_the_quoted_check_of_the_real_ms_case_without_pd(tmp_path):
    lines = readme_block("text", "missing dp channel").splitlines()
    patient = tmp_path / "Training" / "Center_01" / "Patient_01"
    (patient / "Preprocessed_Data").mkdir(parents=True)
    (patient / "Masks").mkdir()
    for channel, prefix in MS_FILES.items():
        (patient / "Preprocessed_Data" / f"{channel}_preprocessed.nii.gz").symlink_to(
            MS_CASE / f"{prefix}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz")
    (patient / "Masks" / "Consensus.nii.gz").symlink_to(
        MS_CASE / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz")
    result = brainbench(lines[0], cwd=tmp_path)
    assert result.returncode == 2
    assert_quoted(lines, result)


def write_cohort(root, n_subjects: int = 3) -> None:
    """Subjects ``sub-NN`` laid out as the README's declaration reads them: T1 and FLAIR of 16³ voxels and
    a lesion mask of a 4³ block (one voxel further along x per subject)."""
    rng = np.random.default_rng(0)
    for index in range(1, n_subjects + 1):
        case = f"sub-{index:02d}"
        for channel in ("T1w", "FLAIR"):
            image = rng.normal(size=(16, 16, 16)).astype(np.float32)
            write_nifti(root / case / "anat" / f"{case}_{channel}.nii.gz", image)
        label = np.zeros((16, 16, 16), np.uint8)
        label[4 + index:8 + index, 6:10, 6:10] = 1
        write_nifti(root / "derivatives" / case / f"{case}_lesion.nii.gz", label)


def test_leaderboard_of_the_readme_cohort_declaration(tmp_path):
    (tmp_path / "myconf" / "challenge").mkdir(parents=True)
    (tmp_path / "myconf" / "challenge" / "my_cohort.yaml").write_text(readme_block("yaml", "declaration:"))
    write_cohort(tmp_path / "my_cohort")
    for label in (tmp_path / "my_cohort" / "derivatives").rglob("*_lesion.nii.gz"):
        case = label.name.removesuffix("_lesion.nii.gz")
        exact = np.asarray(nib.load(label).dataobj)
        write_nifti(tmp_path / "a" / f"{case}.nii.gz", exact)             # team a: the reference itself
        write_nifti(tmp_path / "b" / f"{case}.nii.gz", np.roll(exact, 2, axis=1))  # team b: shifted by 2 voxels
    (command,) = [c for c in readme_commands(TEXT) if c.startswith("brainbench leaderboard --challenge myconf/")]
    # fewer bootstrap resamplings and no process pool: seconds instead of half a minute on two busy cores
    result = brainbench(command.replace("/data/my_cohort", "my_cohort") + " --bootstrap 50 --workers 1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()]
    assert {row[0]: row[2] for row in rows if row[:1] in (["a"], ["b"])} == {"a": "1", "b": "2"}, result.stdout


def test_reproduce_collect_only_keeps_the_real_runs(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the README command's default store, in its folder
    client = MlflowClient(tracking_uri=uri)
    table = ensure_experiment(uri, "akkus2017-table4")
    log_run(client, table, training_tags("brosch2016_isbi2015", "isbi2015", "real", 0),
            {"dice_lesion": 0.55, "n_test_cases": 4})
    log_run(client, table, training_tags("havaei2017_brats2013_inputcascade", "brats2013", "synthetic", 0),
            {"dice_complete": 0.7, "dice_core": 0.6, "dice_enhancing": 0.5, "n_test_cases": 2})
    (command,) = [c for c in readme_commands(TEXT) if c.startswith("brainbench reproduce") and "--collect-only" in c]
    monkeypatch.chdir(tmp_path)  # MLflow is imported here already: the subcommand's handler in this process
    assert reproduce(*shlex.split(command)[2:]) == 0
    header, rows = rendered_rows((tmp_path / "reproduce" / "akkus2017-table4" / "akkus2017-table4.md").read_text())
    reproduced = {row[0]: dict(zip(header, row))["Reproduced: mean±SD (n runs)"] for row in rows}
    assert "0.550" in reproduced["Brosch et al. 2016"] and "(1)" in reproduced["Brosch et al. 2016"]
    assert reproduced["Havaei et al. 2016"] == "not run"  # its only run is on synthetic data
