"""DICOM-SEG output: read back with highdicom and pydicom, it rebuilds the mask on the source series."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from segcore.labels import LATERALITY_CODES, ORGAN_CODES, ORGAN_IDS, ORGANS
from segcore.outputs.dicom_seg import write_dicom_seg
from segcore.outputs.source_series import DicomOutputUnavailable
from segcore.volumes import dicom_series_files, read_volume

DICOM = "abdomen_ct_dicom"
PYDICOM_NAMES = {
    "liver": "Liver", "spleen": "Spleen", "pancreas": "Pancreas", "aorta": "Aorta", "ivc": "InferiorVenaCava",
    "gallbladder": "Gallbladder", "esophagus": "Esophagus", "stomach": "Stomach", "duodenum": "Duodenum",
    "right_kidney": "Kidney", "left_kidney": "Kidney", "right_adrenal_gland": "AdrenalGland",
    "left_adrenal_gland": "AdrenalGland",
}  # fmt: skip


def test_organ_codes_are_pydicoms_snomed_concepts():
    for organ, name in ORGANS.items():
        value, meaning, laterality = ORGAN_CODES[organ]
        concept = getattr(codes.SCT, PYDICOM_NAMES[name])
        assert (value, meaning) == (concept.value, concept.meaning), name
        assert (laterality is not None) == name.startswith(("right_", "left_"))
    for side, value in LATERALITY_CODES.items():
        assert getattr(codes.SCT, side).value == value


def organ_mask(shape) -> np.ndarray:
    """Liver, both kidneys and the left adrenal in blocks, the left kidney crossing slices."""
    labels = np.zeros(shape, np.uint8)
    labels[2:9, 100:260, 60:240] = ORGAN_IDS["liver"]
    labels[5:14, 300:380, 100:170] = ORGAN_IDS["right_kidney"]
    labels[6:15, 300:380, 340:420] = ORGAN_IDS["left_kidney"]
    labels[10:12, 250:270, 330:350] = ORGAN_IDS["left_adrenal_gland"]
    return labels


def test_a_seg_rebuilds_the_mask_on_the_source_series_and_references_it(series_with_uids, tmp_path):
    image, _ = read_volume(series_with_uids)
    labels = organ_mask(image.shape)
    path = tmp_path / "seg.dcm"
    hashes = ["a" * 64, "b" * 64]
    count = write_dicom_seg(labels, series_with_uids, path, checkpoints_sha256=hashes, verdict="review",
                            notice="trained on phantoms: not for real scans")  # fmt: skip
    assert count == 4
    seg = hd.seg.segread(path)
    assert seg.Modality == "SEG" and "QC REVIEW" in seg.SeriesDescription and "phantom" in seg.SeriesDescription
    names = [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers]
    assert names == ["liver", "right_kidney", "left_adrenal_gland", "left_kidney"]
    left_adrenal = seg.get_segment_description(3)
    assert left_adrenal.SegmentedPropertyTypeCodeSequence[0].CodeValue == "23451007"
    assert left_adrenal.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    algorithm = left_adrenal.SegmentationAlgorithmIdentificationSequence[0]
    assert "b" * 64 in str(algorithm.AlgorithmParameters)
    # the references: the same study, frame of reference and SOP instances as the source files
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_series_files(series_with_uids)]
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {source.SOPInstanceUID for source in sources}
    # the frames rebuild the label array on the source grid: each frame names its segment, its
    # source image and its position, which must be that image's
    z_of = {source.SOPInstanceUID: z for z, source in enumerate(sources)}
    organs = [0, *(ORGAN_IDS[name] for name in names)]
    frames = pydicom.dcmread(path).pixel_array.reshape(-1, *labels.shape[1:])
    rebuilt = np.zeros_like(labels)
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source_uid = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = z_of[source_uid]
        position = groups.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in sources[z].ImagePositionPatient])
        rebuilt[z][frame > 0] = organs[number]
    np.testing.assert_array_equal(rebuilt, labels)


def test_a_nifti_input_or_a_series_without_uids_gets_a_clear_refusal(real_data, tmp_path):
    labels = np.zeros((30, 101, 122), np.uint8)
    labels[5:10, 20:40, 30:60] = 1
    with pytest.raises(
        DicomOutputUnavailable, match="the input is NIfTI; a DICOM-SEG references a DICOM source series"
    ):
        write_dicom_seg(labels, real_data / "abdomen_ct_3mm.nii.gz", tmp_path / "seg.dcm")
    with pytest.raises(
        DicomOutputUnavailable, match="no StudyInstanceUID, SeriesInstanceUID: a DICOM-SEG could not reference"
    ):
        write_dicom_seg(np.ones((20, 512, 512), np.uint8), real_data / DICOM, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_a_series_whose_anonymiser_removed_patient_attributes_still_gets_a_seg(series_with_uids, tmp_path):
    folder = tmp_path / "anonymised"
    folder.mkdir()
    for path in sorted(series_with_uids.iterdir()):
        dataset = pydicom.dcmread(path)
        for key in ("PatientBirthDate", "PatientSex", "PatientName", "ReferringPhysicianName", "StudyID"):
            if key in dataset:
                delattr(dataset, key)
        dataset.save_as(folder / path.name)
    image, _ = read_volume(folder)
    assert write_dicom_seg(organ_mask(image.shape), folder, tmp_path / "seg.dcm") == 4
    assert hd.seg.segread(tmp_path / "seg.dcm").PatientBirthDate == ""


def test_an_enhanced_multi_frame_ct_is_refused_from_its_headers_saying_so(real_data, tmp_path):
    # It used to fail after inference with "labels (2, 512, 512) do not match the series' 1 slices".
    from segcore.outputs.case import dicom_refusal
    from tests.segcore.volumes.test_read import enhanced_ct

    folder = enhanced_ct(real_data, tmp_path / "enhanced")
    reason = dicom_refusal(folder)
    assert reason is not None and "multi-frame" in reason and "20 frames" in reason
    with pytest.raises(DicomOutputUnavailable, match="multi-frame"):
        write_dicom_seg(np.ones((20, 512, 512), np.uint8), folder, tmp_path / "seg.dcm")
    assert (
        dicom_refusal(real_data / "abdomen_ct_3mm.nii.gz")
        == "no DICOM-SEG: the input is NIfTI; a DICOM-SEG references a DICOM source series"
    )
