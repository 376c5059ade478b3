"""Every output of one segmented case, made in one place for ``predict.sh`` and the service.

A case's outputs are its label mask (NIfTI on the input's exact grid), its record (organ
statistics, crop box, quality, warnings, timings: ``<id>.json`` of ``predict.sh --stats`` and
the service's JSON answer, the same keys), a preview PNG and a DICOM-SEG (DICOM inputs).
:func:`build_case` makes each one asked for as a file in a private staging folder; nothing is
anywhere else until every one of them is made. ``predict.sh`` then moves them to their final
names together (:func:`publish`); the service sends them and removes the folder. A case that
fails leaves nothing.

DICOM-SEG rules, the same for every input: a SEG that cannot be made (NIfTI input, a series
without study/series/instance UIDs, an enhanced multi-frame CT, an empty mask) is a warning
beside the mask when the mask is asked for too; asked for alone, the inputs that can be told
from their headers are refused before inference (:func:`seg_refusal`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcore.inference.postprocess import organ_statistics
from segcore.outputs.dicom_seg import SegUnavailable, check_seg_source, write_dicom_seg
from segcore.volumes import write_volume
from segcore.volumes.geometry import Geometry

KINDS = ("mask", "record", "preview", "seg")
STAGED_NAMES = {"mask": "labels.nii.gz", "record": "record.json", "preview": "preview.png", "seg": "seg.dcm"}
TIMING_DECIMALS = 4


@dataclass
class CaseOutputs:
    """What :func:`build_case` made: ``record`` (always, in memory), the staged ``files`` by kind
    and, when a SEG was asked for beside the mask but could not be made, ``seg_note`` (why)."""

    record: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    seg_note: str | None = None


def seg_refusal(source: Path) -> str | None:
    """Why no DICOM-SEG can be made for this input, from its headers alone (before inference);
    None when one can be tried."""
    try:
        check_seg_source(source)
    except SegUnavailable as error:
        return str(error)
    return None


def case_record(
    case: str, input_name: str, prediction, geometry: Geometry, statistics: dict[str, Any], notice: str | None,
    *, mask_written: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The case's record: the same keys for the batch command's ``<id>.json`` and the service's JSON."""
    return {
        "case": case,
        "input": input_name,
        "size": list(geometry.size),
        "spacing": list(geometry.spacing),
        "organs": statistics,
        "crop_box": prediction.box,
        "warnings": list(prediction.warnings),
        "quality": prediction.quality.as_dict(),
        "model_notice": notice,
        "mask_written": mask_written,
        "timings": {step: round(seconds, TIMING_DECIMALS) for step, seconds in prediction.timings.items()},
    }


def build_case(
    staging: Path,
    kinds: set[str],
    *,
    case: str,
    input_name: str,
    source: Path,
    prediction,
    image: np.ndarray,
    geometry: Geometry,
    notice: str | None = None,
    checkpoints_sha256: list[str] | None = None,
    statistics: bool = True,
    withheld: bool = False,
) -> CaseOutputs:
    """Make the outputs ``kinds`` (of :data:`KINDS`) of one segmented case in ``staging``.

    Args:
        staging: an empty private folder on the file system of the final outputs.
        source: the input as read (a NIfTI file or a DICOM folder; a SEG references the latter).
        statistics: measure the organs (always when a record or preview is asked for).
        withheld: the caller keeps the mask back (``predict.sh --strict`` on a ``fail`` verdict):
            the record says ``mask_written: false``.

    Raises:
        SegUnavailable: a SEG asked for alone cannot be made (nothing is left in ``staging`` that
            the caller should keep).
    """
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown output kinds {sorted(unknown)}; expected some of {KINDS}")
    measured = statistics or bool(kinds & {"record", "preview"})
    organs = organ_statistics(prediction.labels, image, geometry, within=prediction.box) if measured else {}
    outputs = CaseOutputs(
        case_record(case, input_name, prediction, geometry, organs, notice, mask_written=not withheld)
    )
    staged = {kind: staging / STAGED_NAMES[kind] for kind in kinds}
    if "seg" in kinds:
        _stage_seg(outputs, prediction, source, staged["seg"], checkpoints_sha256, notice, mask_too="mask" in kinds)
    if "mask" in kinds:
        write_volume(staged["mask"], prediction.labels, geometry)
        outputs.files["mask"] = staged["mask"]
    if "preview" in kinds:
        _stage_preview(outputs, prediction, image, geometry, organs, notice, staged["preview"])
    if "record" in kinds:
        staged["record"].write_text(json.dumps(outputs.record, indent=2) + "\n")
        outputs.files["record"] = staged["record"]
    return outputs


def _stage_seg(
    outputs: CaseOutputs, prediction, source: Path, path: Path, checkpoints_sha256, notice, *, mask_too: bool
):
    """The DICOM-SEG into ``path``; one that cannot be made is a warning when the mask goes too."""
    try:
        write_dicom_seg(
            prediction.labels, source, path, checkpoints_sha256=checkpoints_sha256 or [],
            verdict=prediction.quality.verdict, notice=notice,
        )  # fmt: skip
        outputs.files["seg"] = path
    except SegUnavailable as error:
        if not mask_too:
            raise
        outputs.seg_note = f"no DICOM-SEG: {error}"
        outputs.record["warnings"].append(outputs.seg_note)


def _stage_preview(outputs: CaseOutputs, prediction, image, geometry: Geometry, organs, notice, path: Path) -> None:
    from segcore.outputs.preview import reader_note, render_preview  # Pillow: only for cases that draw

    quality = prediction.quality
    note = reader_note(quality.verdict, quality.reasons, notice)
    volumes = {name: s["volume_ml"] for name, s in organs.items()}
    path.write_bytes(render_preview(image, prediction.labels, geometry, volumes_ml=volumes, note=note).png)
    outputs.files["preview"] = path


def publish(files: dict[str, Path], destinations: dict[str, Path]) -> None:
    """Move every staged file to its destination (same file system: each move is atomic), once all
    were made; a kind without a destination stays in the staging folder."""
    for kind, path in files.items():
        if kind in destinations:
            os.replace(path, destinations[kind])
