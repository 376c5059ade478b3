"""Inputs that used to crash the process, be read wrongly or cost memory: file names that are not
UTF-8, DICOM slices that do not match their series, truncated files claiming huge volumes, values
that are not Hounsfield units, and a mask write on a full disk."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import tracemalloc

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian

from segcore.volumes import VolumeError, check_file_header, hu_scale_warning, read_volume, write_volume
from testkit import CT_AFFINE
from tests.conftest import make_geometry

LATIN1_NAME = os.fsdecode(b"caf\xe9_0000.nii.gz")
"""``café_0000.nii.gz`` as a Latin-1 system writes it: not UTF-8."""


def test_a_nifti_name_that_is_not_utf8_is_refused_naming_the_file(real_data, tmp_path):
    # SimpleITK aborts the whole process (std::logic_error) on such a name.
    path = tmp_path / LATIN1_NAME
    shutil.copy(real_data / "abdomen_ct_3mm.nii.gz", path)
    for read in (read_volume, check_file_header):
        with pytest.raises(VolumeError, match="not valid UTF-8") as error:
            read(path)
        assert "caf\\xe9_0000.nii.gz" in str(error.value) and error.value.kind == "unreadable"
        str(error.value).encode("utf-8")  # printable anywhere: no surrogate escapes left


def test_a_dicom_slice_name_that_is_not_utf8_is_refused_naming_the_slice(real_data, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(real_data / "abdomen_ct_dicom", folder)
    first = sorted(folder.iterdir())[0]
    first.rename(folder / os.fsdecode(b"slice\xe9.dcm"))
    with pytest.raises(VolumeError, match="not valid UTF-8") as error:
        read_volume(folder)
    assert "slice\\xe9.dcm" in str(error.value)


def edited_series(real_data, folder, edit, count: int = 1):
    """A copy of the shared series whose first ``count`` files (by name) went through ``edit(dataset)``."""
    shutil.copytree(real_data / "abdomen_ct_dicom", folder)
    files = sorted(folder.iterdir())
    for path in files[:count]:
        dataset = pydicom.dcmread(path)
        edit(dataset, path)
        dataset.save_as(path)
    return folder, [path.name for path in files[:count]]


def turned(degrees: float):
    def edit(dataset, path):
        cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        dataset.ImageOrientationPatient = [float(cos), float(sin), 0.0, float(-sin), float(cos), 0.0]

    return edit


def finer(dataset, path):
    dataset.PixelSpacing = [0.7, 0.7]


def smaller(dataset, path):
    """A 256×256 crop of the slice, stored uncompressed (the same stored values and rescale)."""
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0, :256, :256].astype(np.int64)
    stored = (stored - int(dataset.RescaleIntercept)) // int(dataset.RescaleSlope)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.Rows = dataset.Columns = 256
    dataset.PixelData = stored.astype(np.uint16).tobytes()


@pytest.mark.parametrize(
    ("edit", "count", "what"),
    [
        (turned(90), 1, "orientation"),
        (turned(8), 1, "orientation"),
        (turned(0.1), 2, "orientation"),
        (finer, 1, "pixel spacing"),
        (smaller, 1, "size"),
    ],
)
def test_a_dicom_slice_unlike_the_others_is_refused_naming_it_and_what_differs(real_data, tmp_path, edit, count, what):
    # ITK stacks a turned or finer slice as if it matched, and fails a smaller one as
    # "unreadable DICOM series (Size: [256, 256, 1])" without naming the file.
    folder, odd = edited_series(real_data, tmp_path / "series", edit, count)
    with pytest.raises(VolumeError, match="DICOM slices do not match the series") as error:
        read_volume(folder)
    message = str(error.value)
    assert f"{what} " in message and all(name in message for name in odd), message
    assert f"where {20 - count} slice(s) have" in message and error.value.kind == "geometry"


def shifted(millimetres: float):
    """The slice moved along its row direction (x here), in its own plane: its position along the
    normal, and so its place in the stack, unchanged."""

    def edit(dataset, path):
        x, y, z = (float(value) for value in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x + millimetres, y, z]

    return edit


@pytest.mark.parametrize(("millimetres", "count"), [(5.0, 1), (0.5, 1), (-0.25, 2)])
def test_a_dicom_slice_moved_in_its_plane_is_refused_naming_it(real_data, tmp_path, millimetres, count):
    # ITK stacks the slices on the first one's grid: a moved slice would sit, scan and mask alike,
    # millimetres from where the patient was.
    folder, odd = edited_series(real_data, tmp_path / "series", shifted(millimetres), count)
    with pytest.raises(VolumeError, match="not stacked along their normal") as error:
        read_volume(folder)
    assert all(name in str(error.value) for name in odd) and error.value.kind == "geometry", error.value


def test_a_dicom_slice_moved_in_its_plane_by_rounding_alone_is_read(real_data, tmp_path):
    folder, _ = edited_series(real_data, tmp_path / "series", shifted(0.004), 3)
    assert read_volume(folder)[0].shape[0] == 20


def test_dicom_orientations_that_differ_by_rounding_alone_are_one_orientation(real_data, tmp_path):
    def rounded(dataset, path):  # what another exporter's decimal strings make of the same cosines
        dataset.ImageOrientationPatient = [1.0, 1e-7, 0.0, -1e-7, 0.999999999, 0.0]

    folder, _ = edited_series(real_data, tmp_path / "series", rounded, 3)
    array, _ = read_volume(folder)
    assert np.array_equal(array, read_volume(real_data / "abdomen_ct_dicom")[0])


def nifti_claiming(path, shape, payload: bytes):
    """A NIfTI file whose header claims int16 voxels of ``shape`` but which holds ``payload`` after it."""
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), CT_AFFINE).header
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4 + payload
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=1) as stream:
            stream.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["claims.nii.gz", "claims.nii"])
def test_a_small_file_claiming_a_huge_volume_is_refused_before_any_allocation(tmp_path, name):
    # 8 KB of voxels under a header claiming 512×512×2048 int16: refused before 1 GiB is set aside
    # (and zeroed) for them.
    path = nifti_claiming(tmp_path / name, (512, 512, 2048), np.random.default_rng(0).bytes(8192))
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match="truncated file") as error:
            read_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak:,} bytes allocated"
    assert error.value.path == str(path) and error.value.kind == "unreadable"
    assert "512×512×2048" in str(error.value)


def test_a_truncated_gzip_that_could_hold_its_claim_is_counted_not_allocated(tmp_path):
    # 1 MB of a 32 MB payload's gzip stream: small enough to be a lie, too large for the deflate
    # bound to tell; the stream is counted before the 32 MB array is allocated.
    values = np.random.default_rng(0).integers(0, 4, 512 * 512 * 64).astype(np.int16)
    whole = nifti_claiming(tmp_path / "whole.nii.gz", (512, 512, 64), values.tobytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[: 2**20])
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match="truncated") as error:
            read_volume(cut, check_ct=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"{peak:,} bytes allocated"
    assert error.value.path == str(cut)
    assert read_volume(whole, check_ct=False)[0].shape == (64, 512, 512)


def test_values_that_are_not_hounsfield_units_are_named(real_data):
    ct, _ = read_volume(real_data / "abdomen_ct_3mm.nii.gz")
    series, _ = read_volume(real_data / "abdomen_ct_dicom")
    chest, _ = read_volume(real_data / "chest_crop_1p5mm.nii.gz")
    padded = ct.copy()
    padded[:, :20, :20] = -3024  # the corners outside a scanner's field of view
    metal = ct.copy()
    metal[10:12, 40:44, 40:44] = 30000  # an implant on an extended HU scale
    for plausible in (ct, series, chest, padded, metal, np.full((4, 4, 4), -32768, np.int16)):
        assert hu_scale_warning(plausible) is None
    for factor in (10, 1000):
        warning = hu_scale_warning(ct.astype(np.float32) * factor)
        assert warning is not None and warning.startswith("values are not plausible Hounsfield units"), warning
        assert "-2024 to 4071" in warning


def test_a_mask_write_that_runs_out_of_space_raises_instead_of_leaving_a_short_file(tmp_path, monkeypatch):
    # ITK's NIfTI writer reports a failed write on stderr only and leaves a short file.
    mask = np.random.default_rng(0).integers(0, 14, (20, 64, 64)).astype(np.uint8)
    written = sitk.WriteImage

    def short(image, name, *args, **kwargs):
        written(image, name, *args, **kwargs)
        with open(name, "r+b") as stream:
            stream.truncate(os.path.getsize(name) // 2)

    monkeypatch.setattr("segcore.volumes.write.sitk.WriteImage", short)
    for name in ("mask.nii.gz", "mask.nii"):
        with pytest.raises(OSError) as error:
            write_volume(tmp_path / name, mask, make_geometry(mask.shape))
        assert error.value.errno in (errno.EIO, errno.ENOSPC) and error.value.filename == str(tmp_path / name)
    assert list(tmp_path.iterdir()) == []
