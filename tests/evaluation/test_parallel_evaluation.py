"""Parallel scoring (``workers=2``, a spawn pool) gives exactly the serial tables and problem lines.

Eight small cases cut from the real BraTS masks of TCGA-DU-7294 (downsampled tumour box, perturbed so
that every case differs), written as real NIfTI files, with planted faults: a missing prediction, a
corrupt gzip file, a disallowed label, a float32 and an uncompressed int16 prediction (read by the
slow path) and a file matching no case. No timings here: see benchmarks/bench_evaluate_scale.py.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from brainbench.errors import BrainbenchConfigError, BrainbenchDataError
from brainbench.evaluation.evaluate import evaluate_case, evaluate_folders, evaluate_submissions
from brainbench.evaluation.protocols import PROTOCOLS
from brainbench.io import load_label
from tests.helpers import REAL_DATA

REAL_CASE = REAL_DATA / "brats_toolkit_TCGA-DU-7294" / "TCGA-DU-7294_brainles"
PROTOCOL = PROTOCOLS["brats-legacy-2017-2021"]
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
LABELS = {0, 1, 2, 4}
CASES = [f"BraTS2021_{i:05d}" for i in range(8)]
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # every second voxel of the 1 mm grid


def real_masks() -> list[np.ndarray]:
    paths = sorted((REAL_CASE / "segmentation").glob("*.nii.gz")) + [REAL_CASE / "fusion" / "mav.nii.gz"]
    return [np.asarray(nib.load(path).dataobj, dtype=np.uint8)[60:140:2, 56:146:2, 80:146:2] for path in paths]


def perturbed(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flipped, shifted, grown or shrunk, with an enhancing rim of random width (labels 0/1/2/4)."""
    mask = np.roll(mask[::-1] if rng.random() < 0.5 else mask, tuple(rng.integers(-3, 4, size=3)), axis=(0, 1, 2))
    whole, core = mask > 0, np.isin(mask, (1, 4))
    grow = int(rng.integers(-1, 2))
    if grow:
        whole = (ndimage.binary_dilation if grow > 0 else ndimage.binary_erosion)(whole)
    labels = np.where(whole, 2, 0).astype(np.uint8)
    labels[core & whole] = 1
    rim = core & whole & ~ndimage.binary_erosion(core, iterations=int(rng.integers(1, 3)))
    labels[rim] = 4 if rng.random() < 0.8 else 1
    return labels


def write(path: Path, labels: np.ndarray, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(dtype), AFFINE), str(path))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """``ref/``, team folders ``alpha/`` and ``beta/`` with planted faults; the references mapping."""
    root = tmp_path_factory.mktemp("parallel")
    masks = real_masks()
    rng = np.random.default_rng(2021)
    references = {}
    for index, case in enumerate(CASES):
        ref = perturbed(masks[index % len(masks)], rng)
        references[case] = write(root / "ref" / f"{case}.nii.gz", ref)
        for team in ("alpha", "beta"):
            write(root / team / f"{case}.nii.gz", perturbed(ref, rng))
    alpha, beta = root / "alpha", root / "beta"
    (alpha / f"{CASES[1]}.nii.gz").unlink()  # missing
    (alpha / f"{CASES[3]}.nii.gz").write_bytes(gzip.compress(bytes(1000))[:40] + b"corrupt")
    bad = np.asarray(nib.load(alpha / f"{CASES[5]}.nii.gz").dataobj)
    bad[0, 0, 0] = 3
    write(alpha / f"{CASES[5]}.nii.gz", bad)  # label 3 is not allowed
    write(alpha / "BraTS2021_99999.nii.gz", bad)  # matches no reference
    as_float = np.asarray(nib.load(beta / f"{CASES[2]}.nii.gz").dataobj)
    write(beta / f"{CASES[2]}.nii.gz", as_float, dtype=np.float32)  # read by load_label itself
    uncompressed = np.asarray(nib.load(beta / f"{CASES[6]}.nii.gz").dataobj)
    (beta / f"{CASES[6]}.nii.gz").unlink()
    write(beta / f"{CASES[6]}.nii", uncompressed, dtype=np.int16)
    (beta / f"{CASES[0]}.nii.gz").unlink()  # missing
    return {"root": root, "references": references, "teams": [alpha, beta]}


def assert_same(serial, parallel) -> None:
    pd.testing.assert_frame_equal(serial.metrics, parallel.metrics, check_exact=True)
    assert serial.metrics["value"].to_numpy().tobytes() == parallel.metrics["value"].to_numpy().tobytes()
    assert serial.problems == parallel.problems


def test_folder_two_workers_equal_serial(folders):
    alpha = folders["teams"][0]
    serial = evaluate_folders(alpha, folders["references"], REGIONS, PROTOCOL, LABELS)
    parallel = evaluate_folders(alpha, folders["references"], REGIONS, PROTOCOL, LABELS, workers=2)
    assert_same(serial, parallel)
    assert list(serial.metrics["case"].unique()) == CASES
    assert len(serial.metrics) == len(CASES) * len(REGIONS) * len(PROTOCOL.metrics)
    expected = [f"{CASES[1]}.nii.gz: no prediction", f"{CASES[3]}.nii.gz: not a readable NIfTI file",
                f"{CASES[5]}.nii.gz: label values [3] are not allowed", "BraTS2021_99999.nii.gz: matches no reference"]
    assert len(serial.problems) == len(expected)
    assert all(text in line for text, line in zip(expected, serial.problems)), serial.problems


def test_sound_cases_score_as_from_load_label(folders):
    """The fast label reader of the evaluation gives the values of ``load_label`` arrays."""
    beta = folders["teams"][1]
    result = evaluate_folders(beta, folders["references"], REGIONS, PROTOCOL, LABELS)
    values = result.metrics.set_index(["case", "region", "metric"])["value"]
    for case in CASES[1:]:
        ref, grid = load_label(folders["references"][case], allowed=LABELS)
        pred_path = beta / f"{case}.nii.gz"
        pred, _ = load_label(pred_path if pred_path.exists() else beta / f"{case}.nii", allowed=LABELS)
        for row in evaluate_case(pred, ref, grid.spacing, REGIONS, PROTOCOL):
            assert values[(case, row["region"], row["metric"])] == row["value"], (case, row)
    assert values[(CASES[0], "WT", "dice")] == 0.0  # missing: scored as empty


def test_submissions_one_pool_equal_serial(folders):
    teams = folders["teams"]
    serial = evaluate_submissions(teams, folders["references"], REGIONS, PROTOCOL, LABELS)
    parallel = evaluate_submissions(teams, folders["references"], REGIONS, PROTOCOL, LABELS, workers=2, progress=True)
    assert_same(serial, parallel)
    assert list(serial.metrics.columns) == ["team", "case", "region", "metric", "value"]
    assert list(serial.metrics["team"].unique()) == ["alpha", "beta"]
    for team in teams:  # team by team, exactly the single-folder result
        alone = evaluate_folders(team, folders["references"], REGIONS, PROTOCOL, LABELS)
        rows = serial.metrics[serial.metrics["team"] == team.name].drop(columns="team").reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, alone.metrics, check_exact=True)
        assert [p for p in serial.problems if p.startswith(f"team {team.name}: ")] == [
            f"team {team.name}: {problem}" for problem in alone.problems
        ]


def test_reference_error_in_a_worker_is_raised_as_serially(folders, tmp_path):
    references = dict(folders["references"])
    broken = np.asarray(nib.load(references[CASES[4]]).dataobj)
    broken[1, 1, 1] = 3
    references[CASES[4]] = write(tmp_path / f"{CASES[4]}.nii.gz", broken)
    messages = []
    for workers in (1, 2):
        with pytest.raises(BrainbenchDataError) as raised:
            evaluate_folders(folders["teams"][0], references, REGIONS, PROTOCOL, LABELS, workers=workers)
        messages.append(str(raised.value))
    assert messages[0] == messages[1] and "label values [3] are not allowed" in messages[0]


def test_no_progress_output_off_a_terminal(folders, capfd):
    """The bar is drawn only on a terminal (brainbench.progress.track, tested in tests/test_progress.py)."""
    alpha = folders["teams"][0]
    for progress in (False, True):
        evaluate_folders(alpha, folders["references"], REGIONS, PROTOCOL, LABELS, progress=progress)
        assert capfd.readouterr() == ("", "")


def test_workers_import_no_torch(folders, tmp_path):
    """Run with workers=2 in a fresh interpreter where importing torch leaves a mark (and fails)."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    (fake / "__init__.py").write_text(
        f"import os\nopen(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\n"
        "raise ImportError('torch must not be imported by the evaluation')\n"
    )
    script = textwrap.dedent(f"""
        import json, sys
        from brainbench.evaluation.evaluate import evaluate_folders
        from brainbench.evaluation.protocols import PROTOCOLS

        if __name__ == "__main__":
            references = {json.dumps({case: str(path) for case, path in folders["references"].items()})}
            result = evaluate_folders({str(folders["teams"][1])!r}, references, {REGIONS!r},
                                      PROTOCOLS["brats-legacy-2017-2021"], {LABELS!r}, workers=2)
            forbidden = sorted(name for name in sys.modules
                               if name.split(".")[0] == "torch"
                               or name.startswith(("brainbench.models", "brainbench.training", "brainbench.tracking")))
            print(json.dumps({{"rows": len(result.metrics), "forbidden": forbidden}}))
    """)
    paths = [str(fake.parent), str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"rows": len(CASES) * len(REGIONS) * len(PROTOCOL.metrics), "forbidden": []}
    assert list(marks.iterdir()) == []


def test_workers_must_be_positive(folders):
    with pytest.raises(BrainbenchConfigError, match="workers"):
        evaluate_folders(folders["teams"][0], folders["references"], REGIONS, PROTOCOL, LABELS, workers=0)
