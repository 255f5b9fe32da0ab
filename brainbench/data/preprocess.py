"""The review's preprocessing pipeline as composable stages, applied once per case before caching.

A :class:`Pipeline` runs stages in order on :class:`CaseArrays` (channels, brain mask, label and
grid of one case). Each stage is a small dataclass built by Hydra (``conf/preprocess/``) whose
``config()`` holds every value that changes its output, so the cache keys on it; stages marked
``cached`` (the slow ones: registration, skull stripping, N4, denoising, resampling) also keep their
output so that changing a later stage does not recompute them. Stages that learn
(:class:`HistogramStandardization`) are fitted on the training split, and what they learned is part
of their config, hence of the cache key.

Geometry stages change the array grid; ``CaseArrays.case_to_array`` (4×4 RAS, mm) maps points of the
case's own grid to points of the array grid, so predictions can be written back on the case's grid.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import SimpleITK as sitk

from brainbench.challenges.base import Case, ChallengeAdapter
from brainbench.io import Grid, load_label, load_volume, read_grid, save_volume
from brainbench.data.registration import from_sitk, register, resample, to_sitk
from brainbench.errors import BrainbenchConfigError, BrainbenchDataError


@dataclass(frozen=True)
class CaseArrays:
    """One case in memory while it is preprocessed.

    Attributes:
        images: (C, X, Y, Z) float32 channels on ``grid``.
        modalities: the C channel names.
        grid: voxel grid of the arrays.
        brain: (X, Y, Z) bool brain mask, ``None`` until a stage (or the challenge) provides one.
        label: (X, Y, Z) int16 label values of the edition, or ``None``.
        case_to_array: 4×4 RAS matrix mapping case-grid points (mm) to array-grid points.
        case_grid: the case's own grid (its reference channel's); ``None``: ``grid``.
    """

    images: np.ndarray
    modalities: tuple[str, ...]
    grid: Grid
    brain: np.ndarray | None = None
    label: np.ndarray | None = None
    case_to_array: np.ndarray = field(default_factory=lambda: np.eye(4))
    case_grid: Grid | None = None

    def brain_or_nonzero(self) -> np.ndarray:
        """The brain mask, or every voxel where any channel is non-zero (skull-stripped releases)."""
        return self.brain if self.brain is not None else np.any(self.images != 0, axis=0)

    def channel_indices(self, channels: Sequence[str] | None) -> list[int]:
        """Indices of ``channels`` (all when ``None``); unknown names are a config error."""
        if channels is None:
            return list(range(len(self.modalities)))
        unknown = sorted(set(channels) - set(self.modalities))
        if unknown:
            raise BrainbenchConfigError(f"preprocess channels {unknown} not among the case's {list(self.modalities)}")
        return [self.modalities.index(name) for name in channels]

    def channel_index(self, name: str | None) -> int:
        """Index of channel ``name`` (the first channel when ``None``)."""
        return self.channel_indices([name] if name else None)[0]

    def resampled(self, target: Grid, transform: np.ndarray | None = None) -> CaseArrays:
        """Every array sampled on ``target`` (linear for images, nearest for label and mask).

        ``transform`` (4×4 RAS) maps ``target`` points to current array points (identity if ``None``).
        """
        images = np.stack([resample(c, self.grid, target, "linear", transform) for c in self.images])

        def nearest(array):
            return None if array is None else resample(array, self.grid, target, "nearest", transform)

        brain = nearest(None if self.brain is None else self.brain.astype(np.uint8))
        to_array = np.eye(4) if transform is None else np.linalg.inv(transform)
        return replace(self, images=images.astype(np.float32), grid=target, label=nearest(self.label),
                       case_grid=self.case_grid or self.grid,
                       brain=None if brain is None else brain.astype(bool), case_to_array=to_array @ self.case_to_array)


def load_case(case: Case, adapter: ChallengeAdapter) -> CaseArrays:
    """Read a case's channels, label and shipped brain mask onto the reference channel's grid.

    The reference is ``edition.reference_grid`` (or the first channel). Channels on other grids are
    resampled onto it (linear, label and mask nearest) when the edition names a reference grid;
    otherwise any grid difference is a :class:`BrainbenchDataError` naming the file.
    ``case.meta["brain_mask"]`` (a path) is the challenge's own brain mask when it ships one.
    """
    edition = adapter.edition
    if edition.reference_grid is None:
        adapter.validate(case, check_label_values=False)
    reference = edition.reference_grid or next(iter(case.images))
    if reference not in case.images:
        raise BrainbenchDataError(case.case_id, f"reference channel '{reference}' missing; found {list(case.images)}")
    grid = read_grid(case.images[reference])

    def on_grid(array: np.ndarray, own: Grid, interpolation: str) -> np.ndarray:
        return array if own.matches(grid) else resample(array, own, grid, interpolation)

    images = np.stack([on_grid(*load_volume(path), "linear") for path in case.images.values()])
    label = None
    if case.label is not None:
        label = on_grid(*load_label(case.label, allowed=set(edition.label_values)), "nearest")
    brain = None
    if case.meta.get("brain_mask"):
        mask, mask_grid = load_label(case.meta["brain_mask"])
        brain = on_grid(mask, mask_grid, "nearest") > 0
    return CaseArrays(images=images.astype(np.float32), modalities=tuple(case.images), grid=grid, brain=brain,
                      label=label)


class Stage:
    """A preprocessing step: ``CaseArrays → CaseArrays``.

    ``cached``: the cache keeps this stage's output (worth it for slow stages).
    ``config()``: the values that change the output (the cache key).
    """

    cached: ClassVar[bool] = False

    def config(self) -> dict:
        return {"name": type(self).__name__, **asdict(self)}

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        raise NotImplementedError


@dataclass
class ZScoreInBrain(Stage):
    """Each channel z-scored inside the brain, 0 outside (DeepMedic, spec §3.5; Havaei, spec §1.2).

    The brain is the mask of an earlier stage, else the non-zero voxels (skull-stripped releases).

    Args:
        clip_sigma: clip z-scores to ``±clip_sigma`` after normalisation (``None`` keeps them).
    """

    clip_sigma: float | None = None

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        brain = arrays.brain_or_nonzero()
        out = np.zeros(arrays.images.shape, dtype=np.float32)
        if brain.any():
            for channel, image in enumerate(arrays.images):
                values = image[brain].astype(np.float64)
                std = values.std()
                normalised = (values - values.mean()) / (std if std > 0 else 1.0)
                if self.clip_sigma is not None:
                    normalised = np.clip(normalised, -self.clip_sigma, self.clip_sigma)
                out[channel][brain] = normalised
        return replace(arrays, images=out, brain=brain)


@dataclass
class PercentileClip(Stage):
    """Clip each channel to its ``lower``–``upper`` percentiles inside the brain (Havaei: 1 % / 99 %).

    Args:
        lower, upper: percentiles (0–100) of the brain voxels.
        channels: channel names to clip (``None``: all).
    """

    lower: float = 1.0
    upper: float = 99.0
    channels: list[str] | None = None

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        brain = arrays.brain_or_nonzero()
        images = arrays.images.copy()
        for c in arrays.channel_indices(self.channels):
            if brain.any():
                low, high = np.percentile(images[c][brain], [self.lower, self.upper])
                images[c][brain] = np.clip(images[c][brain], low, high)
        return replace(arrays, images=images)


@dataclass
class N4BiasCorrection(Stage):
    """N4 bias-field correction (Tustison et al. 2010, SimpleITK) of the chosen channels.

    The field is fitted on the image shrunk by ``shrink_factor`` (inside the brain's positive voxels)
    and evaluated at full resolution; the channel is divided by it.

    Args:
        channels: channel names to correct (``None``: all; Havaei: ``[t1, t1ce]``).
        shrink_factor: subsampling factor per axis for the fit (4: ≈1/64 of the voxels).
        iterations: maximum iterations per fitting level (one entry per level).
        convergence: stop a level when the field changes less than this.
    """

    channels: list[str] | None = None
    shrink_factor: int = 4
    iterations: list[int] = field(default_factory=lambda: [50, 50, 30, 20])
    convergence: float = 1e-3
    cached: ClassVar[bool] = True

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        brain = arrays.brain_or_nonzero()
        images = arrays.images.copy()
        for c in arrays.channel_indices(self.channels):
            mask = brain & (images[c] > 0)
            if mask.sum() < 100:
                continue
            image = to_sitk(images[c], arrays.grid)
            shrink = [int(self.shrink_factor)] * 3
            n4 = sitk.N4BiasFieldCorrectionImageFilter()
            n4.SetMaximumNumberOfIterations([int(i) for i in self.iterations])
            n4.SetConvergenceThreshold(float(self.convergence))
            n4.Execute(sitk.Shrink(image, shrink), sitk.Shrink(to_sitk(mask.astype(np.uint8), arrays.grid), shrink))
            log_field = from_sitk(n4.GetLogBiasFieldAsImage(image))[0]
            images[c] = np.where(mask, images[c] / np.exp(log_field), images[c])
        return replace(arrays, images=images)


@dataclass
class HistogramStandardization(Stage):
    """Nyúl & Udupa piecewise-linear histogram standardisation (TorchIO's implementation).

    :meth:`fit` learns one set of landmarks per channel from the training cases (inside the brain);
    ``__call__`` maps each channel's landmarks onto them (Pereira et al., spec §2.3).

    Args:
        cutoff: quantiles (0–1) bounding the intensities of interest, TorchIO's ``cutoff``.
        landmarks: channel → learned landmarks; set by :meth:`fit` (replacing any given value).
    """

    cutoff: list[float] = field(default_factory=lambda: [0.01, 0.99])
    landmarks: dict[str, list[float]] | None = None

    def fit(self, samples: Iterable[CaseArrays]) -> None:
        """Learn the landmarks from ``samples`` (the training split after the earlier stages)."""
        from torchio.transforms import HistogramStandardization as TorchioNyul

        with tempfile.TemporaryDirectory(prefix="brainbench-nyul-") as tmp:
            paths: dict[str, list[Path]] = {}
            masks: list[Path] = []
            for i, arrays in enumerate(samples):
                masks.append(save_volume(arrays.brain_or_nonzero().astype(np.uint8), arrays.grid,
                                         Path(tmp) / f"{i}_mask.nii"))
                for name, image in zip(arrays.modalities, arrays.images):
                    paths.setdefault(name, []).append(save_volume(image, arrays.grid, Path(tmp) / f"{i}_{name}.nii"))
            if not masks:
                raise BrainbenchConfigError("HistogramStandardization.fit needs at least one training case")
            self.landmarks = {
                name: [round(float(v), 6) for v in TorchioNyul.train(files, cutoff=tuple(self.cutoff),
                                                                       mask_path=masks, progress=False)]
                for name, files in paths.items()
            }

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        import torch
        import torchio as tio

        if self.landmarks is None:
            raise BrainbenchConfigError("preprocess HistogramStandardization: not fitted (call cache.fit on the "
                                        "training split, or give landmarks)")
        brain = arrays.brain_or_nonzero()
        mask = torch.from_numpy(brain[None])
        subject = tio.Subject({name: tio.ScalarImage(tensor=torch.from_numpy(image[None].copy()),
                                                     affine=arrays.grid.affine)
                               for name, image in zip(arrays.modalities, arrays.images)})
        transform = tio.HistogramStandardization({k: np.asarray(v) for k, v in self.landmarks.items()},
                                                 masking_method=lambda _: mask)
        out = transform(subject)
        images = np.stack([out[name].data[0].numpy() for name in arrays.modalities]).astype(np.float32)
        return replace(arrays, images=np.where(brain, images, 0.0).astype(np.float32))


@dataclass
class CurvatureFlowDenoising(Stage):
    """Rician-noise reduction by curvature flow (SimpleITK ``CurvatureFlow``), inside the brain.

    At the SNRs of clinical MRI (> 3 in tissue) Rician noise is close to Gaussian, where curvature
    flow — edge-preserving anisotropic diffusion — removes it without blurring tissue borders, at a
    fraction of the cost of patch-based (non-local means) denoising on 2 cores.

    Args:
        time_step: diffusion step in voxel units (stable up to 0.0625 in 3D); SimpleITK's step is in
            mm², so it is multiplied by the smallest squared spacing.
        iterations: diffusion steps; more means smoother.
        channels: channel names to denoise (``None``: all).
    """

    time_step: float = 0.0625
    iterations: int = 5
    channels: list[str] | None = None
    cached: ClassVar[bool] = True

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        brain = arrays.brain_or_nonzero()
        images = arrays.images.copy()
        for c in arrays.channel_indices(self.channels):
            step_mm2 = float(self.time_step) * min(arrays.grid.spacing) ** 2
            smooth = sitk.CurvatureFlow(to_sitk(images[c], arrays.grid), step_mm2, int(self.iterations))
            images[c] = np.where(brain, from_sitk(smooth)[0], images[c])
        return replace(arrays, images=images)


@dataclass
class ResampleSpacing(Stage):
    """Resample every array to ``spacing_mm`` (mm, per axis) over the same field of view (SimpleITK)."""

    spacing_mm: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    cached: ClassVar[bool] = True

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        old = np.asarray(arrays.grid.spacing)
        new = np.asarray(self.spacing_mm, dtype=np.float64)
        shape = tuple(int(max(1, round(n))) for n in np.asarray(arrays.grid.shape) * old / new)
        affine = arrays.grid.affine.copy()
        affine[:3, :3] = affine[:3, :3] / old * new
        return arrays.resampled(Grid(shape=shape, affine=affine))


@dataclass
class CoRegister(Stage):
    """Rigid or affine co-registration of every channel onto the reference channel (SimpleITK, Mattes MI).

    Args:
        reference: channel the others are aligned to (``None``: the first); the label stays on it.
        transform: ``rigid`` (6 dof) or ``affine`` (12 dof).
        iterations: optimiser iterations per resolution level.
        sampling: fraction of voxels sampled by the metric per iteration.
    """

    reference: str | None = None
    transform: str = "rigid"
    iterations: int = 200
    sampling: float = 0.2
    cached: ClassVar[bool] = True

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        ref = arrays.channel_index(self.reference)
        images = arrays.images.copy()
        for c in range(len(images)):
            if c != ref:
                matrix = register(images[ref], arrays.grid, images[c], arrays.grid, self.transform,
                                  self.iterations, self.sampling)
                images[c] = resample(images[c], arrays.grid, arrays.grid, "linear", matrix)
        return replace(arrays, images=images)


@dataclass
class RegisterToTemplate(Stage):
    """Register the case to the MNI152 2009a template and resample everything onto its grid.

    ``channel`` (T1-weighted works best) is registered to the template T1 (nilearn's copy, cropped
    around the brain at ``spacing_mm``); all arrays follow with the same transform. Predictions are
    mapped back through ``case_to_array``.
    """

    channel: str | None = None
    transform: str = "affine"
    spacing_mm: float = 1.0
    iterations: int = 200
    sampling: float = 0.2
    cached: ClassVar[bool] = True

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        from brainbench.data.synth.anatomy import template_tissues

        anatomy = template_tissues(float(self.spacing_mm))
        c = arrays.channel_index(self.channel)
        matrix = register(anatomy.t1, anatomy.grid, arrays.images[c], arrays.grid, self.transform,
                          self.iterations, self.sampling)
        return arrays.resampled(anatomy.grid, matrix)


@dataclass
class SkullStrip(Stage):
    """Brain mask, then every channel set to 0 outside it.

    Methods: ``nonzero`` (already skull-stripped releases: any non-zero channel), ``case_mask`` (the
    challenge's own mask, ``Case.meta["brain_mask"]``), ``template`` (the MNI152 intracranial mask
    carried over by affine registration of the template T1 onto ``channel``), ``auto`` (the case's
    mask if shipped, else ``nonzero`` when at least ``zero_fraction`` of the voxels are exactly 0,
    else ``template``).
    """

    method: str = "auto"
    channel: str | None = None
    transform: str = "affine"
    zero_fraction: float = 0.3
    spacing_mm: float = 2.0
    cached: ClassVar[bool] = True

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        method = self.method
        if method == "auto":
            stripped = float(np.mean(np.all(arrays.images == 0, axis=0))) >= self.zero_fraction
            method = "case_mask" if arrays.brain is not None else "nonzero" if stripped else "template"
        if method == "nonzero":
            brain = np.any(arrays.images != 0, axis=0)
        elif method == "case_mask":
            if arrays.brain is None:
                raise BrainbenchConfigError("preprocess SkullStrip method=case_mask: the case ships no brain mask")
            brain = arrays.brain
        elif method == "template":
            brain = self._template_mask(arrays)
        else:
            raise BrainbenchConfigError(f"preprocess SkullStrip method '{self.method}' unknown; "
                                        "choose auto, nonzero, case_mask or template")
        return replace(arrays, images=np.where(brain, arrays.images, 0.0).astype(np.float32), brain=brain)

    def _template_mask(self, arrays: CaseArrays) -> np.ndarray:
        from brainbench.data.synth.anatomy import template_tissues

        anatomy = template_tissues(float(self.spacing_mm))
        c = arrays.channel_index(self.channel)
        matrix = register(arrays.images[c], arrays.grid, anatomy.t1, anatomy.grid, self.transform)
        return resample(anatomy.brain_mask.astype(np.uint8), anatomy.grid, arrays.grid, "nearest", matrix) > 0


@dataclass
class Pipeline:
    """Stages applied in order; Hydra builds it from ``conf/preprocess/<preset>.yaml``."""

    stages: list[Stage]

    def config(self) -> dict:
        return {"name": "Pipeline", "stages": [stage.config() for stage in self.stages]}

    def __call__(self, arrays: CaseArrays) -> CaseArrays:
        for stage in self.stages:
            arrays = stage(arrays)
        return arrays


def as_pipeline(preprocessor: Pipeline | Stage) -> Pipeline:
    """A single stage (e.g. ``ZScoreInBrain()``) as a one-stage pipeline."""
    return preprocessor if isinstance(preprocessor, Pipeline) else Pipeline([preprocessor])

