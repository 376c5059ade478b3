"""The viewer's copy of a CT: the same grid as SimpleITK and nibabel read it, compact where it can be."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segcore.volumes import nifti_bytes_for_viewing, write_volume
from tests.conftest import make_geometry


def test_whole_hu_become_int16_on_the_exact_grid(tmp_path):
    geometry = make_geometry((4, 5, 6), spacing=(0.7, 0.8, 2.5), direction=[[-1, 0, 0], [0, -1, 0], [0, 0, 1]])
    array = np.arange(120, dtype=np.float32).reshape(4, 5, 6) * 300 - 1024  # whole numbers, some past int16
    data = nifti_bytes_for_viewing(array, geometry)
    (tmp_path / "copy.nii.gz").write_bytes(data)
    write_volume(tmp_path / "reference.nii.gz", array.astype(np.float32), geometry)
    copy, reference = (sitk.ReadImage(str(tmp_path / name)) for name in ("copy.nii.gz", "reference.nii.gz"))
    assert copy.GetPixelID() == sitk.sitkInt16
    assert copy.GetSize() == geometry.size and np.allclose(copy.GetSpacing(), geometry.spacing)
    assert np.allclose(copy.GetOrigin(), geometry.origin) and np.allclose(copy.GetDirection(), geometry.direction)
    values = sitk.GetArrayFromImage(copy)
    assert np.array_equal(values, np.clip(array, -32768, 32767))
    affines = [nib.load(tmp_path / name).affine for name in ("copy.nii.gz", "reference.nii.gz")]
    np.testing.assert_allclose(*affines)


def test_fractional_values_stay_float():
    array = np.full((3, 3, 3), 0.25, dtype=np.float64)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti_bytes_for_viewing(array, make_geometry((3, 3, 3)))))
    assert image.get_data_dtype() == np.float32 and np.allclose(np.asarray(image.dataobj), 0.25)
