"""Preprocessing stages on small real volumes (the MNI152 template and the MS case, downsampled)."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brainbench.challenges import ChallengeAdapter
from brainbench.data.cache import PreprocessedCache
from brainbench.io import Grid, load_label, load_volume, read_grid, save_volume
from brainbench.data.preprocess import (CaseArrays, CurvatureFlowDenoising, HistogramStandardization,
                                        N4BiasCorrection, PercentileClip, Pipeline, ResampleSpacing, SkullStrip,
                                        ZScoreInBrain, load_case)
from brainbench.data.registration import register, resample
from brainbench.errors import BrainbenchDataError
from tests.helpers import REAL_DATA, write_brats_case

MNI_T1 = REAL_DATA / "mni_icbm152_2009a_nilearn" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MS = REAL_DATA / "ms_lesion_ljubljana_patient19"


def downsampled(path, factor: int) -> tuple[np.ndarray, Grid]:
    """A real volume on a grid ``factor`` times coarser (same field of view and orientation)."""
    image, grid = load_volume(path)
    affine = grid.affine.copy()
    affine[:3, :3] *= factor
    target = Grid(shape=tuple(int(s) // factor for s in grid.shape), affine=affine)
    return resample(image, grid, target), target


@pytest.fixture(scope="module")
def mni3():
    return downsampled(MNI_T1, 3)


def rotation(degrees: float, translation) -> np.ndarray:
    theta = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    matrix[:3, 3] = translation
    return matrix


def test_registration_recovers_a_known_rigid_transform_within_one_voxel(mni3):
    image, grid = mni3
    known = rotation(6.0, [4.0, -3.0, 5.0])
    moved = resample(image, grid, grid, "linear", known)  # moved(p) = image(known p)
    found = register(moved, grid, image, grid, "rigid")
    brain = np.argwhere(image > 0.1 * image.max())
    points = grid.affine @ np.c_[brain, np.ones(len(brain))].T
    error_mm = np.linalg.norm((found @ points - known @ points)[:3], axis=0)
    assert error_mm.max() < min(grid.spacing)


def test_geometry_is_preserved_when_written_back(tmp_path):
    """LAS real case → resampled to 4 mm → label carried back lands on the exact original grid."""
    adapter = ChallengeAdapter("brats2020")
    flair, grid = load_volume(MS / "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz")
    lesion, _ = load_label(MS / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz")
    crop = (slice(40, 140), slice(60, 160), slice(50, 130))
    origin = grid.affine @ np.array([40, 60, 50, 1.0])
    affine = grid.affine.copy()
    affine[:3, 3] = origin[:3]
    cgrid = Grid(shape=flair[crop].shape, affine=affine)
    case_id = "BraTS20_Training_001"
    folder = tmp_path / "root" / case_id
    for modality in ("flair", "t1", "t1ce", "t2"):
        save_volume(flair[crop], cgrid, folder / f"{case_id}_{modality}.nii.gz", dtype=np.float32)
    save_volume((lesion[crop] > 0).astype(np.uint8) * 2, cgrid, folder / f"{case_id}_seg.nii.gz", dtype=np.uint8)
    case = adapter.discover(tmp_path / "root")[0]
    cache = PreprocessedCache(tmp_path / "cache", Pipeline([ResampleSpacing([2.0, 2.0, 2.0]), ZScoreInBrain()]))
    entry = cache.load(case, adapter)
    assert entry.array_grid.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert entry.image.shape[1:] == entry.array_grid.shape == (50, 50, 40)
    back = entry.to_case_grid(adapter.edition.decode_labels(entry.label))
    written = save_volume(back, entry.grid, tmp_path / "pred.nii.gz", dtype=np.uint8)
    assert read_grid(written).matches(cgrid) and nib.load(str(written)).shape == cgrid.shape
    reference = lesion[crop] > 0
    dice = 2 * (reference & (back == 2)).sum() / (reference.sum() + (back == 2).sum())
    assert dice > 0.75


def test_n4_removes_a_synthetic_bias_field(mni3):
    image, grid = mni3
    brain = image > 0.05 * image.max()
    x = np.linspace(-1, 1, image.shape[0])[:, None, None]
    z = np.linspace(-1, 1, image.shape[2])[None, None, :]
    bias = np.broadcast_to(np.exp(0.35 * x + 0.2 * z ** 2), image.shape).astype(np.float32)
    arrays = CaseArrays(images=(image * bias)[None].astype(np.float32), modalities=("t1",), grid=grid, brain=brain)
    corrected = N4BiasCorrection(shrink_factor=2)(arrays).images[0]
    residual_before = np.log(image[brain] * bias[brain] / image[brain]).std()
    residual_after = np.log(corrected[brain] / image[brain]).std()
    assert residual_after < 0.5 * residual_before


def test_nyul_learns_on_train_cases_and_maps_their_landmarks(mni3, tmp_path):
    image, grid = mni3
    brain = image > 0.05 * image.max()

    def scanner(gain, offset, power):
        return CaseArrays(images=(offset + gain * image ** power)[None].astype(np.float32) * brain,
                          modalities=("t1",), grid=grid, brain=brain)

    nyul = HistogramStandardization()
    nyul.fit(scanner(g, o, p) for g, o, p in [(1.0, 10.0, 1.0), (2.0, 5.0, 1.1), (0.7, 30.0, 0.9)])
    landmarks = np.asarray(nyul.landmarks["t1"])
    assert landmarks[0] == pytest.approx(0.0) and landmarks[-1] == pytest.approx(100.0)
    unseen = nyul(scanner(3.5, 50.0, 1.05)).images[0][brain]
    quantiles = [0.01, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.99]  # TorchIO's landmarks
    np.testing.assert_allclose(np.quantile(unseen, quantiles), landmarks, atol=2.5)


def test_percentile_clip_and_skull_strip_keep_the_brain(mni3):
    image, grid = mni3
    arrays = SkullStrip(method="auto")(CaseArrays(image[None], ("t1",), grid))
    assert arrays.brain.sum() == (image != 0).sum()
    clipped = PercentileClip(1.0, 99.0)(arrays).images[0][arrays.brain]
    assert clipped.max() <= np.percentile(image[arrays.brain], 99.0) + 1e-3
    assert clipped.min() >= np.percentile(image[arrays.brain], 1.0) - 1e-3


def test_curvature_flow_reduces_rician_noise(mni3):
    """A 3-class phantom on the template's brain with Rician noise (σ = 10 on tissue levels 60–160)."""
    image, grid = mni3
    rng = np.random.default_rng(0)
    brain = image > 0.05 * image.max()
    classes = (np.digitize(image, np.percentile(image[brain], [33, 66])) + 1) * brain
    phantom = np.array([0.0, 60.0, 110.0, 160.0], np.float32)[classes]
    noisy = np.hypot(phantom + rng.normal(0, 10, image.shape), rng.normal(0, 10, image.shape)) * brain
    arrays = CaseArrays(noisy[None].astype(np.float32), ("t1",), grid, brain=brain)
    smooth = CurvatureFlowDenoising(iterations=5)(arrays).images[0]
    interior = brain & (ndimage.minimum_filter(classes, 3) == ndimage.maximum_filter(classes, 3))
    assert np.abs(smooth - phantom)[interior].mean() < 0.6 * np.abs(noisy - phantom)[interior].mean()
    assert (smooth[~brain] == 0).all()


def test_template_skull_strip_finds_the_brain(mni3):
    image, grid = mni3
    shifted = resample(image, grid, grid, "linear", rotation(4.0, [3.0, 2.0, -4.0]))
    arrays = SkullStrip(method="template")(CaseArrays(shifted[None], ("t1",), grid))
    truth = shifted > 0.1 * shifted.max()
    dice = 2 * (truth & arrays.brain).sum() / (truth.sum() + arrays.brain.sum())
    assert dice > 0.85 and (arrays.images[0][~arrays.brain] == 0).all()


def multigrid_tree(root, case_id="BraTS20_Training_001"):
    """A case whose t2 lies on a 2× coarser grid over the same field of view."""
    folder = write_brats_case(root, case_id, shape=(24, 24, 20))
    t1, grid = load_volume(folder / f"{case_id}_t1.nii.gz")
    coarse = Grid(shape=(12, 12, 10), affine=np.diag([2.0, 2.0, 2.0, 1.0]) @ np.eye(4))
    coarse.affine[:3, 3] = 0.5
    save_volume(resample(t1, grid, coarse), coarse, folder / f"{case_id}_t2.nii.gz", dtype=np.float32)
    return root


def test_multigrid_cases_are_resampled_onto_the_reference_channel(tmp_path):
    root = multigrid_tree(tmp_path / "root")
    adapter = ChallengeAdapter("brats2020")
    case = adapter.discover(root)[0]
    with pytest.raises(BrainbenchDataError, match="does not match"):
        load_case(case, adapter)
    adapter.edition = replace(adapter.edition, reference_grid="t1")
    arrays = load_case(case, adapter)
    assert arrays.images.shape == (4, 24, 24, 20) and arrays.grid.matches(read_grid(case.images["t1"]))
    t1, t2 = arrays.images[1], arrays.images[3]
    inner = (slice(6, 18),) * 2 + (slice(6, 14),)
    assert np.corrcoef(t1[inner].ravel(), t2[inner].ravel())[0, 1] > 0.3
    assert arrays.label.shape == (24, 24, 20)


def pereira_like() -> Pipeline:
    return Pipeline([N4BiasCorrection(shrink_factor=2, iterations=[10, 10]), HistogramStandardization(),
                     ZScoreInBrain()])


def test_pipeline_cache_second_run_reads_no_nifti_and_later_stage_reuses_earlier(brats_tree, tmp_path,
                                                                                 nifti_loads):  # noqa: F811
    adapter = ChallengeAdapter("brats2020")
    cases = adapter.discover(brats_tree)
    first = PreprocessedCache(tmp_path / "cache", pereira_like())
    first.fit(cases[:2], adapter)
    entries = [first.load(case, adapter) for case in cases]
    assert nifti_loads
    nifti_loads.clear()
    second = PreprocessedCache(tmp_path / "cache", pereira_like())
    second.fit(cases[:2], adapter)
    again = [second.load(case, adapter) for case in cases]
    assert nifti_loads == []
    for a, b in zip(entries, again):
        np.testing.assert_array_equal(a.image, b.image)
    clipped = Pipeline([*pereira_like().stages[:2], ZScoreInBrain(clip_sigma=2.0)])
    third = PreprocessedCache(tmp_path / "cache", clipped)
    third.fit(cases[:2], adapter)
    assert np.abs(third.load(cases[2], adapter).image).max() <= 2.0
    assert nifti_loads == []  # N4 output and landmarks came from the cache


def test_learned_landmarks_are_part_of_the_key(brats_tree, tmp_path):
    adapter = ChallengeAdapter("brats2020")
    cases = adapter.discover(brats_tree)
    one, two = PreprocessedCache(tmp_path / "c", pereira_like()), PreprocessedCache(tmp_path / "c", pereira_like())
    one.fit(cases[:1], adapter)
    two.fit(cases[1:], adapter)
    assert one.key(cases[0], adapter) != two.key(cases[0], adapter)
    assert one.preprocessor.stages[1].landmarks != two.preprocessor.stages[1].landmarks


@pytest.mark.parametrize("name", ["deepmedic", "pereira2016", "havaei2017", "full"])
def test_presets_compose_with_hydra(name):
    from brainbench.config import compose
    from hydra.utils import instantiate

    
    pipeline = instantiate(compose([f"preprocess={name}"]).preprocess)
    assert isinstance(pipeline, Pipeline) and all(hasattr(stage, "cached") for stage in pipeline.stages)
    assert json.loads(json.dumps(pipeline.config())) == pipeline.config()
    if name == "deepmedic":
        assert pipeline.config() == Pipeline([ZScoreInBrain()]).config()
    if name == "full":
        names = {stage["name"] for stage in pipeline.config()["stages"]}
        assert names == {"CoRegister", "RegisterToTemplate", "SkullStrip", "N4BiasCorrection", "CurvatureFlowDenoising",
                         "ResampleSpacing", "PercentileClip", "HistogramStandardization", "ZScoreInBrain"}
