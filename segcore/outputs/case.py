"""Every output of one segmented case, made in one place for ``predict.sh`` and the service.

A case's outputs are its label mask (NIfTI on the input's exact grid), its record (organ
statistics, crop box, quality, warnings, timings: ``<id>.json`` of ``predict.sh --stats`` and
the service's JSON answer, the same keys), a preview PNG, a DICOM-SEG and an RTSTRUCT (DICOM inputs).
:func:`build_case` makes each one asked for as a file in a private staging folder; nothing is
anywhere else until every one of them is made. ``predict.sh`` then moves them to their final
names together (:func:`publish`); the service sends them and removes the folder. A case that
fails leaves nothing.

DICOM output rules (SEG and RTSTRUCT alike), the same for every input: one that cannot be made
(NIfTI input, a series without study/series/instance/frame-of-reference UIDs, an enhanced
multi-frame CT, an empty mask) is a warning beside the mask when the mask is asked for too;
asked for without the mask, the inputs that can be told from their headers are refused before
inference (:func:`dicom_refusal`).

``organs`` keeps a subset of the organs (:func:`organ_subset`): every output then holds those
alone, while the quality verdict stays the whole segmentation's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segcore.inference.postprocess import organ_statistics
from segcore.labels import ORGAN_IDS
from segcore.outputs.dicom_seg import write_dicom_seg
from segcore.outputs.records import CaseRecord
from segcore.outputs.source_series import DicomOutputUnavailable, check_source
from segcore.volumes import write_volume
from segcore.volumes.geometry import Geometry

KINDS = ("mask", "record", "preview", "seg", "rtstruct")
STAGED_NAMES = {"mask": "labels.nii.gz", "record": "record.json", "preview": "preview.png", "seg": "seg.dcm",
                "rtstruct": "rtstruct.dcm"}  # fmt: skip
DICOM_OUTPUTS = {"seg": "DICOM-SEG", "rtstruct": "RTSTRUCT"}
"""The kinds that reference a DICOM source series, and the name their messages give them."""
TIMING_DECIMALS = 4


@dataclass
class CaseOutputs:
    """What :func:`build_case` made: ``record`` (always, in memory), the staged ``files`` by kind
    and, for each DICOM output asked for beside the mask that could not be made, ``notes[kind]`` (why)."""

    record: CaseRecord
    files: dict[str, Path] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def dicom_refusal(source: Path, kind: str = "seg") -> str | None:
    """Why the DICOM output ``kind`` (of :data:`DICOM_OUTPUTS`) cannot be made for this input, from
    its headers alone (before inference): ``no <output>: <reason>``; None when one can be tried."""
    try:
        check_source(source, DICOM_OUTPUTS[kind])
    except DicomOutputUnavailable as error:
        return f"no {error.output}: {error}"
    return None


def organ_subset(names: str) -> tuple[int, ...]:
    """The FLARE22 ids of a comma-separated list of organ names (``liver,spleen``), in id order.

    Raises:
        ValueError: an unknown or missing name; the message lists the valid ones.
    """
    asked = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in asked if name not in ORGAN_IDS]
    if unknown or not asked:
        what = f"unknown organ name(s) {', '.join(unknown)}" if unknown else "no organ named"
        raise ValueError(f"{what}; valid names: {', '.join(ORGAN_IDS)}")
    return tuple(sorted({ORGAN_IDS[name] for name in asked}))


def only_organs(labels: np.ndarray, organs: Collection[int]) -> np.ndarray:
    """``labels`` with every organ but ``organs`` set to background (ids unchanged)."""
    kept = np.zeros(256, np.uint8)
    kept[list(organs)] = list(organs)
    return kept[labels]


def case_record(
    case: str, input_name: str, prediction, geometry: Geometry, statistics: dict[str, Any], notice: str | None,
    *, mask_written: bool = True,
) -> CaseRecord:  # fmt: skip
    """The case's record (:class:`~segcore.outputs.records.CaseRecord`): the batch command's
    ``<id>.json``, the service's JSON answer and the Python API's ``record``."""
    return CaseRecord(
        case=case,
        input=input_name,
        size=list(geometry.size),
        spacing=list(geometry.spacing),
        organs=statistics,
        crop_box=prediction.box,
        warnings=list(prediction.warnings),
        quality=prediction.quality.as_dict(),
        model_notice=notice,
        mask_written=mask_written,
        timings={step: round(seconds, TIMING_DECIMALS) for step, seconds in prediction.timings.items()},
    )


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
    organs: Collection[int] | None = None,
) -> CaseOutputs:
    """Make the outputs ``kinds`` (of :data:`KINDS`) of one segmented case in ``staging``.

    Args:
        staging: an empty private folder on the file system of the final outputs.
        source: the input as read (a NIfTI file or a DICOM folder; a SEG references the latter).
        statistics: measure the organs (always when a record or preview is asked for).
        withheld: the caller keeps the mask back (``predict.sh --strict`` on a ``fail`` verdict):
            the record says ``mask_written: false``.
        organs: FLARE22 ids to keep (:func:`organ_subset`); every output holds those alone. None: all.

    Raises:
        DicomOutputUnavailable: a DICOM output asked for without the mask cannot be made (nothing
            is left in ``staging`` that the caller should keep).
    """
    unknown = kinds - set(KINDS)
    if unknown:
        raise ValueError(f"unknown output kinds {sorted(unknown)}; expected some of {KINDS}")
    if organs is not None:
        prediction = dataclasses.replace(prediction, labels=only_organs(prediction.labels, organs))
    measured = statistics or bool(kinds & {"record", "preview"})
    organs = organ_statistics(prediction.labels, image, geometry, within=prediction.box) if measured else {}
    outputs = CaseOutputs(
        case_record(case, input_name, prediction, geometry, organs, notice, mask_written=not withheld)
    )
    staged = {kind: staging / STAGED_NAMES[kind] for kind in kinds}
    for kind in [kind for kind in DICOM_OUTPUTS if kind in kinds]:
        _stage_dicom(outputs, kind, prediction, source, staged[kind], checkpoints_sha256, notice, "mask" in kinds)
    if "mask" in kinds:
        write_volume(staged["mask"], prediction.labels, geometry)
        outputs.files["mask"] = staged["mask"]
    if "preview" in kinds:
        _stage_preview(outputs, prediction, image, geometry, organs, notice, staged["preview"])
    if "record" in kinds:
        staged["record"].write_text(outputs.record.model_dump_json(indent=2) + "\n")
        outputs.files["record"] = staged["record"]
    return outputs


def _stage_dicom(
    outputs: CaseOutputs, kind: str, prediction, source: Path, path: Path, checkpoints_sha256, notice, mask_too: bool
) -> None:
    """The DICOM output ``kind`` into ``path``; one that cannot be made is a warning when the mask goes too."""
    if kind == "seg":
        write = write_dicom_seg
    else:
        from segcore.outputs.rtstruct import write_rtstruct as write  # OpenCV: only for cases that ask

    try:
        write(
            prediction.labels, source, path, checkpoints_sha256=checkpoints_sha256 or [],
            verdict=prediction.quality.verdict, notice=notice,
        )  # fmt: skip
        outputs.files[kind] = path
    except DicomOutputUnavailable as error:
        if not mask_too:
            raise
        outputs.notes[kind] = f"no {error.output}: {error}"
        outputs.record.warnings.append(outputs.notes[kind])


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
