"""SimpleITK geometry for preprocessing: nibabel grids ↔ SimpleITK images, resampling, registration.

Arrays stay in nibabel voxel order ``(X, Y, Z)`` and grids in nibabel's RAS mm affines; SimpleITK
works in LPS, so every point transform crossing the boundary is conjugated with ``diag(-1, -1, 1)``.
Transforms are exchanged as 4×4 RAS matrices mapping points of the output (fixed) space to points of
the input (moving) space, which is what resampling needs.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from brainbench.io import Grid
from brainbench.errors import BrainbenchDataError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
TRANSFORMS = {"rigid": sitk.Euler3DTransform, "affine": lambda: sitk.AffineTransform(3)}


def to_sitk(array: np.ndarray, grid: Grid) -> sitk.Image:
    """``array`` (X, Y, Z) on ``grid`` as a SimpleITK image with LPS origin and direction."""
    lps = RAS_TO_LPS @ grid.affine
    spacing = np.asarray(grid.spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    image.SetDirection(tuple(float(d) for d in (lps[:3, :3] / spacing).ravel()))
    return image


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, Grid]:
    """Inverse of :func:`to_sitk`: the ``(X, Y, Z)`` array and its RAS grid."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return array, Grid(shape=tuple(int(s) for s in array.shape), affine=RAS_TO_LPS @ lps)


def resample(array: np.ndarray, grid: Grid, target: Grid, interpolation: str = "linear",
             transform: np.ndarray | None = None) -> np.ndarray:
    """``array`` on ``grid`` sampled at the voxels of ``target``; 0 outside the input.

    ``transform`` (4×4 RAS) maps target points to input points (identity: same physical space).
    Labels and masks use ``interpolation="nearest"``; the dtype is kept.
    """
    image = to_sitk(array, grid)
    reference = to_sitk(np.zeros(target.shape, np.uint8), target)
    out = sitk.Resample(image, reference, _to_sitk_transform(transform), INTERPOLATORS[interpolation], 0.0,
                        image.GetPixelID())
    return from_sitk(out)[0]


def register(fixed: np.ndarray, fixed_grid: Grid, moving: np.ndarray, moving_grid: Grid,
             transform: str = "rigid", iterations: int = 200, sampling: float = 0.2,
             shrink_factors: tuple[int, ...] = (4, 2, 1), seed: int = 0) -> np.ndarray:
    """4×4 RAS matrix mapping fixed points to moving points, by Mattes mutual information.

    Multi-resolution (``shrink_factors``, smoothing σ = factor/2 voxels), regular-step gradient descent
    with physical-shift scaling, initialised by aligning the centres of mass. ``sampling`` is the
    fraction of voxels used per iteration (random, seeded).
    """
    if transform not in TRANSFORMS:
        raise BrainbenchDataError(transform, f"unknown transform; choose one of {sorted(TRANSFORMS)}")
    fixed_image = sitk.Cast(to_sitk(fixed, fixed_grid), sitk.sitkFloat32)
    moving_image = sitk.Cast(to_sitk(moving, moving_grid), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(fixed_image, moving_image, TRANSFORMS[transform](),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4,
                                                    numberOfIterations=iterations, relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink_factors))
    method.SetSmoothingSigmasPerLevel([f / 2.0 for f in shrink_factors])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=True)
    try:
        method.Execute(fixed_image, moving_image)
    except RuntimeError as error:
        raise BrainbenchDataError("registration", f"SimpleITK registration failed ({str(error).splitlines()[0]})")
    return _to_ras_matrix(initial)


def _to_ras_matrix(transform: sitk.Transform) -> np.ndarray:
    """A SimpleITK matrix-offset transform (LPS) as a 4×4 RAS point transform."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    matrix[:3, 3] = np.asarray(transform.GetTranslation()) + centre - matrix[:3, :3] @ centre
    return RAS_TO_LPS @ matrix @ RAS_TO_LPS


def _to_sitk_transform(matrix: np.ndarray | None) -> sitk.Transform:
    if matrix is None:
        return sitk.Transform()
    lps = RAS_TO_LPS @ np.asarray(matrix, dtype=np.float64) @ RAS_TO_LPS
    return sitk.AffineTransform(tuple(lps[:3, :3].ravel()), tuple(lps[:3, 3]), (0.0, 0.0, 0.0))
