"""A user's own cohort declared in YAML: data check, training and evaluation through the real CLI.

The cohort is built from the real MS case in ../shared/data/real: four subjects (the patient, flipped
and shifted), a T1 on one oblique 3 mm grid and a FLAIR on another oblique grid with 2.5×2.5×4 mm
voxels, the lesion mask on the T1 grid (the declared reference channel).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from tests.helpers import REAL_DATA
from tests.helpers import TINY_DEEPMEDIC, run_cli

MS_CASE = REAL_DATA / "ms_lesion_ljubljana_patient19"
TINY = [*(o for o in TINY_DEEPMEDIC if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=1"]

DECLARATION = """\
    # challenge/my_cohort.yaml in the user's config folder
    defaults: [custom, _self_]
    declaration:
      name: my_cohort
      cases: "sub-*"
      channels:
        t1: "anat/{case}_T1w.nii.gz"
        flair: "anat/{case}_FLAIR.nii.gz"
      label: "{root}/derivatives/{case}/{case}_lesion.nii.gz"
      label_values: [0, 1]
      regions: {lesion: [1]}
      reference_grid: t1
      protocol: isles-2022
      ranking: isles2022-mean-rank
"""


def _oblique_affine(spacing, degrees, axis) -> np.ndarray:
    """Voxel axes rotated by ``degrees`` about world ``axis``, voxel size ``spacing`` (mm); origin set later."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler(axis, degrees, degrees=True).as_matrix() @ np.diag(spacing)
    return affine


def _resample(image: nib.Nifti1Image, affine: np.ndarray, shape, order: int) -> np.ndarray:
    """``image`` sampled on the grid (``affine``, ``shape``), centred on the image's own centre."""
    source_centre = image.affine @ np.append((np.array(image.shape) - 1) / 2, 1)
    target = affine.copy()
    target[:3, 3] = source_centre[:3] - target[:3, :3] @ ((np.array(shape) - 1) / 2)
    voxel_to_source = np.linalg.inv(image.affine) @ target
    data = ndimage.affine_transform(np.asarray(image.dataobj, dtype=np.float32), voxel_to_source[:3, :3],
                                    voxel_to_source[:3, 3], output_shape=shape, order=order)
    return data, target


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "my_cohort"
    t1 = nib.load(MS_CASE / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz")
    flair = nib.load(MS_CASE / "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz")
    mask = nib.load(MS_CASE / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz")
    t1_grid = _oblique_affine((3.0, 3.0, 3.0), 12, "z")
    flair_grid = _oblique_affine((2.5, 2.5, 4.0), -9, "x")
    for index in range(4):
        subject = f"sub-{index + 1:02d}"
        t1_data, t1_affine = _resample(t1, t1_grid, (56, 66, 52), 1)
        flair_data, flair_affine = _resample(flair, flair_grid, (68, 80, 40), 1)
        mask_data, _ = _resample(mask, t1_grid, (56, 66, 52), 0)
        if index % 2:  # a second "subject": the same brain mirrored left-right
            t1_data, mask_data, flair_data = t1_data[::-1], mask_data[::-1], flair_data[::-1]
        shift = np.eye(4)
        shift[:3, 3] = (index * 2.0, -index * 1.5, index * 1.0)
        for array, affine, name in ((t1_data, shift @ t1_affine, f"anat/{subject}_T1w.nii.gz"),
                                    (flair_data, shift @ flair_affine, f"anat/{subject}_FLAIR.nii.gz")):
            (root / subject / name).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(array, dtype=np.float32), affine), root / subject / name)
        label = root / "derivatives" / subject / f"{subject}_lesion.nii.gz"
        label.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(mask_data > 0.5, dtype=np.uint8), shift @ t1_affine), label)
    return root


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("myconf")
    (folder / "challenge").mkdir()
    (folder / "challenge" / "my_cohort.yaml").write_text(textwrap.dedent(DECLARATION))
    return folder


def test_the_cohort_has_channels_on_different_oblique_grids(cohort):
    t1 = nib.load(cohort / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    flair = nib.load(cohort / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    assert t1.shape != flair.shape
    for image in (t1, flair):
        assert np.count_nonzero(np.abs(image.affine[:3, :3]) > 1e-3) > 3  # rotated, not axis-aligned


def test_data_check_passes(cohort, config_dir, tmp_path):
    result = run_cli("data", "check", "--challenge", str(config_dir / "challenge" / "my_cohort.yaml"),
                     "--root", str(cohort), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 cases, 0 problems" in result.stdout


def test_a_broken_declaration_is_one_line(config_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("declaration:\n  name: x\n  cases: '*'\n")
    result = run_cli("data", "check", "--challenge", str(bad), "--root", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "missing keys ['channels', 'label'" in result.stderr


@pytest.mark.slow
def test_train_and_evaluate_the_declared_cohort(cohort, config_dir, tmp_path):
    result = run_cli("train", "--config-dir", str(config_dir), "challenge=my_cohort", "data=real",
                     f"data.root={cohort}", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "— my_cohort (isles-2022 protocol)" in result.stdout
    (predictions,) = list((tmp_path / "runs").rglob("predictions"))
    (case,) = [p.name.removesuffix(".nii.gz") for p in predictions.iterdir()]
    prediction = nib.load(predictions / f"{case}.nii.gz")
    reference = nib.load(cohort / case / "anat" / f"{case}_T1w.nii.gz")
    assert prediction.shape == reference.shape and np.allclose(prediction.affine, reference.affine)

    evaluated = run_cli("evaluate", "--challenge", str(config_dir / "challenge" / "my_cohort.yaml"),
                        "--pred", str(predictions), "--ref", str(cohort), "--out", "m.csv", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert set(metrics["metric"]) == {"dice", "volume_difference_ml", "lesion_count_difference", "lesion_f1"}
    scored = metrics[metrics["case"] == case].set_index("metric")["value"]
    (run_metrics,) = list((tmp_path / "runs").rglob("metrics.csv"))
    assert pd.read_csv(run_metrics).set_index("metric")["value"].to_dict() == pytest.approx(scored.to_dict())
