"""DICOM-SEG output: the label map as a DICOM Segmentation that references its source series.

A SEG is made for DICOM inputs only: it names the source images by their UIDs and per-frame
positions, so that a PACS, OHIF or 3D Slicer overlays it on the scan it came from. For a NIfTI
input there is no source series to reference (a SEG on invented UIDs would overlay on nothing),
so :func:`write_dicom_seg` refuses it with
:class:`~segcore.outputs.source_series.DicomOutputUnavailable` (:mod:`segcore.outputs.source_series`).

One segment per organ present (segment numbers 1..K in FLARE22 id order), labelled with the
FLARE22 organ name, coded with SNOMED CT (category Anatomical Structure; property type and,
for paired organs, a laterality modifier: :data:`segcore.labels.ORGAN_CODES`), with the organ's
display colour (:data:`segcore.labels.ORGAN_COLORS`) and the algorithm (name, version, the
checkpoints' SHA-256). The series description says when not to trust the mask (the quality
verdict) or the model (a phantom-trained default). Written with highdicom, binary segmentation,
empty frames omitted, explicit VR little endian.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from segcore.labels import LATERALITY_CODES, ORGAN_CODES, ORGAN_COLORS, ORGANS
from segcore.outputs.source_series import DicomOutputUnavailable, check_source
from segcore.runtime.files import replace_atomically

ALGORITHM_NAME = "coarse-to-fine abdominal CT organ segmentation"
ALGORITHM_VERSION = "1.0"
DESCRIPTION_LENGTH = 64
"""Series Description is a DICOM LO: at most 64 characters."""


def organ_segment(organ: int, number: int, algorithm):
    """The ``highdicom.seg.SegmentDescription`` of segment ``number`` holding organ ``organ`` (a FLARE22 id)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    value, meaning, laterality = ORGAN_CODES[organ]
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=ORGANS[organ],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=hd.sr.CodedConcept(value, "SCT", meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*ORGAN_COLORS[organ]),
    )
    if laterality is not None:
        modifier = hd.sr.CodedConcept(LATERALITY_CODES[laterality], "SCT", laterality)
        description.SegmentedPropertyTypeModifierCodeSequence = [modifier]
    return description


def series_description(verdict: str | None, notice: str | None) -> str:
    """``Organ segmentation``, with what the reader must know: the verdict when not ``ok``, a notice."""
    parts = ["Organ segmentation"]
    if verdict and verdict != "ok":
        parts.append(f"QC {verdict.upper()}")
    if notice:
        parts.append("phantom-trained model, not for clinical use" if "phantom" in notice else "see model notice")
    return " - ".join(parts)[:DESCRIPTION_LENGTH]


def write_dicom_seg(
    labels: np.ndarray,
    series: str | os.PathLike,
    path: str | os.PathLike,
    *,
    checkpoints_sha256: Sequence[str] = (),
    verdict: str | None = None,
    notice: str | None = None,
) -> int:
    """Write ``labels`` (``(z, y, x)`` FLARE22 ids on the series' grid, as :func:`segcore.volumes.read_volume`
    reads the folder) to ``path`` as a DICOM-SEG referencing the series in folder ``series``.

    Returns:
        The number of segments written (organs present).

    Raises:
        DicomOutputUnavailable: ``series`` is not a DICOM folder (a NIfTI input), lacks the UIDs to
            reference, is an enhanced multi-frame CT, or ``labels`` hold no organ.
        ValueError: ``labels`` do not match the series' size.
    """
    import highdicom as hd  # imported here: 0.3 s that a NIfTI-only run should not pay
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    sources = check_source(series)
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"labels {labels.shape} do not match the series' {len(sources)} slices of "
                         f"{sources[0].Rows}x{sources[0].Columns}")  # fmt: skip
    present = [organ for organ in ORGANS if (labels == organ).any()]
    if not present:
        raise DicomOutputUnavailable("the mask is empty; a DICOM-SEG needs at least one segment")
    numbering = np.zeros(256, dtype=np.uint8)
    numbering[present] = np.arange(1, len(present) + 1)
    parameters = {f"checkpoint_{i}_sha256": value for i, value in enumerate(checkpoints_sha256)}
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=ALGORITHM_VERSION,
        parameters=parameters or None,
    )  # fmt: skip
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=numbering[labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[organ_segment(organ, i + 1, algorithm) for i, organ in enumerate(present)],
        series_instance_uid=generate_uid(),
        series_number=9001,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="segcore",
        manufacturer_model_name=ALGORITHM_NAME[:64],
        software_versions=ALGORITHM_VERSION,
        device_serial_number=(checkpoints_sha256[-1][:16] if checkpoints_sha256 else "none"),
        series_description=series_description(verdict, notice),
        content_label="ORGANS",
    )
    replace_atomically(path, lambda temporary: segmentation.save_as(temporary), ".dcm")
    return len(present)
