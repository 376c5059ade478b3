from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from segcore.geometry import to_canonical
from segcore.io import VolumeError, read_label, read_volume, write_volume
from segcore.labels import ORGANS
from tests.conftest import make_geometry
from tests.segcore.test_geometry import oblique

REAL_VOLUMES = [
    "abdomen_ct_3mm.nii.gz",
    "abdomen_ct_3mm_labels.nii.gz",
    "abdomen_ct_dicom",
    "abdomen_ct_dicom_labels.nii.gz",
]


def round_trip(source, destination):
    array, geometry = read_volume(source, check_ct=False)
    canonical, reorientation = to_canonical(array, geometry)
    write_volume(destination, reorientation.undo(canonical), reorientation.original)
    return array, geometry, *read_volume(destination, check_ct=False)


@pytest.mark.parametrize("name", REAL_VOLUMES)
def test_round_trip_on_real_files_is_exact(real_data, tmp_path, name):
    array, geometry, back, back_geometry = round_trip(real_data / name, tmp_path / "out.nii.gz")
    assert back.dtype == array.dtype
    assert np.array_equal(back, array)
    assert back_geometry.size == geometry.size
    if name.endswith(".nii.gz"):
        assert back_geometry == geometry
    else:  # DICOM positions are float64; NIfTI stores float32
        np.testing.assert_allclose(back_geometry.spacing, geometry.spacing, rtol=1e-6)
        np.testing.assert_allclose(back_geometry.origin, geometry.origin, atol=1e-4)
        np.testing.assert_allclose(back_geometry.direction, geometry.direction, atol=1e-6)


@pytest.mark.parametrize(
    "direction", [np.diag([1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]), oblique(np.eye(3), 25, 3)]
)
def test_round_trip_with_unusual_directions(write_ct, tmp_path, direction):
    source = write_ct("ct.nii.gz", direction=direction)
    array, geometry, back, back_geometry = round_trip(source, tmp_path / "out.nii")
    assert np.array_equal(back, array)
    np.testing.assert_allclose(back_geometry.direction, geometry.direction, atol=1e-6)
    np.testing.assert_allclose(back_geometry.origin, geometry.origin, atol=1e-5)


def test_dicom_series_and_its_flipped_label_file_share_the_canonical_grid(real_data):
    image, geometry = read_volume(real_data / "abdomen_ct_dicom")
    label_image = sitk.ReadImage(str(real_data / "abdomen_ct_dicom_labels.nii.gz"))
    label_geometry = make_geometry(
        sitk.GetArrayFromImage(label_image).shape,
        spacing=label_image.GetSpacing(),
        origin=label_image.GetOrigin(),
        direction=label_image.GetDirection(),
    )
    assert not label_geometry.same_grid(geometry)  # stored y-flipped
    canonical_image, image_reorientation = to_canonical(image, geometry)
    canonical_labels, label_reorientation = to_canonical(sitk.GetArrayFromImage(label_image), label_geometry)
    assert image_reorientation.canonical.same_grid(label_reorientation.canonical)
    present = [label for label in np.unique(canonical_labels) if label]
    assert present == [1, 3, 4, 5, 6, 7, 11]
    for label in present:
        mean_hu = canonical_image[canonical_labels == label].mean()
        assert -100 < mean_hu < 250, f"{ORGANS[label]}: mean {mean_hu:.0f} HU is not soft tissue"


def test_dicom_slices_are_sorted_by_position_not_file_name(real_data, tmp_path):
    # Renaming the files in reverse must not change the volume.
    folder = tmp_path / "series"
    folder.mkdir()
    files = sorted((real_data / "abdomen_ct_dicom").iterdir())
    for i, file in enumerate(reversed(files)):
        shutil.copy(file, folder / f"slice{i:03d}.dcm")
    original, geometry = read_volume(real_data / "abdomen_ct_dicom")
    renamed, renamed_geometry = read_volume(folder)
    assert np.array_equal(original, renamed)
    assert renamed_geometry == geometry
    # The first slice is the most inferior one: z increases with the index.
    assert geometry.direction_matrix[2, 2] > 0


@pytest.mark.parametrize(
    ("name", "reason"),
    [("single_slice_ct.dcm", "2-D image (size 128×128×1)"), ("mr_4d_oblique.nii.gz", "4-D image (size 128×96×24×2)")],
)
def test_wrong_dimensionality_is_refused_naming_file(real_data, name, reason):
    with pytest.raises(VolumeError) as error:
        read_volume(real_data / name)
    assert str(error.value).startswith(str(real_data / name))
    assert reason in str(error.value)


def test_truncated_and_garbage_files_are_refused(real_data, tmp_path):
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes((real_data / "abdomen_ct_3mm.nii.gz").read_bytes()[:50_000])
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.nii"
    empty.touch()
    for path, reason in [(truncated, "truncated or corrupt gzip"), (garbage, "unreadable"), (empty, "empty file")]:
        with pytest.raises(VolumeError, match=reason) as error:
            read_volume(path)
        assert error.value.path == str(path)
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")


def test_non_finite_absurd_and_non_ct_volumes_are_refused(tmp_path):
    geometry = make_geometry((4, 5, 6))
    values = np.full((4, 5, 6), -1000.0, dtype=np.float32)
    values[1, 2, 3] = np.nan
    write_volume(tmp_path / "nan.nii.gz", values, geometry)
    with pytest.raises(VolumeError, match="non-finite"):
        read_volume(tmp_path / "nan.nii.gz")
    write_volume(tmp_path / "mr.nii.gz", np.full((4, 5, 6), 300, dtype=np.int16), geometry)
    with pytest.raises(VolumeError, match="not a CT"):
        read_volume(tmp_path / "mr.nii.gz")
    write_volume(tmp_path / "big.nii.gz", np.full((4, 5, 6), -1000, dtype=np.int16), geometry)
    with pytest.raises(VolumeError, match="absurd size 6×5×4"):
        read_volume(tmp_path / "big.nii.gz", max_voxels=100)


def test_label_checks(tmp_path):
    geometry = make_geometry((4, 5, 6))
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 13
    write_volume(tmp_path / "ok.nii.gz", labels, geometry)
    assert np.array_equal(read_label(tmp_path / "ok.nii.gz", geometry), labels)

    labels[0, 0, 0] = 14
    write_volume(tmp_path / "range.nii.gz", labels, geometry)
    with pytest.raises(VolumeError, match=r"labels outside 0\.\.13 \(found 0\.\.14\)"):
        read_label(tmp_path / "range.nii.gz", geometry)

    write_volume(tmp_path / "shifted.nii.gz", np.zeros((4, 5, 6), np.uint8), make_geometry((4, 5, 6), origin=(0, 0, 0)))
    with pytest.raises(VolumeError, match="label grid differs from the CT grid of ct.nii.gz: origin") as error:
        read_label(tmp_path / "shifted.nii.gz", geometry, image_path="ct.nii.gz")
    assert error.value.path == str(tmp_path / "shifted.nii.gz")

    write_volume(tmp_path / "small.nii.gz", np.zeros((4, 5, 5), np.uint8), make_geometry((4, 5, 5)))
    with pytest.raises(VolumeError, match="size"):
        read_label(tmp_path / "small.nii.gz", geometry)

    write_volume(tmp_path / "float.nii.gz", np.full((4, 5, 6), 1.5, np.float32), geometry)
    with pytest.raises(VolumeError, match="not integers"):
        read_label(tmp_path / "float.nii.gz", geometry)


def test_truncated_uncompressed_nifti_is_refused(write_ct, tmp_path):
    source = write_ct("ct.nii")
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(VolumeError, match="truncated file"):
        read_volume(truncated)
