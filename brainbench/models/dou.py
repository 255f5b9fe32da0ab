"""Dou et al.'s two-stage cerebral-microbleed (CMB) detector: a 3D FCN screen, then a 3D CNN.

Dou Q, Chen H, Yu L, Zhao L, Qin J, Wang D, Mok VCT, Shi L, Heng PA. *Automatic Detection of
Cerebral Microbleeds From MR Images via 3D Convolutional Neural Networks.* IEEE TMI
35(5):1182-1195, 2016. Layer shapes come from the authors' released weights (spec §5.2-5.3); the
paper's full text was not available, so candidate settings are unverified [M] (spec §5.4, §7.3).

Axes: arrays are (C, X, Y, Z) with z the through-plane (SWI slice) axis, and kernels are written
x×y×z. The release's Theano ``conv3d2d`` tuples are (filters, time=z, in, h, w), so its "5, 7, 7"
is z=5, x=y=7 here (spec §5.7).

Stage 1, :class:`DouScreeningFCN` (spec §5.2), trained on 16×16×10 patches, run fully
convolutionally; 229,700 parameters for one channel::

    C1  5×5×3 conv, 64 → 2×2×2 max-pool → ReLU   16×16×10 → 12×12×8 → 6×6×4
    C2  3×3×3 conv, 64, ReLU                      4×4×2
    C3  3×3×1 conv, 64, ReLU                      2×2×2
    FC1 2×2×2 conv, 150, ReLU                     1×1×1
    FC2 1×1×1 conv, 2 (softmax in the loss)       1×1×1

Output stride 2; output size ⌊(X−4)/2⌋−5 in-plane and ⌊(Z−2)/2⌋−3 through-plane (512 → 249).
The release adds C1's bias after pooling (``relu(maxpool(conv(x)) + b)``), equal to conv + bias →
pool → ReLU since a per-map constant commutes with max.

Stage 2, :class:`DouDiscriminator` (spec §5.3), on 20×20×16 candidate patches, each with its mean
subtracted as the release does; 1,364,338 parameters::

    C1 7×7×5 conv, 32 → max-pool 2 → ReLU   20×20×16 → 14×14×12 → 7×7×6
    C2 5×5×3 conv, 64, ReLU                  3×3×4 (64·3·3·4 = 2304)
    FC 2304 → 500 → 100 → 2, ReLU between

Geometry convention shared by training and inference. A window of edge ``P`` around voxel ``c``
spans ``[c − (P−1)//2, c − (P−1)//2 + P)`` (:class:`~brainbench.models.unet3d.PatchSegments`). The
release's score voxel (i, j, k) sees the input patch starting at (2i, 2j, 2k), centre
(2i+7.5, 2j+7.5, 2k+4.5); with the convention above that patch is the one of voxel
(2i+7, 2j+7, 2k+4) (the half-voxel rounded down), and :class:`ScreeningPatches` trains on exactly
that window with that voxel's label. :func:`screening_scores` zero-pads the volume by (7, 7, 4)
voxels before (and tiles it), so that its score voxel ``v`` belongs to image voxel ``2v``: the
score volume covers every even voxel, ⌈X/2⌉×⌈Y/2⌉×⌈Z/2⌉, border included (zeros beyond the volume,
as the training windows are zero-filled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor, nn

from brainbench.errors import BrainbenchConfigError
from brainbench.models.deepmedic import _per_axis, extract_label_block, positive_sizes, window
from brainbench.models.unet3d import PatchSegments, random_reflection

__all__ = [
    "CandidatePatches",
    "DouCascade",
    "DouDiscriminator",
    "DouScreeningFCN",
    "ScreeningPatches",
    "candidate_patch",
    "find_candidates",
    "lesion_centres",
    "screening_scores",
]

SCREENING_PATCH = (16, 16, 10)
"""Stage-1 training patch and receptive field, x×y×z (spec §5.2, §5.4)."""
DISCRIMINATION_PATCH = (20, 20, 16)
"""Stage-2 candidate patch, x×y×z (spec §5.3)."""
STRIDE = 2
"""Output stride of the screening FCN: its single 2×2×2 max-pool (spec §5.4)."""
SCORE_OFFSET = tuple((p - 1) // 2 for p in SCREENING_PATCH)
"""(7, 7, 4): the patch starting at ``2v`` is centred (window convention) on voxel ``2v + SCORE_OFFSET``."""
FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
"""26-connectivity, for CMB components and detected regions."""


class DouScreeningFCN(nn.Module):
    """Stage 1, the screening 3D FCN (module docstring, spec §5.2); returns logits.

    forward(x (N, in_channels, X, Y, Z)) -> (N, n_classes, X', Y', Z'), ``output_size((X, Y, Z))``:
    a 16×16×10 patch gives 1×1×1, a volume the dense score volume (stride 2).

    Args:
        in_channels: image channels (paper: 1, SWI).
        n_classes: 2 (background, CMB).
        maps: feature maps of C1, C2, C3 and FC1 (paper: 64, 64, 64, 150).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, maps: Sequence[int] = (64, 64, 64, 150)):
        super().__init__()
        c1, c2, c3, fc1 = positive_sizes(maps, 4, "screening maps")
        self.in_channels, self.n_classes = in_channels, n_classes
        self.layers = nn.Sequential(
            nn.Conv3d(in_channels, c1, (5, 5, 3)), nn.MaxPool3d(2, stride=2), nn.ReLU(inplace=True),
            nn.Conv3d(c1, c2, (3, 3, 3)), nn.ReLU(inplace=True),
            nn.Conv3d(c2, c3, (3, 3, 1)), nn.ReLU(inplace=True),
            nn.Conv3d(c3, fc1, (2, 2, 2)), nn.ReLU(inplace=True),  # FC1 as a conv
            nn.Conv3d(fc1, n_classes, 1),  # FC2 as a conv
        )

    @staticmethod
    def output_size(input_size: int | Sequence[int]) -> tuple[int, int, int]:
        """⌊(X−4)/2⌋−5 in-plane, ⌊(Z−2)/2⌋−3 through-plane (spec §5.4); raises for inputs smaller
        than the 16×16×10 receptive field."""
        x, y, z = _per_axis(input_size, "input_size")
        out = ((x - 4) // 2 - 5, (y - 4) // 2 - 5, (z - 2) // 2 - 3)
        if min(out) < 1 or min(s - p for s, p in zip((x, y, z), SCREENING_PATCH)) < 0:
            raise BrainbenchConfigError(f"input_size: {(x, y, z)} is smaller than the screening FCN's "
                                        f"{SCREENING_PATCH} receptive field")
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DouDiscriminator(nn.Module):
    """Stage 2, the discrimination 3D CNN (module docstring, spec §5.3); returns logits (N, n_classes).

    Args:
        in_channels: image channels (paper: 1).
        n_classes: 2 (mimic, CMB).
        maps: feature maps of C1 and C2 (paper: 32, 64).
        hidden: units of the two hidden FC layers (paper: 500, 100).
        patch_size: the candidate patch x×y×z (paper: 20×20×16); fixes FC1's input (2304).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, maps: Sequence[int] = (32, 64),
                 hidden: Sequence[int] = (500, 100), patch_size: Sequence[int] = DISCRIMINATION_PATCH):
        super().__init__()
        c1, c2 = positive_sizes(maps, 2, "discrimination maps")
        h1, h2 = positive_sizes(hidden, 2, "discrimination hidden")
        self.patch_size = positive_sizes(patch_size, 3, "discrimination patch_size")
        features = [(s - k + 1) // 2 - k2 + 1 for s, k, k2 in zip(self.patch_size, (7, 7, 5), (5, 5, 3))]
        if min(features) < 1:
            raise BrainbenchConfigError(f"discrimination patch_size: {list(self.patch_size)} is too small "
                                        f"for the 7×7×5 and 5×5×3 convs and the pooling")
        self.in_channels, self.n_classes = in_channels, n_classes
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, c1, (7, 7, 5)), nn.MaxPool3d(2, stride=2), nn.ReLU(inplace=True),
            nn.Conv3d(c1, c2, (5, 5, 3)), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * math.prod(features), h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True), nn.Linear(h2, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class DouCascade(nn.Module):
    """Both stages and the candidate settings that join them.

    ``forward`` is stage 1 alone: the screening logits (N, 2, X', Y', Z') of its input; stage 2
    takes candidate patches chosen in numpy, so the cascade's prediction is
    :func:`brainbench.inference.cascade.predict_cascade`. Training calls a stage directly (phase
    ``module: screening`` / ``discrimination``).

    Args:
        in_channels: image channels (paper: 1, SWI).
        n_classes: 2; every class > 0 counts as CMB.
        screening: keyword arguments of :class:`DouScreeningFCN` beyond the channels (``maps``).
        discrimination: keyword arguments of :class:`DouDiscriminator` (``maps``, ``hidden``,
            ``patch_size``).
        screening_threshold: minimum stage-1 CMB probability of a candidate. Default 0.5 [M]: the
            paper's value is unknown (spec §5.4); a third party's edited ``final.m`` thresholds
            at 0.85 (which stage is not known).
        nms_radius: candidates closer than this (voxels, Euclidean) to a higher-scoring one are
            merged into it. Default 10 [M], from the same third-party ``final.m``.
        stage2_threshold: minimum stage-2 CMB probability of an accepted candidate. Default 0.5
            [M] (the argmax of the two-way softmax); the paper's is unknown.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, screening: dict | None = None,
                 discrimination: dict | None = None, screening_threshold: float = 0.5,
                 nms_radius: float = 10.0, stage2_threshold: float = 0.5):
        super().__init__()
        for name, value in (("screening_threshold", screening_threshold), ("stage2_threshold", stage2_threshold)):
            if not 0.0 < value < 1.0:
                raise BrainbenchConfigError(f"{name}: must be a probability strictly between 0 and 1, got {value}")
        if nms_radius < 0:
            raise BrainbenchConfigError(f"nms_radius: must be >= 0 voxels, got {nms_radius}")
        self.in_channels, self.n_classes = in_channels, n_classes
        self.screening = DouScreeningFCN(in_channels, n_classes, **(screening or {}))
        self.discrimination = DouDiscriminator(in_channels, n_classes, **(discrimination or {}))
        self.screening_threshold, self.nms_radius = float(screening_threshold), float(nms_radius)
        self.stage2_threshold = float(stage2_threshold)

    def forward(self, x: Tensor) -> Tensor:
        return self.screening(x)


def screening_scores(screening: DouScreeningFCN, image: np.ndarray | Tensor, tile: int | Sequence[int] = 48,
                     device: torch.device | str | None = None) -> np.ndarray:
    """CMB probability (1 − P(background)) of every even voxel of a whole image; float32
    (⌈X/2⌉, ⌈Y/2⌉, ⌈Z/2⌉), score voxel ``v`` ↔ image voxel ``2v`` (module docstring).

    image: (C, X, Y, Z) z-scored, background 0. The FCN runs in eval mode without gradients (its
    training flag is restored) on ``device`` (default: where it is), on tiles of at most ``tile``
    score voxels per axis whose input windows overlap by the receptive field less the stride:
    64 maps of a 512×512×150 volume would take ~10 GB at once.
    """
    volume = image.float() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if volume.ndim != 4 or volume.shape[0] != screening.in_channels:
        raise ValueError(f"image: expected ({screening.in_channels}, X, Y, Z), got {tuple(volume.shape)}")
    tile = _per_axis(tile, "tile")
    device = torch.device(device) if device is not None else next(screening.parameters()).device
    shape = [math.ceil(s / STRIDE) for s in volume.shape[1:]]
    scores = np.empty(shape, dtype=np.float32)
    was_training = screening.training
    screening.eval()
    try:
        with torch.no_grad():
            for corner in np.ndindex(*[math.ceil(s / t) for s, t in zip(shape, tile)]):
                start = [c * t for c, t in zip(corner, tile)]
                count = [min(t, s - a) for t, s, a in zip(tile, shape, start)]
                lo = [STRIDE * a - o for a, o in zip(start, SCORE_OFFSET)]
                hi = [l + STRIDE * (n - 1) + p for l, n, p in zip(lo, count, SCREENING_PATCH)]
                x = torch.as_tensor(window(volume, lo, hi, 1, 0))[None].to(device)
                probability = 1 - torch.softmax(screening(x).float(), dim=1)[0, 0]
                scores[tuple(slice(a, a + n) for a, n in zip(start, count))] = probability.cpu().numpy()
    finally:
        screening.train(was_training)
    return scores


def find_candidates(scores: np.ndarray, threshold: float, nms_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate CMB centres of a :func:`screening_scores` volume (spec §5.4).

    Local maxima of the score volume in their 3×3×3 neighbourhood (the release's MinMax filter)
    scoring at least ``threshold``, then greedy merging: in decreasing score (ties: C order), a
    maximum closer than ``nms_radius`` image voxels (Euclidean) to a kept one is dropped (a third
    party's ``final.m`` merges detections closer than 10 voxels). Plateaus of equal scores thus give
    one candidate per ``nms_radius``.

    Returns ``(centres, scores)``: int64 (M, 3) image voxels ``2v`` and float32 (M,), by decreasing score.
    """
    scores = np.asarray(scores)
    peaks = (scores == ndimage.maximum_filter(scores, size=3, mode="nearest")) & (scores >= threshold)
    where = np.argwhere(peaks)
    values = scores[peaks]  # C order, as argwhere
    order = np.argsort(-values, kind="stable")
    centres, values = STRIDE * where[order].astype(np.int64), values[order].astype(np.float32)
    if nms_radius <= 0 or len(centres) < 2:
        return centres, values
    tree = cKDTree(centres)
    dropped = np.zeros(len(centres), dtype=bool)
    kept = []
    for i in range(len(centres)):
        if dropped[i]:
            continue
        kept.append(i)
        near = np.asarray(tree.query_ball_point(centres[i], nms_radius - 1e-9), dtype=np.int64)
        dropped[near] = True
    return centres[kept], values[kept]


def lesion_centres(label: np.ndarray) -> np.ndarray:
    """One centre per CMB: int64 (M, 3), per 26-connected component of ``label > 0``, its centre of
    mass rounded, or, when that voxel is outside the component (a curved one), the component's
    voxel nearest to it, so that every centre lies on its CMB."""
    components, count = ndimage.label(np.asarray(label) > 0, structure=FULL_CONNECTIVITY)
    centres = np.zeros((count, 3), dtype=np.int64)
    for n, box in enumerate(ndimage.find_objects(components), start=1):
        voxels = np.argwhere(components[box] == n) + [s.start for s in box]
        mass = voxels.mean(axis=0)
        centre = np.rint(mass).astype(np.int64)
        if components[tuple(centre)] != n:
            centre = voxels[np.argmin(((voxels - mass) ** 2).sum(axis=1))]
        centres[n - 1] = centre
    return centres


def candidate_patch(image: np.ndarray, centre: Sequence[int], size: Sequence[int] = DISCRIMINATION_PATCH,
                    subtract_mean: bool = True) -> np.ndarray:
    """The (C, *size) float32 stage-2 window around ``centre`` (window convention, zeros beyond the
    volume), minus its mean over channels and voxels as the release does before stage 2
    (``set_x - np.mean(set_x)``, spec §5.3) when ``subtract_mean``."""
    lo = [c - (p - 1) // 2 for c, p in zip(centre, size)]
    patch = window(np.asarray(image), lo, [l + p for l, p in zip(lo, size)], 1, 0).astype(np.float32)
    return patch - patch.mean() if subtract_mean else patch


@dataclass(frozen=True)
class ScreeningPatches:
    """Stage-1 training pairs: a (C, 16, 16, 10) window and the (1, 1, 1) int64 label of its voxel.

    The window around voxel ``c`` starts at ``c − (7, 7, 4)``: the FCN's score voxel for it is the
    one :func:`screening_scores` assigns to ``c`` (module docstring). Spec §5.5: positives at CMB
    centres, negatives from non-CMB regions (the sampler's choice, e.g. ForegroundBackgroundSampler).

    Args:
        size: the patch x×y×z (paper: 16×16×10).
        flip_probability: per axis, reflect the volume when augmenting (:class:`PatchSegments`).
            Default 0.5 [M]: the paper's augmentation of the positives is not known (spec §5.5).
    """

    size: Sequence[int] = SCREENING_PATCH
    flip_probability: float = 0.5

    def __post_init__(self):
        self.segments  # noqa: B018 -- validates the settings now, not at the first patch

    @property
    def segments(self) -> PatchSegments:
        """The equivalent U-Net extractor: a ``size`` window and a 1×1×1 target, same centre."""
        return PatchSegments(tuple(self.size), 1, self.flip_probability)

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator, augment: bool = True) -> tuple[tuple[np.ndarray], np.ndarray]:
        return self.segments(image, label, centre, rng, augment)


@dataclass(frozen=True)
class CandidatePatches:
    """Stage-2 training pairs: a (C, 20, 20, 16) mean-subtracted window and a 0-d int64 target,
    the label of the sampled centre (CMB centres and hard negatives, :class:`~brainbench.training.
    mining.HardNegativeSampler`).

    Args:
        size: the patch x×y×z (paper: 20×20×16).
        subtract_mean: subtract the patch mean, as the release does at test time (spec §5.3);
            :func:`~brainbench.inference.cascade.predict_cascade` always does.
        jitter: when augmenting, the window (not the target) moves by up to ±``jitter`` voxels per
            axis, uniformly: stage-1 candidates lie on the stride-2 lattice, up to a voxel from a
            CMB's centre. Default 1 [M]; the paper's augmentation is not known.
        flip_probability: per axis, reflect the volume when augmenting
            (:func:`~brainbench.models.unet3d.random_reflection`): a few dozen CMBs are all the
            positives a small release has. Default 0.5 [M] ("positives augmented", spec §5.5).
    """

    size: Sequence[int] = DISCRIMINATION_PATCH
    subtract_mean: bool = True
    jitter: int = 1
    flip_probability: float = 0.5

    def __post_init__(self):
        positive_sizes(self.size, 3, "CandidatePatches size")
        if self.jitter < 0:
            raise BrainbenchConfigError(f"CandidatePatches jitter: must be >= 0 voxels, got {self.jitter}")

    def __call__(self, image: np.ndarray, label: np.ndarray, centre: tuple[int, int, int],
                 rng: np.random.Generator, augment: bool = True) -> tuple[tuple[np.ndarray], np.ndarray]:
        if augment:
            image, label, centre = random_reflection(image, label, centre, rng, self.flip_probability)
        target = extract_label_block(label, centre, 1)[0, 0, 0]
        if augment and self.jitter:
            centre = [c + int(d) for c, d in zip(centre, rng.integers(-self.jitter, self.jitter + 1, 3))]
        return (candidate_patch(image, centre, self.size, self.subtract_mean),), np.asarray(target, dtype=np.int64)
