"""The batch results table: one record per case in the output folder, and ``summary.csv`` built from them.

Each case ``predict`` settles leaves ``OUTPUT_DIR/.records/<id>.json``, a :class:`ResultRow` (status,
seconds, quality verdict and reasons, warnings, failure reason, per organ volume in mL and mean HU,
the input's folder ``input_dir`` and the name of its ``mask`` in OUTPUT_DIR, which ``review.sh``
opens), written atomically. ``summary.csv`` is rebuilt from every record in the folder, under an exclusive lock
and replaced atomically, so the table is always whole: an interrupted run leaves the table of
what it finished, and runs sharing the folder (or torchrun ranks) each rebuild it from all the
records, the last one seeing every case. One row per record, sorted by case id; columns
:data:`COLUMNS` then ``<organ>_ml`` and ``<organ>_mean_hu`` for the 13 organs (empty where the
organ is absent).

The typed case record (:class:`CaseRecord`: what ``predict.sh --stats`` writes as ``<id>.json``, what
the service answers for ``output=json`` and what :func:`segcore.segment` returns) is defined here too,
so that every program speaks one schema.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from segcore.labels import ORGANS
from segcore.runtime.claims import claim_case
from segcore.runtime.files import write_text_atomic


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a key the schema lacks is a bug, not data


class Organ(_Record):
    """One organ of a case record."""

    label: int = Field(description="FLARE22 label id")
    voxels: int
    volume_ml: float
    mean_hu: float
    box_voxels: list[list[int]] = Field(description="[[x0, x1], [y0, y1], [z0, z1]], half-open, input voxel indices")


class Quality(_Record):
    """How far to trust the segmentation (:mod:`segcore.inference.quality`)."""

    verdict: Literal["ok", "review", "fail"]
    reasons: list[str]
    entropy: float = Field(description="fine net's mean normalised entropy over the organ region (0..1)")
    coarse_fine_dice: float = Field(description="agreement of the two stages on the fine crop")
    organ_count: int
    chest_share: float = Field(description="share of body slices that show lungs")
    organs: dict[str, dict[str, Any]] = Field(
        description="per organ: volume_ml, entropy, uncertain_share, plausible_volume, ..."
    )


class CaseRecord(_Record):
    """The record of one segmented case: ``predict.sh --stats``'s ``<id>.json``, the service's
    ``output=json`` answer, :attr:`segcore.api.Segmentation.record`."""

    case: str = Field(description="the case id: the input's name without NIfTI suffix and _0000")
    input: str = Field(description="the input's name")
    size: list[int] = Field(description="input size (x, y, z)")
    spacing: list[float] = Field(description="input spacing (x, y, z) mm")
    organs: dict[str, Organ] = Field(description="organs found, by name")
    crop_box: list[list[int]] | None = Field(description="the fine stage's crop in input voxels (x, y, z), or null")
    warnings: list[str]
    quality: Quality
    model_notice: str | None = Field(None, description="what the loaded weights must not be used for, if anything")
    mask_written: bool = Field(description="a mask was written (false: predict.sh --strict withheld it)")
    timings: dict[str, float] = Field(description="seconds per step")


class OrganMeasures(_Record):
    """An organ's measures in the results table."""

    volume_ml: float
    mean_hu: float


class ResultRow(_Record):
    """One case's row of the results table, as ``predict`` keeps it in ``.records/<id>.json`` and
    ``review.sh`` reads it. Read leniently: a key of another version is ignored, and the two keys
    records before this model lacked (``input_dir``, ``mask``) default to empty."""

    model_config = ConfigDict(extra="ignore")

    case: str = Field(description="the case id")
    input: str = Field(description="the input's name in its folder (a file or a DICOM series folder)")
    input_dir: str = Field("", description="the input's folder, absolute")
    mask: str = Field("", description="the mask's name in the output folder")
    status: Literal["written", "skipped", "failed"]
    seconds: float
    verdict: Literal["", "ok", "review", "fail"] = Field(description="the quality verdict; empty when none was made")
    quality_reasons: list[str]
    warnings: list[str]
    reason: str = Field(description="why the case failed; empty otherwise")
    organs: dict[str, OrganMeasures] = Field(description="organs found, by name")

    @classmethod
    def read(cls, path: Path) -> ResultRow | None:
        """The record kept at ``path``; None when it cannot be read or is not a record (one being
        replaced right now, or a file someone else put there)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            return None


Derived = TypeVar("Derived")

RECORDS = ".records"
TABLE = "summary.csv"
COLUMNS = ["case", "input", "status", "seconds", "verdict", "quality_reasons", "warnings", "reason"]


def record_path(output_dir: Path, case_id: str) -> Path:
    return output_dir / RECORDS / f"{case_id}.json"


def write_record(output_dir: Path, record: ResultRow) -> None:
    """Keep one case's record (``record.case`` names it)."""
    (output_dir / RECORDS).mkdir(exist_ok=True)
    write_text_atomic(record_path(output_dir, record.case), record.model_dump_json(indent=1) + "\n")


class RecordCache(Generic[Derived]):
    """The records of one output folder, each kept as ``derive(record)`` and read again only when
    its file changed (modification time, size, inode: a record is replaced by a rename). A batch
    of 100,000 cases rebuilds its table after every case, and the review station lists it while
    the batch runs: each reads the one new record, not all of them."""

    def __init__(self, output_dir: Path, derive: Callable[[ResultRow], Derived]):
        self.folder, self.derive = Path(output_dir) / RECORDS, derive
        self.entries: dict[str, tuple[tuple[int, int, int], str | None, Derived | None]] = {}
        """file name -> (its stamp, the record's case id, ``derive(record)``); None, None: not a record."""

    def read(self) -> dict[str, Derived]:
        """``derive(record)`` of every record that can be read, by case id, in file name order."""
        seen = {}
        try:
            listing = os.scandir(self.folder)
        except OSError:  # no records yet
            listing = None
        with listing or contextlib.nullcontext(()) as entries:
            for entry in entries:
                if not entry.name.endswith(".json"):
                    continue
                try:
                    status = entry.stat()
                except OSError:  # replaced or removed since the listing
                    continue
                stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
                kept = self.entries.get(entry.name)
                if kept is None or kept[0] != stamp:
                    record = ResultRow.read(Path(entry.path))
                    kept = (
                        stamp,
                        None if record is None else record.case,
                        None if record is None else self.derive(record),
                    )
                seen[entry.name] = kept
        self.entries = seen
        return {case: derived for _, (_, case, derived) in sorted(seen.items()) if case is not None}


def read_records(output_dir: Path) -> dict[str, ResultRow]:
    """Every record in ``output_dir`` that can be read, by case id, in file name order."""
    return RecordCache(output_dir, lambda record: record).read()


def table_columns() -> list[str]:
    return COLUMNS + [f"{name}_{measure}" for name in ORGANS.values() for measure in ("ml", "mean_hu")]


def table_row(record: ResultRow) -> dict[str, Any]:
    """The record's row of ``summary.csv``."""
    row: dict[str, Any] = {key: getattr(record, key) for key in COLUMNS}
    for key in ("quality_reasons", "warnings"):
        row[key] = "; ".join(row[key])
    for name, measures in record.organs.items():
        row[f"{name}_ml"], row[f"{name}_mean_hu"] = measures.volume_ml, measures.mean_hu
    return row


_TABLE_ROWS: dict[Path, RecordCache[dict[str, Any]]] = {}
"""A process's table rows per output folder (a batch rebuilds its table after every case)."""


def rebuild_table(output_dir: Path) -> int:
    """Rewrite ``summary.csv`` from every record in ``output_dir``; returns the number of rows."""
    claim = claim_case(output_dir / ".summary.lock", wait=True)
    try:
        folder = Path(output_dir).resolve()
        cache = _TABLE_ROWS.setdefault(folder, RecordCache(folder, table_row))
        # A record being replaced right now is left out: the next rebuild has it.
        rows = [row for _, row in sorted(cache.read().items())]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=table_columns(), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(output_dir / TABLE, buffer.getvalue())
        return len(rows)
    finally:
        claim.release()


def organ_measures(statistics: dict[str, dict[str, Any]]) -> dict[str, OrganMeasures]:
    """The record's ``organs`` from :func:`segcore.inference.postprocess.organ_statistics`."""
    return {name: OrganMeasures(volume_ml=s["volume_ml"], mean_hu=s["mean_hu"]) for name, s in statistics.items()}
