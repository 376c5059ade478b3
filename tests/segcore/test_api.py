"""``segcore.segment``: one CT in, the mask on its exact grid, the verdict and the record out."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import segcore
from segcore.inference.predictor import Predictor
from segcore.labels import ORGAN_IDS
from segcore.phantom import write_dataset
from segcore.volumes import VolumeError


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    write_dataset(folder, labeled=0, unlabeled=0, val=1, size="small", seed=4242, progress=False)
    (path,) = (folder / "val_images").glob("*_0000.nii.gz")
    return path


def same_grid(written, source):
    """The mask's size, spacing, origin and direction are the input's, as SimpleITK and nibabel read them."""
    a, b = sitk.ReadImage(str(written)), sitk.ReadImage(str(source))
    assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
    np.testing.assert_allclose(nib.load(written).affine, nib.load(source).affine, atol=1e-5)


def test_a_file_is_segmented_as_the_predictor_does_and_the_mask_saved_on_its_grid(ct, tmp_path):
    result = segcore.segment(ct, tmp_path / "mask.nii.gz", device="cpu", precision="fp32")
    expected = Predictor.from_weights(device="cpu", precision="fp32").predict_file(ct)[0]
    np.testing.assert_array_equal(result.array, expected.labels)
    assert result.verdict == expected.quality.verdict and result.verdict in ("ok", "review", "fail")
    assert result.record.case == ct.name and result.record.quality.verdict == result.verdict
    assert result.record.organs["liver"].volume_ml > 0
    same_grid(tmp_path / "mask.nii.gz", ct)
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))
    np.testing.assert_array_equal(saved, result.array)
    assert sitk.GetArrayFromImage(result.labels).tobytes() == result.array.tobytes()


def test_images_in_memory_give_the_same_labels_as_their_file(ct, tmp_path):
    from_file = segcore.segment(ct, device="cpu", precision="fp32")
    from_itk = segcore.segment(sitk.ReadImage(str(ct)), device="cpu", precision="fp32")
    from_nibabel = segcore.segment(nib.load(ct), device="cpu", precision="fp32")
    for result in (from_itk, from_nibabel):
        np.testing.assert_array_equal(result.array, from_file.array)
        assert result.geometry.size == from_file.geometry.size
        np.testing.assert_allclose(result.geometry.origin, from_file.geometry.origin, atol=1e-4)
    from_nibabel.save(tmp_path / "nib.nii.gz")
    same_grid(tmp_path / "nib.nii.gz", ct)


def test_a_subset_of_organs_and_bad_inputs(ct):
    result = segcore.segment(ct, device="cpu", precision="fp32", organs=["liver", "spleen"])
    assert set(np.unique(result.array)) == {0, ORGAN_IDS["liver"], ORGAN_IDS["spleen"]}
    assert set(result.record.organs) == {"liver", "spleen"}
    with pytest.raises(ValueError, match="unknown organ name.*livr.*valid names: liver"):
        segcore.segment(ct, organs=["livr"])
    with pytest.raises(ValueError, match="a path, a SimpleITK image or a nibabel image"):
        segcore.segment(np.zeros((8, 8, 8)))
    with pytest.raises(VolumeError, match="image: 2-D image .* expected a 3-D volume"):
        segcore.segment(sitk.Image([8, 8], sitk.sitkInt16))


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (np.full((6, 7, 8), np.nan, np.float32), "non-finite values"),
        (np.full((6, 7, 8), 300, np.int16), "not a CT in HU"),
        (np.zeros((1, 7, 8), np.int16), "2-D image"),
    ],
)
def test_an_image_in_memory_gets_the_checks_a_file_gets(values, reason):
    with pytest.raises(VolumeError, match=reason):
        segcore.segment(sitk.GetImageFromArray(values))
