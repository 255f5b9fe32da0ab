"""Every Hausdorff/ASSD variant and volume metric against the implementation its challenge used.

Peers (test-only): DeepMind ``surface-distance`` (BraTS 2023 scorer), ``medpy.metric`` (BraTS legacy
reimplementation), ``monai.metrics``, SimpleITK (the MRBrainS18 script's erosion, ITK's Hausdorff filter).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance
import torch
from medpy.metric import binary as medpy_binary
from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance
from scipy.ndimage import gaussian_filter
from scipy.spatial import KDTree
from surface_distance import lookup_tables

from brainbench.evaluation import surface
from brainbench.evaluation.evaluate import evaluate_case
from brainbench.evaluation.overlap import (
    Confusion,
    absolute_volume_difference_ml,
    absolute_volume_difference_percent,
    precision,
    volume_difference_ratio,
    volumetric_similarity,
)
from brainbench.evaluation.protocols import (
    BRATS_2023,
    BRATS_LEGACY,
    METRIC_UNITS,
    MRBRAINS18,
    PROTOCOLS,
    Protocol,
)

ANISOTROPIC = (0.958, 0.958, 3.0)
SPACINGS = [(1.0, 1.0, 1.0), ANISOTROPIC, (0.5, 1.3, 2.1)]
NO_EMPTY = {"if_both_empty": -1.0, "if_one_empty": -2.0}
medpy_surface_distances = getattr(medpy_binary, "__surface_distances")


def blob(shape, seed: int, threshold: float) -> np.ndarray:
    return gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=1.5) > threshold


def blob_pair(seed: int, shape=(30, 26, 14), interior: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a, b = blob(shape, seed, 0.10), blob(shape, seed + 50, 0.12)
    if interior:  # off the array edge, so that the union box is smaller than the volume
        inside = np.zeros(shape, dtype=bool)
        inside[3:-3, 3:-3, 2:-2] = True
        a, b = a & inside, b & inside
    assert a.any() and b.any()
    return a, b


def hand_made_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    single_a = np.zeros((5, 5, 7), dtype=bool)
    single_b = single_a.copy()
    single_a[2, 2, 2] = True
    single_b[2, 3, 4] = True
    cube = np.zeros((12, 12, 8), dtype=bool)
    cube[2:7, 3:9, 1:5] = True
    shifted = np.roll(cube, 2, axis=0)
    edge = np.zeros((9, 9, 6), dtype=bool)
    edge[:4, :, :3] = True  # touches the array edge on four faces
    return [(single_a, single_b), (cube, shifted), (cube, cube), (edge, cube[:9, :9, :6])]


def torch_mask(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask[None, None].astype(np.float32))


def scores(pred: np.ndarray, ref: np.ndarray, protocol: Protocol, region: str = "r", regions=None) -> dict:
    """``metric → value`` of one region of :func:`evaluate_case` at the anisotropic spacing."""
    rows = evaluate_case(pred, ref, ANISOTROPIC, regions or {"r": (1,)}, protocol)
    return {row["metric"]: row["value"] for row in rows if row["region"] == region}


# -- surfel variant vs DeepMind surface-distance ---------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS)
def test_surfel_area_table_equals_deepmind(spacing):
    expected = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(surface._surfel_area_table(spacing), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_surfel_hd_and_average_equal_surface_distance(seed, spacing):
    a, b = blob_pair(seed, interior=seed % 2 == 1)
    reference = surface_distance.compute_surface_distances(a, b, spacing)
    for percentile in (95.0, 100.0, 50.0):
        expected = surface_distance.compute_robust_hausdorff(reference, percentile)
        ours = surface.robust_hausdorff(a, b, spacing, percentile=percentile, **NO_EMPTY)
        assert ours == pytest.approx(expected, abs=1e-6)
    expected_average = np.mean(surface_distance.compute_average_surface_distance(reference))
    assert surface.surfel_average_distance(a, b, spacing, **NO_EMPTY) == pytest.approx(expected_average, abs=1e-6)
    d_ab, area_a, d_ba, area_b = surface.surfel_distances(a, b, spacing)
    np.testing.assert_allclose(d_ab, reference["distances_gt_to_pred"], atol=1e-9)
    np.testing.assert_allclose(d_ba, reference["distances_pred_to_gt"], atol=1e-9)
    np.testing.assert_allclose(area_a, reference["surfel_areas_gt"], atol=1e-9)
    np.testing.assert_allclose(area_b, reference["surfel_areas_pred"], atol=1e-9)


@pytest.mark.parametrize("index", range(4))
def test_surfel_hand_made_masks_equal_surface_distance(index):
    a, b = hand_made_pairs()[index]
    reference = surface_distance.compute_surface_distances(a, b, ANISOTROPIC)
    expected = surface_distance.compute_robust_hausdorff(reference, 95)
    assert surface.robust_hausdorff(a, b, ANISOTROPIC, **NO_EMPTY) == pytest.approx(expected, abs=1e-6)


def test_surfel_single_voxels_by_hand():
    a, b = hand_made_pairs()[0]
    # voxel (2,2,2) has corners {2,3}³ and voxel (2,3,4) corners {2,3}×{3,4}×{4,5}; the farthest
    # corner of either, e.g. (·,2,2), is 1 step in y and 2 in z from the other's nearest corner
    expected = math.hypot(0.958, 2 * 3.0)
    assert surface.robust_hausdorff(a, b, ANISOTROPIC, percentile=100, **NO_EMPTY) == pytest.approx(expected)


def test_surfel_empty_masks_take_the_policy_values():
    a, _ = hand_made_pairs()[0]
    empty = np.zeros_like(a)
    assert surface.robust_hausdorff(empty, empty, ANISOTROPIC, if_both_empty=0.0, if_one_empty=374.0) == 0.0
    assert surface.robust_hausdorff(a, empty, ANISOTROPIC, if_both_empty=0.0, if_one_empty=374.0) == 374.0
    assert surface.robust_hausdorff(empty, a, ANISOTROPIC, if_both_empty=0.0, if_one_empty=374.0) == 374.0


# -- medpy voxel-boundary ASSD --------------------------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS[:2])
@pytest.mark.parametrize("seed", [4, 5])
def test_assd_equals_medpy(seed, spacing):
    a, b = blob_pair(seed, interior=seed == 5)
    ours = surface.average_symmetric_surface_distance(a, b, spacing, **NO_EMPTY)
    assert ours == pytest.approx(medpy_binary.assd(a, b, voxelspacing=spacing), abs=1e-6)


# -- MONAI: where its convention matches ours, and where it does not -------------------------------


@pytest.mark.parametrize("seed", [6, 7])
def test_monai_max_hd_and_symmetric_asd_equal_medpy_variant(seed):
    a, b = blob_pair(seed)
    monai_hd = compute_hausdorff_distance(torch_mask(b), torch_mask(a), directed=False, spacing=ANISOTROPIC)
    ours_hd = surface.hausdorff_distance(a, b, ANISOTROPIC, percentile=100.0, **NO_EMPTY)
    assert ours_hd == pytest.approx(monai_hd.item(), rel=1e-6)  # MONAI works in float32
    monai_asd = compute_average_surface_distance(torch_mask(b), torch_mask(a), symmetric=True, spacing=ANISOTROPIC)
    ours_asd = surface.average_symmetric_surface_distance(a, b, ANISOTROPIC, **NO_EMPTY)
    assert ours_asd == pytest.approx(monai_asd.item(), rel=1e-6)


def test_monai_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    """MONAI's HD95 takes the 95th percentile per direction and the max; medpy (BraTS legacy) pools."""
    a, b = blob_pair(1)
    monai_hd95 = compute_hausdorff_distance(
        torch_mask(b), torch_mask(a), percentile=95, directed=False, spacing=ANISOTROPIC
    ).item()
    d_ab, d_ba = surface.surface_distances(a, b, ANISOTROPIC)
    assert monai_hd95 == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), rel=1e-6)
    pooled = surface.hd95(a, b, ANISOTROPIC, **NO_EMPTY)
    assert abs(pooled - monai_hd95) > 0.05, "the two conventions give different HD95 on this pair"


def test_monai_gives_nan_where_protocols_give_values():
    a, _ = blob_pair(2)
    empty = np.zeros_like(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd = compute_hausdorff_distance(torch_mask(a), torch_mask(empty), percentile=95, spacing=ANISOTROPIC)
        monai_dice = DiceMetric(include_background=True, reduction="none")(torch_mask(empty), torch_mask(empty))
    assert math.isnan(monai_hd.item()) and math.isnan(monai_dice.item())
    labels = a.astype(np.uint8)
    legacy = scores(labels, np.zeros_like(labels), BRATS_LEGACY)
    assert legacy["hd95"] == pytest.approx(373.12866) and legacy["dice"] == 0.0
    assert scores(np.zeros_like(labels), np.zeros_like(labels), BRATS_LEGACY)["dice"] == 1.0


# -- K-th ranked (MRBrainS13), in-plane KD-tree (MRBrainS18), covalic (ISLES), ITK set HD (anima) -----


@pytest.mark.parametrize("seed", [8, 9])
def test_kth_ranked_hd95_by_its_definition(seed):
    a, b = blob_pair(seed)
    expected = 0.0
    for d in (medpy_surface_distances(a, b, ANISOTROPIC), medpy_surface_distances(b, a, ANISOTROPIC)):
        k = math.ceil(0.95 * len(d))
        expected = max(expected, sorted(d)[k - 1])
    assert surface.kth_ranked_hausdorff(a, b, ANISOTROPIC, **NO_EMPTY) == pytest.approx(expected, abs=1e-9)


def mrbrains18_script_hd95(test: np.ndarray, result: np.ndarray, spacing) -> float:
    """The MRBrainS18 / WMH evaluation script's getHausdorff, on (x, y, z) arrays."""

    def image(mask):
        img = sitk.GetImageFromArray(mask.T.astype(np.uint8))  # SimpleITK arrays are (z, y, x)
        img.SetSpacing(spacing)
        return img

    test_image, result_image = image(test), image(result)
    edges = []
    for img in (test_image, result_image):
        boundary = sitk.GetArrayFromImage(sitk.Subtract(img, sitk.BinaryErode(img, (1, 1, 0))))
        indices = np.transpose(np.flipud(np.nonzero(boundary)))
        edges.append([test_image.TransformIndexToPhysicalPoint(index.tolist()) for index in indices])
    d_test_to_result = KDTree(edges[0], leafsize=100).query(edges[1], k=1, eps=0, p=2)[0]
    d_result_to_test = KDTree(edges[1], leafsize=100).query(edges[0], k=1, eps=0, p=2)[0]
    return max(np.percentile(d_test_to_result, 95), np.percentile(d_result_to_test, 95))


@pytest.mark.parametrize("seed", [10, 11])
def test_in_plane_hd95_equals_the_mrbrains18_script(seed):
    a, b = blob_pair(seed, interior=seed == 11)
    expected = mrbrains18_script_hd95(a, b, ANISOTROPIC)
    assert surface.in_plane_hd95(b, a, ANISOTROPIC, **NO_EMPTY) == pytest.approx(expected, abs=1e-6)


def covalic_by_simpleitk(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """covalic's HD and AverageDistance rebuilt from SimpleITK filters, on (x, y, z) arrays.

    Per direction: the morphological gradient (ball radius 1) restricted to the mask, read in the
    other mask's SignedMaurerDistanceMap (inside negative, spacing on), absolute values. HD = the larger
    directed maximum; ASSD = the mean of the two directed means.
    """

    def image(mask):
        img = sitk.GetImageFromArray(mask.T.astype(np.uint8))
        img.SetSpacing(spacing)
        return img

    def directed(source, target):
        gradient = sitk.GetArrayFromImage(sitk.MorphologicalGradient(image(source), (1, 1, 1), sitk.sitkBall)).T
        maurer = sitk.SignedMaurerDistanceMap(image(target), insideIsPositive=False, squaredDistance=False,
                                              useImageSpacing=True)
        return np.abs(sitk.GetArrayFromImage(maurer).T[(gradient != 0) & source])

    d_ab, d_ba = directed(a, b), directed(b, a)
    return max(d_ab.max(), d_ba.max()), (d_ab.mean() + d_ba.mean()) / 2


def sphere(shape, centre_mm, radius_mm: float, spacing) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0) * np.asarray(spacing)
    return np.linalg.norm(grid - np.asarray(centre_mm), axis=-1) <= radius_mm


def test_isles_2015_2017_covalic_distances_on_a_shifted_sphere():
    a = sphere((30, 30, 12), (14.0, 14.0, 16.0), 9.0, ANISOTROPIC)
    b = sphere((30, 30, 12), (16.5, 13.0, 19.0), 7.0, ANISOTROPIC)
    expected_hd, expected_assd = covalic_by_simpleitk(a, b, ANISOTROPIC)
    values = scores(b.astype(np.uint8), a.astype(np.uint8), PROTOCOLS["isles-2015-2017"])
    assert values["assd"] == pytest.approx(expected_assd, abs=1e-5)  # float32 Maurer map in covalic
    assert values["hd"] == pytest.approx(expected_hd, abs=1e-5)
    pooled = medpy_binary.assd(b, a, voxelspacing=ANISOTROPIC)
    assert abs(pooled - expected_assd) > 0.01  # the medpy ASSD is another number


@pytest.mark.parametrize(("seed", "interior"), [(12, False), (13, True)])
def test_covalic_distances_equal_simpleitk_filters(seed, interior):
    a, b = blob_pair(seed, shape=(16, 14, 8), interior=interior)  # the first pair touches the array edge
    expected_hd, expected_assd = covalic_by_simpleitk(a, b, ANISOTROPIC)
    assert surface.covalic_hausdorff(a, b, ANISOTROPIC, **NO_EMPTY) == pytest.approx(expected_hd, abs=1e-5)
    assert surface.covalic_average_distance(a, b, ANISOTROPIC, **NO_EMPTY) == pytest.approx(expected_assd, abs=1e-5)


def test_isles_2015_2017_overlap_of_two_empty_masks_is_zero():
    # covalic: 2·|A∩B| / (|A| + |B| + 2e-20), TP / (TP + FN + 1e-20), TP / (TP + FP + 1e-20): 0 / 1e-20 = 0
    empty = np.zeros((6, 6, 4), dtype=np.uint8)
    values = scores(empty, empty, PROTOCOLS["isles-2015-2017"])
    assert (values["dice"], values["sensitivity"], values["ppv"]) == (0.0, 0.0, 0.0)
    assert (values["hd"], values["assd"]) == (0.0, 0.0)


@pytest.mark.parametrize("seed", [13, 14])
def test_set_hausdorff_equals_itk_filter(seed):
    a, b = blob_pair(seed)
    images = []
    for mask in (a, b):
        image = sitk.GetImageFromArray(mask.T.astype(np.uint8))
        image.SetSpacing(ANISOTROPIC)
        images.append(image)
    itk_filter = sitk.HausdorffDistanceImageFilter()
    itk_filter.Execute(*images)
    expected = itk_filter.GetHausdorffDistance()
    assert surface.set_hausdorff(a, b, ANISOTROPIC, **NO_EMPTY) == pytest.approx(expected, abs=1e-6)


# -- volume and overlap metrics by hand ------------------------------------------------------------


def test_volume_metrics_by_hand():
    ref = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros_like(ref)
    ref[0, :, :] = True  # 16 voxels
    pred[0, :2, :] = True  # 8 voxels, all inside
    pred[3, 0, 0] = True  # +1 false positive
    counts = Confusion.from_masks(pred, ref)
    voxel_mm3 = 0.958 * 0.958 * 3.0
    assert absolute_volume_difference_ml(counts, voxel_mm3) == pytest.approx(7 * voxel_mm3 / 1000)
    assert absolute_volume_difference_percent(counts, if_ref_empty=-1.0) == pytest.approx(7 / 16 * 100)
    assert volume_difference_ratio(counts, if_ref_empty=-1.0) == pytest.approx(-7 / 16)
    assert volumetric_similarity(counts, if_both_empty=-1.0) == pytest.approx(1 - 7 / 25)
    assert precision(counts, if_both_empty=-1.0, if_pred_empty=-2.0) == pytest.approx(8 / 9)
    empty = Confusion.from_masks(np.zeros_like(ref), np.zeros_like(ref))
    assert volumetric_similarity(empty, if_both_empty=math.nan) != volumetric_similarity(empty, if_both_empty=math.nan)
    assert absolute_volume_difference_percent(empty, if_ref_empty=-1.0) == -1.0
    assert precision(Confusion.from_masks(np.zeros_like(ref), ref), if_both_empty=-1.0, if_pred_empty=-2.0) == -2.0


# -- protocols --------------------------------------------------------------------------------------


def test_every_protocol_scores_a_case_with_units_and_empty_rules():
    assert "brats-legacy-2017-2021" in PROTOCOLS
    ref = np.zeros((14, 12, 8), dtype=np.uint8)
    ref[2:9, 2:9, 2:6] = 1
    pred = np.roll(ref, 1, axis=0)
    regions = {"lesion": (1,), "absent": (2,)}
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name
        assert set(protocol.metrics) <= set(METRIC_UNITS), name
        rows = evaluate_case(pred, ref, ANISOTROPIC, regions, protocol)
        assert [(r["region"], r["metric"]) for r in rows] == [(g, m) for g in regions for m in protocol.metrics]
        present = {r["metric"]: r["value"] for r in rows if r["region"] == "lesion"}
        if "dice" in protocol.metrics:  # dou-2016 scores detections only
            assert 0.7 < present["dice"] < 1.0, name
    gli = BRATS_2023["GLI"]
    assert scores(pred, ref, gli, "absent", regions) == {
        "dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0, "lesion_dice": 1.0, "lesion_hd95": 0.0
    }
    missed = scores(np.zeros_like(ref), ref, gli, "lesion", regions)
    assert (missed["hd95"], missed["lesion_hd95"], missed["dice"]) == (374.0, 374.0, 0.0)
    isles = scores(np.zeros_like(ref), ref, PROTOCOLS["isles-2015-2017"], "lesion", regions)
    assert isles["hd"] == math.inf and isles["assd"] == math.inf


def test_mrbrains18_masks_labels_9_and_10_out_of_both_images():
    ref = np.zeros((12, 12, 4), dtype=np.uint8)
    ref[2:8, 2:8, :] = 1
    ref[8:11, 2:8, :] = 9  # infarction: whatever the prediction says here has no effect
    pred = ref.copy()
    pred[8:11, 2:8, :] = 1  # predicts tissue on the infarction
    pred[0, 0, 0] = 1  # a real false positive on background
    values = scores(pred, ref, MRBRAINS18)
    assert values["dice"] == pytest.approx(2 * 144 / (145 + 144))
    assert values["volumetric_similarity"] == pytest.approx(1 - 1 / 289)
    unmasked = Protocol(name="unmasked", metrics=("dice",), dice_both_empty=math.nan)
    plain = scores(pred, ref, unmasked)["dice"]
    assert plain == pytest.approx(2 * 144 / (145 + 72 + 144))
    empty = scores(pred, ref, MRBRAINS18, "WMH", {"WMH": (4,)})
    assert all(math.isnan(v) for v in empty.values()), "MRBrainS18's None for an absent label is NaN"


def test_protocol_rejects_metrics_its_variant_does_not_define():
    with pytest.raises(ValueError, match="defines no"):
        Protocol(name="bad", metrics=("assd",), surface_variant="in-plane")
    with pytest.raises(ValueError, match="lesion rule"):
        Protocol(name="bad", metrics=("lesion_dice",), lesion_rule="anima")


def test_foreground_crop_changes_no_value():
    """A region holding label 0 turns the crop off: every other region must score exactly the same."""
    pred = np.zeros((30, 26, 14), dtype=np.uint8)
    ref = np.zeros_like(pred)
    a, b = blob_pair(15, interior=True)
    ref[a] = 1
    pred[b] = 1
    ref[10:14, 3:7, 3:6] = 2  # two small lesions 3 voxels apart: BraTS dilation merges them
    ref[17:21, 3:7, 3:6] = 2
    pred[11:14, 3:7, 3:6] = 2  # everything labelled lies off the array edge, so the crop is real
    regions = {"one": (1,), "two": (2,), "both": (1, 2)}
    for protocol in PROTOCOLS.values():
        cropped = evaluate_case(pred, ref, ANISOTROPIC, regions, protocol)
        full = evaluate_case(pred, ref, ANISOTROPIC, {**regions, "background": (0,)}, protocol)
        full = [row for row in full if row["region"] != "background"]
        np.testing.assert_equal([r["value"] for r in cropped], [r["value"] for r in full], err_msg=protocol.name)
