"""The DICOM series a DICOM output (SEG, RTSTRUCT) references, and why one cannot be made.

A DICOM-SEG or RTSTRUCT names its source images by their UIDs and lies in their frame of
reference, so that a PACS, OHIF or 3D Slicer overlays it on the scan it came from. A NIfTI input
has no source series (an output on invented UIDs would overlay on nothing), and a series without
study, series, SOP instance or frame-of-reference UIDs cannot be referenced: both are refused with
:class:`DicomOutputUnavailable`, from the headers alone (milliseconds per slice), so callers can
refuse before inference when such an output is all they were asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

from segcore.volumes import dicom_series_files

TYPE_2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip
"""Patient and study attributes a DICOM output copies from its source: present in any PACS export,
but an anonymiser may have removed them; they are filled in empty (DICOM type 2) on the copy read here."""
REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
"""What every source slice must carry for an output to reference it."""
ARTICLES = {"DICOM-SEG": "a DICOM-SEG", "RTSTRUCT": "an RTSTRUCT"}


class DicomOutputUnavailable(ValueError):
    """A DICOM output cannot be made for this input; ``output`` names it (``DICOM-SEG``,
    ``RTSTRUCT``) and the message says why."""

    def __init__(self, reason: str, output: str = "DICOM-SEG"):
        super().__init__(reason)
        self.output = output


def check_source(source: str | os.PathLike, output: str = "DICOM-SEG") -> list:
    """The source series' headers (:func:`source_datasets`) once the input passed every check
    ``output`` needs from its headers; :class:`DicomOutputUnavailable` says why it did not."""
    source = Path(source)
    if not source.is_dir():
        raise DicomOutputUnavailable(f"the input is NIfTI; {ARTICLES[output]} references a DICOM source series", output)
    return source_datasets(source, output)


def source_datasets(series: Path, output: str = "DICOM-SEG") -> list:
    """The series' headers (pydicom datasets) in the volume's slice order (pixel data not read),
    refusing series ``output`` could not reference. A missing SOP Instance UID is taken from the
    file meta, which holds the same."""
    import pydicom

    datasets = []
    for number, path in enumerate(dicom_series_files(series), start=1):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if int(dataset.get("NumberOfFrames") or 1) > 1:
            raise DicomOutputUnavailable(
                f"an enhanced (multi-frame) CT of {int(dataset.NumberOfFrames)} frames in one file: {ARTICLES[output]} "
                "of a multi-frame source is not supported (use the NIfTI output)",
                output,
            )
        meta = dataset.file_meta
        if not dataset.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
            dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if not dataset.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
            dataset.SOPClassUID = meta.MediaStorageSOPClassUID
        for key in TYPE_2_COPIED:  # an output copies these; DICOM lets them be empty, not absent
            if key not in dataset:
                setattr(dataset, key, "")
        missing = [key for key in REFERENCED_UIDS if not dataset.get(key)]
        if missing:
            raise DicomOutputUnavailable(
                f"slice {number} of the series has no {', '.join(missing)}: {ARTICLES[output]} could not reference "
                "it (export the series from the PACS with its UIDs, or use the NIfTI output)",
                output,
            )
        datasets.append(dataset)
    return datasets
