from __future__ import annotations

import gzip
import shutil
import threading

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from segcore.labels import ORGANS
from segcore.volumes import VolumeError, read_labels_on_grid, read_volume, write_volume
from segcore.volumes.geometry import to_canonical
from testkit import CT_AFFINE, nifti_with_header, small_ct
from tests.conftest import make_geometry
from tests.segcore.volumes.test_geometry import oblique

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
    assert np.array_equal(read_labels_on_grid(tmp_path / "ok.nii.gz", geometry), labels)

    labels[0, 0, 0] = 14
    write_volume(tmp_path / "range.nii.gz", labels, geometry)
    with pytest.raises(VolumeError, match=r"labels outside 0\.\.13 \(found 0\.\.14\)"):
        read_labels_on_grid(tmp_path / "range.nii.gz", geometry)

    write_volume(tmp_path / "shifted.nii.gz", np.zeros((4, 5, 6), np.uint8), make_geometry((4, 5, 6), origin=(0, 0, 0)))
    with pytest.raises(VolumeError, match="label grid differs from the CT grid of ct.nii.gz: origin") as error:
        read_labels_on_grid(tmp_path / "shifted.nii.gz", geometry, image_path="ct.nii.gz")
    assert error.value.path == str(tmp_path / "shifted.nii.gz")

    write_volume(tmp_path / "small.nii.gz", np.zeros((4, 5, 5), np.uint8), make_geometry((4, 5, 5)))
    with pytest.raises(VolumeError, match="size"):
        read_labels_on_grid(tmp_path / "small.nii.gz", geometry)

    write_volume(tmp_path / "float.nii.gz", np.full((4, 5, 6), 1.5, np.float32), geometry)
    with pytest.raises(VolumeError, match="not integers"):
        read_labels_on_grid(tmp_path / "float.nii.gz", geometry)


def test_truncated_uncompressed_nifti_is_refused(write_ct, tmp_path):
    source = write_ct("ct.nii")
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(source.read_bytes()[:-100])
    with pytest.raises(VolumeError, match="truncated file"):
        read_volume(truncated)


def test_sizes_are_refused_from_the_header_before_any_voxel_is_read(tmp_path):
    # The header claims 1100×1000×1000 int16 (2.2 GB) but the file holds 10 KB: the size is refused
    # first (a reader that decodes first would report truncation, after decompressing everything).
    path = tmp_path / "claims_huge.nii.gz"
    image = nib.Nifti1Image(small_ct(), CT_AFFINE)
    header = image.header.copy()
    header.set_data_shape((1100, 1000, 1000))
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock + b"\0" * 4 + small_ct().tobytes())
    with pytest.raises(VolumeError, match="absurd size 1100×1000×1000") as error:
        read_volume(path)
    assert error.value.kind == "too_large"

    # Bytes count as well as voxels: float64 doubles the cost of every voxel.
    wide = nifti_with_header(tmp_path / "wide.nii.gz", small_ct(dtype=np.float64), CT_AFFINE)
    with pytest.raises(VolumeError, match="bytes"):
        read_volume(wide, max_bytes=8 * 7 * 6 * 4)
    assert read_volume(wide, max_bytes=8 * 7 * 6 * 8)[0].shape == (6, 7, 8)


@pytest.mark.parametrize(
    ("pixdim", "words"),
    [(0.0, "spacing"), (np.nan, "spacing"), (np.inf, "spacing"), (-3.0, "spacing"), (1e-30, "spacing"),
     (500.0, "spacing")],
)  # fmt: skip
def test_impossible_voxel_spacing_is_refused_not_replaced(tmp_path, pixdim, words):
    def edit(header):
        header["pixdim"][1] = pixdim

    path = nifti_with_header(tmp_path / "bad_pixdim.nii.gz", small_ct(), CT_AFFINE, edit)
    with pytest.raises(VolumeError, match=words) as error:
        read_volume(path)
    assert error.value.kind == "geometry" and "pixdim" in error.value.reason


def test_qform_and_sform_that_place_voxels_differently_are_refused(tmp_path):
    sheared = CT_AFFINE.copy()
    sheared[0, 1] = 1.5

    def edit(header):
        header.set_qform(CT_AFFINE, code=1)
        header.set_sform(sheared, code=1)

    path = nifti_with_header(tmp_path / "sheared.nii.gz", small_ct(), CT_AFFINE, edit)
    with pytest.raises(VolumeError, match="sform") as error:
        read_volume(path)
    assert "qform" in error.value.reason and error.value.kind == "geometry"

    def neither(header):
        header.set_qform(None, code=0)
        header.set_sform(None, code=0)

    unplaced = nifti_with_header(tmp_path / "no_orientation.nii.gz", small_ct(), CT_AFFINE, neither)
    with pytest.raises(VolumeError, match="qform_code 0, sform_code 0"):
        read_volume(unplaced)  # ITK and nibabel fall back to different placements
    assert read_volume(nifti_with_header(tmp_path / "fine.nii.gz", small_ct(), CT_AFFINE))[0].shape == (6, 7, 8)


def test_dicom_series_size_is_checked_before_its_pixels_are_decoded(real_data, tmp_path):
    # The last file's pixel data is overwritten with noise: decoding it would fail, so a refusal
    # for size proves the check comes from the headers first.
    folder = tmp_path / "series"
    shutil.copytree(real_data / "abdomen_ct_dicom", folder)
    last = sorted(folder.iterdir())[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] + np.random.default_rng(0).bytes(len(data) - len(data) // 2))
    with pytest.raises(VolumeError, match="absurd size 512×512×20") as error:
        read_volume(folder, max_voxels=512 * 512 * 10)
    assert error.value.kind == "too_large"


def test_error_kinds_tell_unreadable_from_not_a_ct(real_data, tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VolumeError) as error:
        read_volume(garbage)
    assert error.value.kind == "unreadable"
    with pytest.raises(VolumeError) as error:
        read_volume(real_data / "mr_4d_oblique.nii.gz")
    assert error.value.kind == "not_3d"
    with pytest.raises(VolumeError) as error:
        read_volume(tmp_path / "missing.nii.gz")
    assert error.value.kind == "unreadable"


def test_a_non_finite_sform_is_refused_before_it_reaches_itk(tmp_path):
    # ITK's reader never returns from this header (an Inf in srow_y with sform_code 4): a server
    # worker would hold its slot for good. The reader runs in a thread so that a hang fails the test.
    def infinite(header):
        header["sform_code"] = 4
        header["srow_y"] = [-3.8, np.inf, 0.01, 1.98]

    path = nifti_with_header(tmp_path / "inf_srow.nii.gz", small_ct(), CT_AFFINE, infinite)
    outcome: list[BaseException] = []

    def read():
        try:
            read_volume(path)
        except BaseException as error:  # noqa: BLE001 - the outcome is inspected below
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert outcome and isinstance(outcome[0], VolumeError), "the reader hung or raised something else"
    assert "srow_y" in outcome[0].reason and outcome[0].kind == "geometry"


def series_without(real_data, folder, dropped: set[int]):
    """The shared DICOM series minus the files at ``dropped`` (names sort by position)."""
    folder.mkdir()
    for index, source in enumerate(sorted((real_data / "abdomen_ct_dicom").iterdir())):
        if index not in dropped:
            shutil.copy(source, folder / source.name)
    return folder


@pytest.mark.parametrize(("dropped", "gap"), [({10}, "4 mm"), ({4, 12, 13}, "6 mm")])
def test_dicom_series_with_missing_slices_is_refused_naming_the_gap(real_data, tmp_path, dropped, gap):
    folder = series_without(real_data, tmp_path / "gappy", dropped)
    with pytest.raises(VolumeError, match="non-uniform slice spacing") as error:
        read_volume(folder)
    assert f"{gap} between slice" in error.value.reason and "2 mm apart" in error.value.reason
    assert error.value.kind == "geometry"


def enhanced_ct(real_data, folder):
    """The shared series as one legacy-converted enhanced (multi-frame) CT file, made with highdicom
    (the shared files lack the UIDs a conversion needs: fresh ones are given)."""
    import highdicom
    import pydicom
    from pydicom.uid import CTImageStorage, generate_uid

    slices = [pydicom.dcmread(path) for path in sorted((real_data / "abdomen_ct_dicom").iterdir())]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for number, dataset in enumerate(slices, start=1):
        dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, frame
        dataset.InstanceNumber = number
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices, series_instance_uid=generate_uid(), series_number=1, sop_instance_uid=generate_uid(),
        instance_number=1,
    )  # fmt: skip
    folder.mkdir()
    enhanced.save_as(folder / "enhanced.dcm")
    return folder


def test_an_enhanced_multi_frame_ct_reads_as_the_series_it_came_from(real_data, tmp_path):
    array, geometry = read_volume(enhanced_ct(real_data, tmp_path / "enhanced"))
    reference, reference_geometry = read_volume(real_data / "abdomen_ct_dicom")
    assert array.shape == (20, 512, 512)
    assert np.array_equal(to_canonical(array, geometry)[0], to_canonical(reference, reference_geometry)[0])
    assert np.allclose(corners(geometry), corners(reference_geometry), atol=1e-3)  # the same box in space


def corners(geometry):
    """The physical positions of a grid's 8 corner voxels, in a fixed order."""
    index = np.array(np.meshgrid(*[[0, n - 1] for n in geometry.size], indexing="ij")).reshape(3, -1).T
    return np.array(sorted(map(tuple, np.round(geometry.index_to_physical(index), 4))))


@pytest.mark.parametrize("variant", ["big_endian", "scaled", "uncompressed"])
def test_voxels_read_as_nibabel_reads_them(tmp_path, variant):
    data = small_ct()
    image = nib.Nifti1Image(data.astype(">i2") if variant == "big_endian" else data, CT_AFFINE)
    if variant == "scaled":
        image.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / ("ct.nii" if variant == "uncompressed" else "ct.nii.gz")
    nib.save(image, path)
    array, _ = read_volume(path)
    assert np.allclose(array, np.asanyarray(nib.load(path).dataobj).transpose(2, 1, 0))
    assert array.flags.writeable


@pytest.mark.parametrize("offset", [0, 100, 348, 351, 2**40])
def test_a_payload_offset_inside_the_header_or_past_any_extension_is_refused(tmp_path, offset):
    # vox_offset 0 in a single .nii file read the 348 header bytes as voxels (a shifted mask);
    # ITK and nibabel each repair it differently, so it is refused, naming the field.
    def edit(header):
        header["vox_offset"] = offset

    path = nifti_with_header(tmp_path / "offset.nii.gz", small_ct(), CT_AFFINE, edit)
    with pytest.raises(VolumeError, match="vox_offset") as error:
        read_volume(path)
    assert error.value.kind == "unreadable"


def test_a_nifti2_payload_offset_inside_its_header_is_refused(tmp_path):
    data = small_ct()
    header = nib.Nifti2Image(data, CT_AFFINE).header
    header["vox_offset"] = 352  # a NIfTI-1 offset: inside the 540-byte NIfTI-2 header
    path = tmp_path / "offset2.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    with pytest.raises(VolumeError, match="vox_offset"):
        read_volume(path)
    header["vox_offset"] = 544  # right, but SimpleITK reads no NIfTI-2: refused for that reason
    path.write_bytes(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    with pytest.raises(VolumeError) as error:
        read_volume(path)
    assert "vox_offset" not in error.value.reason
