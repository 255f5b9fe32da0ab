"""3D dense CRF (spec §3.7) against an exact O(N²) mean field, hand-worked values and known optima."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.crf import CRFParameters, DenseCRF3D, PermutohedralLattice, crf_intensities, grid_search

SHAPE = (12, 12, 12)
PARAMETERS = CRFParameters(positional_sigma=(2.0, 2.0, 2.0), positional_weight=3.0, bilateral_sigma=(4.0, 5.0, 4.0),
                           bilateral_weight=5.0, intensity_sigma=(20.0, 30.0), iterations=5)


def smooth_field(rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(SHAPE), sigma)
    return (field - field.mean()) / field.std()


def noisy_volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two z-scored modalities with a bright blob and 3-class probabilities: smooth, plus voxel noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"))
    blob = np.exp(-((grid - np.array([6, 5, 7])[:, None, None, None]) ** 2).sum(0) / 8.0)
    image = np.stack([smooth_field(rng, 2.0) + 2.0 * blob, 0.7 * smooth_field(rng, 1.5) - 1.5 * blob])
    logits = 3.0 * np.stack([smooth_field(rng, 2.5), 3.0 * blob - 1.0, smooth_field(rng, 2.0)])
    logits += 0.8 * rng.standard_normal(logits.shape)
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    return probabilities.astype(np.float32), image.astype(np.float32)


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return noisy_volume(0)


def gaussian_matrix(features: np.ndarray) -> np.ndarray:
    """Explicit (N, N) exp(−‖f_i − f_j‖²/2), self term included."""
    return np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))


def exact_kernels(image: np.ndarray, p: CRFParameters) -> list[tuple[float, np.ndarray]]:
    """(weight, symmetric-normalised kernel D^-½ K D^-½) of the spatial and the bilateral term."""
    position = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    intensity = np.clip(255 / 6.2 * (image.reshape(len(image), -1).T + 3.1), 0, 254).astype(np.uint8)
    kernels = []
    for weight, features in ((p.positional_weight, position / p.positional_sigma),
                             (p.bilateral_weight, np.hstack([position / p.bilateral_sigma,
                                                             intensity / np.array(p.intensity_sigma)]))):
        matrix = gaussian_matrix(features)
        norm = 1 / np.sqrt(matrix.sum(1))
        kernels.append((weight, norm[:, None] * matrix * norm[None]))
    return kernels


def exact_mean_field(probabilities: np.ndarray, image: np.ndarray, p: CRFParameters) -> np.ndarray:
    """Naive dense3dCrf update: Q ← softmax(log p + Σ w·D^-½ K D^-½ Q), (N, K) → labels (X, Y, Z)."""
    log_p = np.log(probabilities.reshape(len(probabilities), -1).T.astype(np.float64))
    q = np.exp(log_p) / np.exp(log_p).sum(1, keepdims=True)
    kernels = exact_kernels(image, p)
    for _ in range(p.iterations):
        logits = log_p + sum(weight * kernel @ q for weight, kernel in kernels)
        q = np.exp(logits - logits.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
    return q.argmax(1).reshape(SHAPE)


def lattice_messages(probabilities: np.ndarray, lattices: Sequence[PermutohedralLattice]) -> np.ndarray:
    """(N, K) normalised bilateral messages D^-½ K D^-½ Q, Q = ``probabilities``, K the sum of the lattices'
    filters (one lattice in the CRF; several to measure an average over shifted lattices)."""
    def kernel(values: torch.Tensor) -> torch.Tensor:
        return sum(lattice.filter(values) for lattice in lattices)
    q = torch.as_tensor(probabilities.reshape(len(probabilities), -1).T.copy())
    norm = torch.rsqrt(kernel(torch.ones(len(q), 1)))
    return (norm * kernel(norm * q)).numpy()


def message_error(probabilities: np.ndarray, image: np.ndarray, p: CRFParameters,
                  exact_parameters: CRFParameters | None = None,
                  lattices: Sequence[PermutohedralLattice] | None = None) -> float:
    """‖lattice − exact‖/‖exact‖ (Frobenius over voxels × classes) of the bilateral messages; the exact
    kernel may use other parameters (``exact_parameters``) to show that the comparison can fail; ``lattices``
    default to the CRF's own over ``p``'s features."""
    q = probabilities.reshape(len(probabilities), -1).T.astype(np.float64)
    exact = exact_kernels(image, exact_parameters or p)[1][1] @ q
    lattices = lattices or [PermutohedralLattice(DenseCRF3D(p, device="cpu")._bilateral_features(image))]
    return float(np.linalg.norm(lattice_messages(probabilities, lattices) - exact) / np.linalg.norm(exact))


def test_bilateral_lattice_messages_match_the_exact_kernel(volume):
    """Frobenius norm over voxels × classes of the message error: the sparse lattice is the library's
    approximation (4.5 % here, a systematic error of the sparse lattice: dense3dCrf's labels are no closer to
    the exact ones, BENCHMARKS.md); the bound leaves no room for a wrong σ or weight."""
    probabilities, image = volume
    assert message_error(probabilities, image, PARAMETERS) <= 0.05
    # the same check fails for a kernel of 1.25× the σ
    wider = CRFParameters(bilateral_sigma=(5.0, 6.25, 5.0), intensity_sigma=(25.0, 37.5))
    assert message_error(probabilities, image, PARAMETERS, exact_parameters=wider) > 0.05


def test_mean_field_map_matches_the_exact_mean_field(volume):
    """5 iterations; the CRF changes 15 % of the labels here and the lattice keeps 99.0 % of the exact MAP
    (96–99.7 % on other seeds, where the authors' dense3dCrf keeps 95.5–99.9 %, BENCHMARKS.md): the
    lattice's 4–5 % message error flips the closest calls."""
    probabilities, image = volume
    exact = exact_mean_field(probabilities, image, PARAMETERS)
    ours = DenseCRF3D(PARAMETERS, device="cpu")(probabilities, image)
    assert ours.shape == probabilities.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)
    assert np.mean(exact != probabilities.argmax(0)) > 0.05  # the CRF does change labels here
    assert np.mean(ours.argmax(0) == exact) >= 0.985


def test_zero_weights_return_the_renormalised_probabilities(volume):
    _, image = volume
    probabilities = np.random.default_rng(1).uniform(0.05, 1.0, (3, *SHAPE)).astype(np.float32)
    for parameters in (CRFParameters(positional_weight=0.0, bilateral_weight=0.0, intensity_sigma=(5.0, 5.0)),
                       CRFParameters(iterations=0, intensity_sigma=(5.0, 5.0))):
        q = DenseCRF3D(parameters, device="cpu")(probabilities, image)
        np.testing.assert_allclose(q, probabilities / probabilities.sum(0), rtol=1e-5)


def test_two_voxels_by_hand():
    """x-neighbours at distance 1, σ_p = 1: K = [[1, a], [a, 1]], a = e^-½, D = 1 + a, one iteration, w_p = 2."""
    p = np.array([[0.8, 0.3], [0.2, 0.7]], dtype=np.float32).reshape(2, 2, 1, 1)
    parameters = CRFParameters(positional_sigma=(1.0, 1.0, 1.0), positional_weight=2.0, bilateral_weight=0.0,
                               intensity_sigma=(1.0,), iterations=1)
    q = DenseCRF3D(parameters, device="cpu")(p, np.zeros((1, 2, 1, 1), dtype=np.float32))[:, :, 0, 0]
    a = math.exp(-0.5)
    for i, j in ((0, 1), (1, 0)):
        logits = [math.log(p[k, i, 0, 0]) + 2.0 * (p[k, i, 0, 0] + a * p[k, j, 0, 0]) / (1 + a) for k in (0, 1)]
        expected = math.exp(logits[0]) / (math.exp(logits[0]) + math.exp(logits[1]))
        assert q[0, i] == pytest.approx(expected, rel=1e-5)
    assert q[0, 0] == pytest.approx(0.861906, abs=1e-5)  # worked out: logits 0.99932 vs −0.83190


def test_intensity_mapping_hand_values():
    """255·(f + 3.1)/6.2, clipped to [0, 254], truncated: dense3dCrf's transFTo0255."""
    z = np.array([-5.0, -3.1, -3.0, 0.0, 1.0, 3.0, 3.1, 10.0], dtype=np.float32).reshape(1, 8, 1, 1)
    mapped = crf_intensities(z, (-3.1, 3.1))
    assert mapped.dtype == np.uint8
    assert mapped.ravel().tolist() == [0, 0, 4, 127, 168, 250, 254, 254]


def test_one_sigma_per_modality_is_required(volume):
    probabilities, image = volume
    with pytest.raises(BrainbenchConfigError, match="intensity_sigma has 4 values but the image has 2"):
        DenseCRF3D(CRFParameters(intensity_sigma=(4.5, 4.5, 4.5, 3.5)), device="cpu")(probabilities, image)
    with pytest.raises(BrainbenchConfigError, match="positional_sigma"):
        CRFParameters(positional_sigma=(3.0, 3.0))


def test_grid_search_picks_the_smoothing_that_removes_speckle():
    """A cube under 20 % flipped voxels: only the positional kernel with weight 5 restores it."""
    rng = np.random.default_rng(2)
    truth = np.zeros(SHAPE, dtype=np.int64)
    truth[3:9, 3:9, 3:9] = 1
    flipped = np.where(rng.random(SHAPE) < 0.2, 1 - truth, truth)
    probabilities = np.stack([np.where(flipped == 0, 0.7, 0.3), np.where(flipped == 1, 0.7, 0.3)]).astype(np.float32)
    image = np.zeros((1, *SHAPE), dtype=np.float32)
    cases = [(probabilities, image, truth)] * 2
    base = CRFParameters(positional_sigma=(1.0, 1.0, 1.0), bilateral_weight=0.0, intensity_sigma=(10.0,),
                         iterations=3)
    table = grid_search(cases, {"positional_weight": [0.0, 5.0, 0.5]},
                        lambda labels, reference: float(np.mean(labels == reference)), base=base, device="cpu")
    assert table["positional_weight"].tolist()[0] == 5.0
    assert table["score"].is_monotonic_decreasing and len(table) == 3
    assert table["score"].iloc[-1] == pytest.approx(0.8, abs=0.03)  # weight 0: the flipped labels stay
    with pytest.raises(BrainbenchConfigError, match="unknown CRF parameter"):
        grid_search(cases, {"sigma": [1.0]}, lambda labels, reference: 0.0, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(volume):
    probabilities, image = volume
    cpu = DenseCRF3D(PARAMETERS, device="cpu")(probabilities, image)
    cuda = DenseCRF3D(PARAMETERS, device="cuda")(probabilities, image)
    np.testing.assert_allclose(cuda, cpu, atol=1e-3)
