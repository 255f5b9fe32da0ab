"""3D fully connected CRF of Kamnitsas et al. 2017 (spec §3.7), after the authors' ``dense3dCrf``.

The model is Krähenbühl & Koltun's dense CRF (NIPS 2011) in 3D: unary ψ_u(x_i) = −log p_i(x_i), Potts
compatibility, and the kernel

    k(i, j) = w_p·exp(−Σ_d Δp_d²/2σ_p,d²) + w_b·exp(−Σ_d Δp_d²/2σ_b,d² − Σ_c ΔI_c²/2σ_c²)

over voxel positions p (voxel units, axes X, Y, Z of the array) and the intensities I of every
modality. Mean-field inference follows ``dense3dCrf`` (``src/densecrf.cpp``, ``src/pairwise.cpp``,
commit ef76efc) step by step:

- Q₀ = softmax(−ψ_u), then ``iterations`` times Q ← softmax(−ψ_u + Σ_kernels w · m), with
  messages m = n ⊙ K (n ⊙ Q), n = (K 1)^(−½): the library's default ``NORMALIZE_SYMMETRIC``.
- K includes the self term (j = i); the library does not subtract it.
- Potts: the library's ``PottsCompatibility`` adds +w·m(l) to label l, equal to −w Σ_{l'≠l} m(l')
  up to a per-voxel constant that the softmax removes.

The bilateral kernel (d = 3 + C features) is filtered on a permutohedral lattice (Adams et al.
2010) as in the library, vectorised in torch (CPU or CUDA); the spatial kernel is applied exactly, as
a separable product with the sampled Gaussian, where the library uses a 3D lattice. Lattice constant
factors (the library's ``alpha``) cancel in the symmetric normalisation and are omitted. The sparse
lattice is an approximation: on 12³ test volumes its normalised messages differ from the exact kernel's
by 4–5 % (Frobenius norm), a systematic error of the sparse lattice, and its MAP labels after 5
iterations agree with the exact mean field's about as often as the library's do (BENCHMARKS.md).

Deviation: ``dense3dCrf``'s application takes the foreground maps and sets the background probability
to 1 − Σ foreground; here the background comes from the model's softmax like every class (the same
when the probabilities sum to 1), clipped at :data:`PROBABILITY_FLOOR` like the others.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from brainbench.errors import BrainbenchConfigError
from brainbench.inference.device import resolve_device

__all__ = ["CRFParameters", "DenseCRF3D", "PermutohedralLattice", "crf_intensities", "grid_search"]

PROBABILITY_FLOOR = 1e-8
"""Probabilities are clipped to at least this before −log, so a label the model gives p = 0 keeps a
finite unary (−log 1e-8 ≈ 18.4, above any pairwise term of the weights used); ``dense3dCrf`` would
take −log 0 = ∞."""


@dataclass(frozen=True)
class CRFParameters:
    """Parameters of the 3D CRF; σ in voxels per array axis (X, Y, Z), intensity σ in 0–255 units.

    The defaults are the repository example ``applicationAndExamples/example/configFileDenseCrf3d.txt``
    of ``dense3dCrf`` (2 channels, DWI + FLAIR, ISLES-like; spec §3.7 table). The values the paper used
    per dataset (TBI, BRATS 2015, ISLES 2015) are **not verified** (spec §3.7): every per-dataset set
    is a reconstruction, to be tuned on validation data (see :func:`grid_search`); the README only says
    that bilateral weights of 3–30 were used.

    - ``positional_sigma``, ``positional_weight``: the spatial-only kernel (σ_p, w_p).
    - ``bilateral_sigma``, ``bilateral_weight``: the spatial part and weight of the bilateral kernel.
    - ``intensity_sigma``: one σ per modality, in the units of :func:`crf_intensities` (0–255).
    - ``iterations``: mean-field iterations.
    - ``intensity_range``: [min, max] of the z-scored input mapped onto 0–255 (values outside clip).
    """

    positional_sigma: tuple[float, float, float] = (3.0, 3.0, 3.0)
    positional_weight: float = 3.0
    bilateral_sigma: tuple[float, float, float] = (17.0, 12.0, 10.0)
    bilateral_weight: float = 5.0
    intensity_sigma: tuple[float, ...] = (4.5, 3.5)
    iterations: int = 2
    intensity_range: tuple[float, float] = (-3.1, 3.1)

    def __post_init__(self) -> None:
        for name in ("positional_sigma", "bilateral_sigma", "intensity_sigma", "intensity_range"):
            object.__setattr__(self, name, tuple(float(value) for value in getattr(self, name)))
        for name, length in (("positional_sigma", 3), ("bilateral_sigma", 3), ("intensity_range", 2)):
            if len(getattr(self, name)) != length:
                raise BrainbenchConfigError(f"crf.{name}={list(getattr(self, name))}: expected {length} values")
        for name in ("positional_sigma", "bilateral_sigma", "intensity_sigma"):
            if not getattr(self, name) or min(getattr(self, name)) <= 0:
                raise BrainbenchConfigError(f"crf.{name}={list(getattr(self, name))}: every σ must be > 0")
        for name in ("positional_weight", "bilateral_weight"):
            if getattr(self, name) < 0:
                raise BrainbenchConfigError(f"crf.{name}={getattr(self, name)}: must be ≥ 0")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise BrainbenchConfigError(f"crf.iterations={self.iterations}: expected an integer ≥ 0")
        object.__setattr__(self, "iterations", int(self.iterations))
        low, high = self.intensity_range
        if not low < high:
            raise BrainbenchConfigError(f"crf.intensity_range={[low, high]}: expected min < max")


def crf_intensities(image: np.ndarray, intensity_range: Sequence[float]) -> np.ndarray:
    """(C, X, Y, Z) z-scored image → uint8, as ``dense3dCrf``'s ``transFTo0255``.

    255·(f − min)/(max − min), clipped to [0, 254] and truncated to an integer, with the library's
    float32/float64 mix (the difference f − min in float32). Intensity σ are in these units.
    """
    low, high = (np.float32(value) for value in intensity_range)
    factor = 255.0 / float(high - low)
    scaled = factor * (np.asarray(image, dtype=np.float32) - low).astype(np.float64)
    return np.clip(scaled, 0.0, 254.0).astype(np.uint8)


def _csr(rows: Tensor, columns: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix built from valid indices (no invariant check), without torch's "beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(rows, columns, values, shape, check_invariants=False)


def _enclosing_simplices(features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(n, d) features → each point's simplex: barycentric weights (n, d + 1) float32, the 0-remainder point
    q0 (n, d) int32 (its coordinates are (d + 1)·q0) and its rank order (n,) int64, by_rank[:, 1:] as d
    base-(d + 1) digits (by_rank[:, r]: the coordinate of rank r; by_rank[:, 0] follows from the others).

    The geometry (elevation, the 0-coloured remainder, ranks, ``inv_std_dev`` = √(2/3)·(d + 1)) copies
    ``dense3dCrf``'s ``src/permutohedral.cpp`` (Adams et al. 2010, §3–4).
    """
    n, d = features.shape
    d1 = d + 1
    device = features.device
    steps = torch.arange(d1, device=device)
    axis = torch.arange(d, device=device, dtype=torch.float32)
    scaled = features * (math.sqrt(2.0 / 3.0) * d1 / torch.sqrt((axis + 1) * (axis + 2)))
    elevated = F.pad(scaled.flip(1).cumsum(1).flip(1), (0, 1))
    elevated[:, 1:] -= steps[1:] * scaled
    del scaled
    # nearest 0-coloured point (coordinates ≡ 0 mod d + 1), rounding as the library does
    up = torch.ceil(elevated / d1) * d1
    down = torch.floor(elevated / d1) * d1
    remainder0 = torch.where(up - elevated < elevated - down, up, down)
    del up, down
    # the library's rank of coordinate i (position in the descending order of elevated − remainder0,
    # ties to the lower index), shifted by Σ remainder0/(d + 1) and wrapped into [0, d]
    order = torch.sort(elevated - remainder0, dim=1, descending=True, stable=True).indices
    shift = (remainder0.sum(1) / d1).round().long()[:, None]
    rank = torch.empty_like(order).scatter_(1, order, steps.expand(n, d1)) + shift
    remainder0 += ((rank < 0).float() - (rank > d).float()) * d1
    del rank
    by_rank = order.gather(1, (steps - shift) % d1)  # coordinate holding each wrapped rank
    del order, shift
    # barycentric weight of vertex r (p. 10 of Adams et al.): u = (elevated − remainder0)/(d + 1)
    # in descending rank, weight_r = u_{d−r} − u_{d−r+1}, weight_0 = 1 + u_d − u_0
    u = ((elevated - remainder0) / d1).gather(1, by_rank).flip(1)
    del elevated
    weights = u - u.roll(1, dims=1)
    weights[:, 0] += 1
    del u
    q0 = torch.round(remainder0[:, :d] / d1).int()
    return weights, q0, (by_rank[:, 1:] * d1 ** torch.arange(d, device=device)).sum(1)


class PermutohedralLattice:
    """Gaussian filter exp(−‖f_i − f_j‖²/2) over N points with features f (N, d), up to a constant factor.

    Splat onto the vertices of each point's enclosing simplex with barycentric weights, blur with
    [1 2 1] along the d + 1 lattice directions, slice back (Adams et al. 2010, §3–4); the lattice
    geometry (elevation, the 0-coloured remainder, ranks, ``inv_std_dev`` = √(2/3)·(d + 1)) copies
    ``dense3dCrf``'s ``src/permutohedral.cpp``. Only vertices that some point touches exist, as there.

    Vertices are found without a hash table: a vertex key (d coordinates, all ≡ r mod d + 1) is packed
    into one int64, r·T + Σ_i (q_i − q_min,i)·S_i with q = (key − r)/(d + 1), mixed-radix strides S and
    T = Π radix, so a lattice neighbour is a fixed offset that depends only on r. Points with the same
    0-remainder point and rank order share a simplex (on a brain volume 8.9M voxels fall into 1.9M
    simplices): one ``torch.sort`` of N simplex keys groups them, a second of the S·(d + 1) vertex keys of
    the simplices yields the vertices, and ``torch.searchsorted`` the neighbours. Splat, the d + 1 blurs
    and slice are CSR sparse × dense products (MKL on the CPU, cuSPARSE on CUDA), the same matrices as
    with one sort of all N·(d + 1) vertex keys. Built once per volume; :meth:`filter` reuses it.
    """

    def __init__(self, features: Tensor):
        n, d = features.shape
        d1 = d + 1
        device = features.device
        weights, q0, rank_orders = _enclosing_simplices(features.float())
        q_min = q0.amin(0).long() - 2  # a vertex sits up to 1 below the 0-remainder point, a neighbour 1 more
        radix = (q0.amax(0).long() + 2 - q_min + 1).tolist()
        strides = [1]
        for size in radix[:-1]:
            strides.append(strides[-1] * size)
        top = strides[-1] * radix[-1]  # the remainder r is the most significant digit
        if top * d1 >= 2**62:
            raise BrainbenchConfigError(f"crf: the bilateral lattice spans {top * d1:.3g} keys, more than int64 "
                                        f"holds; increase the σ")
        stride = torch.tensor([*strides, 0], device=device)  # coordinate d is implicit (Σ key = 0)
        base = ((q0 - q_min) * stride[:d]).sum(1)
        del q0
        # points with the same 0-remainder point and rank order share their simplex (all d + 1 vertices):
        # one int64 key per point, sorted, gives the simplices; vertex keys are built for those only
        orders = d1 ** d  # number of rank-order codes
        point = base if top * orders < 2**62 else torch.unique(base, return_inverse=True)[1]  # < N otherwise
        simplex_keys = point * orders + rank_orders
        del point, rank_orders
        sorted_keys, voxel_order = torch.sort(simplex_keys, stable=True)
        del simplex_keys
        first = torch.ones_like(sorted_keys, dtype=torch.bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        by_rank = sorted_keys[first].remainder_(orders)[:, None]  # (S, 1) rank-order codes
        del sorted_keys
        simplex_start = torch.nonzero(first).flatten()  # (S,) into voxel_order
        simplex_of_sorted = first.cumsum(0) - 1  # (N,) simplex of voxel_order[p]
        del first
        s = simplex_start.numel()
        by_rank = by_rank.div(d1 ** torch.arange(d, device=device), rounding_mode="floor").remainder_(d1)
        # vertex r = vertex r − 1 + (1, …, 1) − (d + 1)·e_i, i the coordinate of rank d − r + 1
        keys = F.pad((top - stride[by_rank.flip(1)]).cumsum(1), (1, 0))
        keys = keys.add_(base[voxel_order[simplex_start], None]).reshape(-1)  # (S·(d + 1),) one per simplex slot
        del base, by_rank
        sorted_keys, slot_order = torch.sort(keys, stable=True)
        del keys
        first = torch.ones_like(sorted_keys, dtype=torch.bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        lattice_keys = sorted_keys[first]
        del sorted_keys
        self.size = m = lattice_keys.numel()
        entries = n * d1
        index_type = torch.int32 if max(entries, 3 * m) < 2**31 else torch.int64
        # slice (N × M): row i holds voxel i's d + 1 vertices, weighted
        vertex_of_slot = torch.empty(s * d1, dtype=index_type, device=device)
        vertex_of_slot[slot_order] = first.cumsum(0, dtype=index_type) - 1
        simplex_of_voxel = torch.empty_like(simplex_of_sorted)
        simplex_of_voxel[voxel_order] = simplex_of_sorted
        weights = weights.reshape(-1)
        slice_rows = torch.arange(0, entries + 1, d1, dtype=index_type, device=device)
        self._slice = _csr(slice_rows, vertex_of_slot.view(s, d1)[simplex_of_voxel].reshape(-1), weights, (n, m))
        del vertex_of_slot, simplex_of_voxel
        # splat (M × N), the slice's transpose: a vertex's entries are the voxels of its slots, slot by slot in
        # vertex order; entry (voxel at sorted position p, vertex r) goes to start(slot) + p − simplex_start
        members = torch.diff(simplex_start, append=torch.tensor([n], device=device))
        slot_start = torch.empty(s * d1, dtype=torch.int64, device=device)
        slot_start[slot_order] = F.pad(members[slot_order // d1].cumsum(0), (1, 0))[:-1]
        splat_rows = F.pad(slot_start[slot_order[first]], (0, 1), value=entries).to(index_type)
        del members, slot_order, first
        position = torch.arange(n, device=device).sub_(simplex_start[simplex_of_sorted])
        destination = slot_start.view(s, d1)[simplex_of_sorted].add_(position[:, None]).reshape(-1)
        del slot_start, simplex_start, simplex_of_sorted, position
        columns = torch.empty(entries, dtype=index_type, device=device)
        columns[destination] = voxel_order.to(index_type).repeat_interleave(d1)
        values = torch.empty_like(weights)
        values[destination] = weights.view(n, d1)[voxel_order].reshape(-1)
        del destination, voxel_order, weights
        self._splat = _csr(splat_rows, columns, values, (m, n))
        del columns, values
        # blur along direction j: v_i + ½ (v_minus + v_plus), a CSR matrix with 3 entries per row (a
        # missing neighbour points at i itself with weight 0). Neighbour minus: every coordinate −1
        # (r → r − 1, or r = 0 → d with q − 1), then coordinate j + (d + 1) (q_j + 1); plus is its inverse
        down_shift = torch.where(lattice_keys >= top, -top, d * top - int(stride.sum()))
        itself = torch.arange(m, device=device)
        self._blur = []
        for j in range(d1):
            query = lattice_keys + down_shift + int(stride[j])
            position = torch.searchsorted(lattice_keys, query).clamp_(max=m - 1)
            found = lattice_keys[position] == query
            minus = torch.where(found, position, itself)
            plus = itself.clone()
            plus[position[found]] = itself[found]
            columns = torch.stack([minus, itself, plus], dim=1).reshape(-1).to(index_type)
            values = torch.stack([found.float() * 0.5, torch.ones(m, device=device), (plus != itself).float() * 0.5],
                                 dim=1).reshape(-1)
            rows = torch.arange(0, 3 * m + 1, 3, dtype=index_type, device=device)
            self._blur.append(_csr(rows, columns, values, (m, m)))

    def filter(self, values: Tensor) -> Tensor:
        """(N, K) values → (N, K) Σ_j k(f_i, f_j) v_j, up to a constant factor, self term included."""
        lattice = self._splat @ values
        for blur in self._blur:
            lattice = blur @ lattice
        return self._slice @ lattice


def _gaussian_filter(values: Tensor, sigma: Sequence[float]) -> Tensor:
    """(K, X, Y, Z) → Σ_j exp(−Σ_d Δp_d²/2σ_d²) v_j exactly, zero outside the volume.

    Separable: one product with the dense (L, L) Gaussian matrix per axis, batched so that no axis is
    moved in memory; on the CPU this BLAS product beats a truncated 1D convolution at brain sizes.
    """
    k, x, y, z = values.shape
    matrices = []
    for size, s in zip((x, y, z), sigma):
        position = torch.arange(size, dtype=values.dtype, device=values.device)
        matrices.append(torch.exp(-0.5 * ((position[:, None] - position[None]) / s) ** 2))
    out = torch.matmul(matrices[0], values.reshape(k, x, y * z))
    out = torch.matmul(matrices[1], out.reshape(k * x, y, z))
    return (out.reshape(-1, z) @ matrices[2]).reshape(k, x, y, z)


class DenseCRF3D:
    """Refines (K, X, Y, Z) class probabilities with the 3D dense CRF; call with probabilities and image.

    ``DenseCRF3D(parameters, device="auto")(probabilities, image)``: ``probabilities`` (K, X, Y, Z)
    float32 softmax output of the model, background included as class 0 as the model gives it;
    ``image`` (C, X, Y, Z) float32, z-scored, C = ``len(parameters.intensity_sigma)``. Returns the
    marginals Q (K, X, Y, Z) float32 after ``parameters.iterations`` mean-field steps; the caller takes
    the argmax. ``device``: ``auto`` (CUDA, MPS, else CPU), ``cpu``, ``cuda``, … (the pipeline passes the
    inference device). ``n_channels``: checked against the intensity σ at once when given.
    """

    def __init__(self, parameters: CRFParameters, device: str = "auto", n_channels: int | None = None):
        self.parameters = parameters
        self.device = resolve_device(device)
        if n_channels is not None:  # known when the run is configured: fail before any training
            self._check_channels(n_channels)

    def _check_channels(self, n_channels: int) -> None:
        if n_channels != len(self.parameters.intensity_sigma):
            raise BrainbenchConfigError(f"crf.intensity_sigma has {len(self.parameters.intensity_sigma)} values but "
                                        f"the image has {n_channels} modalities; give one σ per modality")

    def __call__(self, probabilities: np.ndarray, image: np.ndarray) -> np.ndarray:
        p = self.parameters
        if probabilities.ndim != 4 or image.ndim != 4 or probabilities.shape[1:] != image.shape[1:]:
            raise ValueError(f"expected probabilities (K, X, Y, Z) and image (C, X, Y, Z) on one grid, got "
                             f"{probabilities.shape} and {image.shape}")
        self._check_channels(image.shape[0])
        with torch.no_grad():
            log_p = torch.as_tensor(probabilities, dtype=torch.float32, device=self.device)
            log_p = log_p.reshape(len(probabilities), -1).clamp(min=PROBABILITY_FLOOR).log_()  # (K, N)
            q = torch.softmax(log_p, dim=0)
            kernels = self._kernels(image) if p.iterations else []
            for _ in range(p.iterations):
                logits = log_p.clone()
                for weight, norm, kernel in kernels:
                    logits.addcmul_(kernel(q * norm), norm, value=weight)
                q = torch.softmax(logits, dim=0)
            return q.reshape(probabilities.shape).cpu().numpy()

    def _kernels(self, image: np.ndarray) -> list[tuple[float, Tensor, Callable[[Tensor], Tensor]]]:
        """(weight, normalisation n (N,), unnormalised filter (K, N) → (K, N)) of each kernel in use."""
        p = self.parameters
        shape = image.shape[1:]
        kernels: list[tuple[float, Callable[[Tensor], Tensor]]] = []
        if p.positional_weight > 0:
            def spatial(values: Tensor) -> Tensor:
                return _gaussian_filter(values.reshape(-1, *shape), p.positional_sigma).reshape(len(values), -1)
            kernels.append((p.positional_weight, spatial))
        if p.bilateral_weight > 0:
            lattice = PermutohedralLattice(self._bilateral_features(image))
            kernels.append((p.bilateral_weight, lambda values: lattice.filter(values.t().contiguous()).t()))
        ones = torch.ones(1, math.prod(shape), device=self.device)
        return [(weight, torch.rsqrt(kernel(ones)[0] + 1e-20), kernel) for weight, kernel in kernels]

    def _bilateral_features(self, image: np.ndarray) -> Tensor:
        """(N, 3 + C) positions / σ_b and mapped intensities / σ_c, voxels in C order of (X, Y, Z)."""
        p = self.parameters
        shape = image.shape[1:]
        axes = [torch.arange(size, dtype=torch.float32, device=self.device) / s
                for size, s in zip(shape, p.bilateral_sigma)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        intensities = torch.as_tensor(crf_intensities(image, p.intensity_range), device=self.device)
        sigma = torch.tensor(p.intensity_sigma, device=self.device)
        return torch.cat([grid, intensities.reshape(len(sigma), -1).t().float() / sigma], dim=1)


def grid_search(cases: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                grid: Mapping[str, Sequence], score: Callable[[np.ndarray, np.ndarray], float],
                base: CRFParameters | None = None, device: str = "auto") -> pd.DataFrame:
    """Mean validation score of every combination of ``grid``, best first (the authors tuned this way).

    ``cases``: (probabilities (K, X, Y, Z), z-scored image (C, X, Y, Z), reference labels (X, Y, Z));
    ``grid``: :class:`CRFParameters` field → values to try; the other fields come from ``base``
    (default :class:`CRFParameters`, whose 2 intensity σ fit 2 modalities only);
    ``score(labels, reference)``: higher is better, e.g. a Dice from the caller (inference does not
    import evaluation). Returns one row per combination: the grid fields, ``score`` (mean over cases).
    """
    names = list(grid)
    unknown = sorted(set(names) - {f.name for f in fields(CRFParameters)})
    if unknown:
        raise BrainbenchConfigError(f"grid_search: unknown CRF parameter(s) {unknown}")
    cases = list(cases)
    base = base or CRFParameters()
    rows = []
    for combination in itertools.product(*(grid[name] for name in names)):
        crf = DenseCRF3D(replace(base, **dict(zip(names, combination))), device)
        scores = [score(crf(probabilities, image).argmax(0), reference) for probabilities, image, reference in cases]
        rows.append({**dict(zip(names, combination)), "score": float(np.mean(scores))})
    return pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
