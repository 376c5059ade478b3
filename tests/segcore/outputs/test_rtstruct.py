"""RTSTRUCT output: read back with pydicom, each organ present has its ROI and its contours on the
slices where it is, on its outline, in the source's frame of reference."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from segcore.labels import ORGAN_CODES, ORGAN_COLORS, ORGAN_IDS, ORGANS
from segcore.outputs.rtstruct import write_rtstruct
from segcore.outputs.source_series import DicomOutputUnavailable
from segcore.volumes import dicom_series_files, read_volume

BLOCKS = {  # organ: (z, y, x) half-open voxel box
    "liver": ((2, 9), (100, 260), (60, 240)),
    "right_kidney": ((5, 14), (300, 380), (100, 170)),
    "left_kidney": ((6, 15), (300, 380), (340, 420)),
    "left_adrenal_gland": ((10, 12), (250, 270), (330, 350)),
}


def block_mask(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for name, ((z0, z1), (y0, y1), (x0, x1)) in BLOCKS.items():
        labels[z0:z1, y0:y1, x0:x1] = ORGAN_IDS[name]
    return labels


@pytest.fixture(scope="module")
def non_square_series(series_with_uids, tmp_path_factory):
    """The series with rows 0.6 mm apart and columns 0.9765625 mm apart (Pixel Spacing is row, column)."""
    folder = tmp_path_factory.mktemp("non_square")
    for path in sorted(series_with_uids.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.PixelSpacing = [0.6, 0.9765625]
        dataset.save_as(folder / path.name)
    return folder


@pytest.mark.parametrize("which", ["square", "non_square"])
def test_an_rtstruct_has_each_organs_contours_on_its_slices_and_references_the_source(
    which, series_with_uids, non_square_series, tmp_path
):
    series = series_with_uids if which == "square" else non_square_series
    image, geometry = read_volume(series)
    labels = block_mask(image.shape)
    path = tmp_path / "rtstruct.dcm"
    count = write_rtstruct(labels, series, path, checkpoints_sha256=["a" * 64], verdict="review",
                           notice="trained on phantoms: not for real scans")  # fmt: skip
    assert count == len(BLOCKS)
    rtstruct = pydicom.dcmread(path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_series_files(series)]
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rtstruct.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert "QC REVIEW" in rtstruct.SeriesDescription and "phantom" in rtstruct.SeriesDescription
    assert rtstruct.StudyInstanceUID == sources[0].StudyInstanceUID
    assert rtstruct.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert rtstruct.PatientID == sources[0].PatientID and "InstitutionName" not in rtstruct
    [frame] = rtstruct.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    [study] = frame.RTReferencedStudySequence
    [referenced_series] = study.RTReferencedSeriesSequence
    assert referenced_series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in referenced_series.ContourImageSequence] == [
        source.SOPInstanceUID for source in sources
    ]

    rois = {roi.ROINumber: roi for roi in rtstruct.StructureSetROISequence}
    present = [organ for organ in ORGANS if (labels == organ).any()]
    assert [rois[number].ROIName for number in sorted(rois)] == [ORGANS[organ] for organ in present]
    assert all(roi.ReferencedFrameOfReferenceUID == frame.FrameOfReferenceUID for roi in rois.values())
    assert all(roi.ROIGenerationAlgorithm == "AUTOMATIC" for roi in rois.values())
    observations = {o.ReferencedROINumber: o for o in rtstruct.RTROIObservationsSequence}
    z_of = {source.SOPInstanceUID: z for z, source in enumerate(sources)}
    column_spacing, row_spacing = geometry.spacing[:2]
    for contours in rtstruct.ROIContourSequence:
        name = rois[int(contours.ReferencedROINumber)].ROIName
        organ = ORGAN_IDS[name]
        assert [int(c) for c in contours.ROIDisplayColor] == list(ORGAN_COLORS[organ])
        observation = observations[int(contours.ReferencedROINumber)]
        assert observation.RTROIInterpretedType == "ORGAN"
        assert observation.RTROIIdentificationCodeSequence[0].CodeValue == ORGAN_CODES[organ][0]
        (z0, z1), (y0, y1), (x0, x1) = BLOCKS[name]
        slices = []
        for contour in contours.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            z = z_of[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            slices.append(z)
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            position = np.asarray(sources[z].ImagePositionPatient, float)
            np.testing.assert_allclose(points[:, 2], position[2], atol=1e-3)  # on its slice
            columns = (points[:, 0] - position[0]) / column_spacing
            rows = (points[:, 1] - position[1]) / row_spacing
            # through the centres of the block's edge pixels
            np.testing.assert_allclose([columns.min(), columns.max()], [x0, x1 - 1], atol=1e-3)
            np.testing.assert_allclose([rows.min(), rows.max()], [y0, y1 - 1], atol=1e-3)
        assert sorted(slices) == list(range(z0, z1)), name  # one outline on each slice where it is


def test_a_nifti_input_a_series_without_uids_or_an_empty_mask_get_a_clear_refusal(
    real_data, series_with_uids, tmp_path
):
    path = tmp_path / "rtstruct.dcm"
    with pytest.raises(DicomOutputUnavailable, match="the input is NIfTI; an RTSTRUCT references a DICOM source"):
        write_rtstruct(np.ones((30, 101, 122), np.uint8), real_data / "abdomen_ct_3mm.nii.gz", path)
    with pytest.raises(DicomOutputUnavailable, match="no StudyInstanceUID, SeriesInstanceUID: an RTSTRUCT could"):
        write_rtstruct(np.ones((20, 512, 512), np.uint8), real_data / "abdomen_ct_dicom", path)
    with pytest.raises(DicomOutputUnavailable, match="the mask is empty") as refused:
        write_rtstruct(np.zeros((20, 512, 512), np.uint8), series_with_uids, path)
    assert refused.value.output == "RTSTRUCT"
    assert not path.exists()
