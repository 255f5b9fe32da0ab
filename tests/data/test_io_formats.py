"""MetaImage and NRRD volumes read through SimpleITK land in the same (X, Y, Z) order and RAS affine as NIfTI."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from brainbench.io import load_label, load_volume, read_grid, save_volume
from brainbench.errors import BrainbenchDataError

SPACING = (0.9, 1.1, 2.5)
ORIGIN = (12.0, -20.0, 31.5)


def _oblique_direction() -> tuple[float, ...]:
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    return tuple(rotation.ravel())


def _image(array_xyz: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_xyz.transpose(2, 1, 0))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(_oblique_direction())
    return image


@pytest.mark.parametrize("suffix", [".mha", ".mhd", ".nrrd", ".nhdr"])
def test_itk_formats_match_the_same_image_written_as_nifti(tmp_path, suffix):
    """ITK's own NIfTI writer does the LPS→RAS flip; our reader must agree with nibabel on its output."""
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = _image(array)
    sitk.WriteImage(image, str(tmp_path / f"volume{suffix}"))
    sitk.WriteImage(image, str(tmp_path / "volume.nii.gz"))

    data, grid = load_volume(tmp_path / f"volume{suffix}", dtype=np.int16)
    reference, reference_grid = load_volume(tmp_path / "volume.nii.gz", dtype=np.int16)

    assert data.shape == (5, 6, 7)
    np.testing.assert_array_equal(data, array)
    np.testing.assert_array_equal(data, reference)
    assert grid.shape == reference_grid.shape
    np.testing.assert_allclose(grid.affine, reference_grid.affine, atol=1e-5)
    np.testing.assert_allclose(grid.spacing, SPACING, atol=1e-6)
    assert read_grid(tmp_path / f"volume{suffix}").matches(reference_grid)


def test_mha_origin_is_converted_from_lps_to_ras(tmp_path):
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    image = sitk.GetImageFromArray(array)
    image.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "volume.mha"))

    affine = read_grid(tmp_path / "volume.mha").affine

    np.testing.assert_allclose(affine[:3, 3], [-10.0, -20.0, 30.0])
    np.testing.assert_allclose(np.diag(affine)[:3], [-1.0, -1.0, 1.0])


def test_mha_label_map_values_are_checked(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.int16)
    array[1, 2, 3] = 4
    sitk.WriteImage(_image(array), str(tmp_path / "labels.mha"))

    labels, _ = load_label(tmp_path / "labels.mha", allowed={0, 1, 2, 3, 4})
    assert labels[1, 2, 3] == 4
    with pytest.raises(BrainbenchDataError, match=r"label values \[4\]"):
        load_label(tmp_path / "labels.mha", allowed={0, 1, 2})


def test_corrupt_mha_raises_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nthis is not a header\n")

    with pytest.raises(BrainbenchDataError, match="broken.mha"):
        load_volume(path)


def test_two_dimensional_nrrd_is_refused(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), dtype=np.float32)), str(tmp_path / "slice.nrrd"))

    with pytest.raises(BrainbenchDataError, match="expected a 3D volume"):
        read_grid(tmp_path / "slice.nrrd")


def test_vector_mha_is_refused(tmp_path):
    vector = sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), dtype=np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "vector.mha"))

    with pytest.raises(BrainbenchDataError, match="scalar volume"):
        read_grid(tmp_path / "vector.mha")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_save_volume_round_trips_through_itk_formats(tmp_path, suffix):
    """Written with save_volume, read back by SimpleITK itself: same voxels, same LPS geometry."""
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    sitk.WriteImage(_image(array), str(tmp_path / "source.nii.gz"))
    _, grid = load_volume(tmp_path / "source.nii.gz")

    save_volume(array, grid, tmp_path / f"copy{suffix}")

    image = sitk.ReadImage(str(tmp_path / f"copy{suffix}"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), array)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), _oblique_direction(), atol=1e-6)
    assert sitk.GetArrayFromImage(image).dtype == np.int16
