"""RTSTRUCT output: the label map as a DICOM RT Structure Set of organ contours on its source series.

Radiotherapy planning systems (Eclipse, RayStation, Monaco) and 3D Slicer take organ outlines as
an RTSTRUCT. Like the DICOM-SEG (:mod:`segcore.outputs.dicom_seg`) it is made for DICOM inputs
only: every contour names the source slice it lies on (SOP instance UID) and the structure set
references the source study, series and frame of reference
(:mod:`segcore.outputs.source_series`; a NIfTI input is refused with
:class:`~segcore.outputs.source_series.DicomOutputUnavailable`).

One ROI per organ present (ROI numbers 1..K in FLARE22 id order): the FLARE22 organ name, its
display colour (:data:`segcore.labels.ORGAN_COLORS`), interpreted type ``ORGAN``, generation
algorithm ``AUTOMATIC`` and its SNOMED CT code (:data:`segcore.labels.ORGAN_CODES`); per slice
where the organ is, one closed planar contour per outline (a hole is a contour inside another),
through the centres of the organ's edge pixels, in patient coordinates (mm). The series
description carries the quality verdict and the model's notice as the SEG's does. Contours are
traced by rt-utils (OpenCV) on the source slices in the volume's order; the file is explicit VR
little endian.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence

import numpy as np

from segcore.labels import ORGAN_CODES, ORGAN_COLORS, ORGANS
from segcore.outputs.dicom_seg import ALGORITHM_NAME, ALGORITHM_VERSION, series_description
from segcore.outputs.source_series import TYPE_2_COPIED, DicomOutputUnavailable, check_source
from segcore.runtime.files import replace_atomically

OUTPUT = "RTSTRUCT"
SERIES_NUMBER = 9002
"""The SEG is series 9001; an RTSTRUCT of the same case sits beside it."""


def contour_sources(datasets: list) -> list:
    """Copies of the source headers as rt-utils reads them to place contours. rt-utils 1.2.7 takes
    Pixel Spacing as (x, y) where DICOM stores (row spacing = y, column spacing = x) (its issue
    #92): with the two swapped on these copies, a scan with non-square pixels gets its contours
    where the organs are. The file written keeps no Pixel Spacing."""
    sources = []
    for dataset in datasets:
        source = copy.copy(dataset)
        row_spacing, column_spacing = (float(value) for value in dataset.PixelSpacing)
        source.PixelSpacing = [column_spacing, row_spacing]
        sources.append(source)
    return sources


def write_rtstruct(
    labels: np.ndarray,
    series: str | os.PathLike,
    path: str | os.PathLike,
    *,
    checkpoints_sha256: Sequence[str] = (),
    verdict: str | None = None,
    notice: str | None = None,
) -> int:
    """Write ``labels`` (``(z, y, x)`` FLARE22 ids on the series' grid, as :func:`segcore.volumes.read_volume`
    reads the folder) to ``path`` as an RTSTRUCT of organ contours referencing the series in folder ``series``.

    Returns:
        The number of ROIs written (organs present).

    Raises:
        DicomOutputUnavailable: ``series`` is not a DICOM folder (a NIfTI input), lacks the UIDs to
            reference, is an enhanced multi-frame CT, or ``labels`` hold no organ.
        ValueError: ``labels`` do not match the series' size.
    """
    from pydicom.uid import ExplicitVRLittleEndian
    from rt_utils import ds_helper  # OpenCV: imported only for cases that ask for an RTSTRUCT
    from rt_utils.rtstruct import RTStruct

    sources = check_source(series, OUTPUT)
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"labels {labels.shape} do not match the series' {len(sources)} slices of "
                         f"{sources[0].Rows}x{sources[0].Columns}")  # fmt: skip
    present = [organ for organ in ORGANS if (labels == organ).any()]
    if not present:
        raise DicomOutputUnavailable("the mask is empty; an RTSTRUCT needs at least one ROI", OUTPUT)
    placed = contour_sources(sources)
    with warnings.catch_warnings():  # rt-utils sets the transfer syntax the way pydicom 3 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ds_helper.create_rtstruct_dataset(placed)
    structure = RTStruct(placed, dataset)
    by_slice = np.moveaxis(labels, 0, -1)  # rt-utils takes (rows, columns, slices)
    for organ in present:
        structure.add_roi(mask=by_slice == organ, color=list(ORGAN_COLORS[organ]), name=ORGANS[organ],
                          roi_generation_algorithm="AUTOMATIC")  # fmt: skip
    describe(dataset, sources[0], checkpoints_sha256, series_description(verdict, notice))
    for observation, organ in zip(dataset.RTROIObservationsSequence, present, strict=True):
        observe(observation, organ)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    replace_atomically(path, lambda temporary: dataset.save_as(temporary, enforce_file_format=True), ".dcm")
    return len(present)


def describe(dataset, source, checkpoints_sha256: Sequence[str], description: str) -> None:
    """The structure set's own attributes: who made it, from what, and what the reader must know."""
    for key in TYPE_2_COPIED:
        setattr(dataset, key, source.get(key, ""))
    for key in ("InstitutionName",):  # rt-utils names its authors' lab; this output is not theirs
        if key in dataset:
            delattr(dataset, key)
    dataset.Manufacturer = "segcore"
    dataset.ManufacturerModelName = ALGORITHM_NAME[:64]
    dataset.SoftwareVersions = ALGORITHM_VERSION
    dataset.DeviceSerialNumber = checkpoints_sha256[-1][:16] if checkpoints_sha256 else "none"
    dataset.SeriesDescription = description
    dataset.SeriesNumber = SERIES_NUMBER
    dataset.InstanceNumber = 1
    dataset.OperatorsName = ""
    dataset.StructureSetLabel = "ORGANS"
    dataset.StructureSetName = "Organ contours"


def observe(observation, organ: int) -> None:
    """An ROI's observation: an organ, coded with SNOMED CT, made by the algorithm."""
    from pydicom.dataset import Dataset

    value, meaning, _ = ORGAN_CODES[organ]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "SCT", meaning
    observation.RTROIIdentificationCodeSequence = [code]
    observation.RTROIInterpretedType = "ORGAN"
    observation.ROIObservationDescription = f"{ORGANS[organ]}, contoured by {ALGORITHM_NAME}"
