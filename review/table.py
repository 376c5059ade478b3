"""``summary.csv`` as the review station reads it: every row it can list, and for every row it
cannot, the line and the reason.

``predict.sh`` writes the table (:func:`segcore.outputs.records.rebuild_table`), but the station
also meets tables a spreadsheet or an editor saved: a UTF-8 byte order mark first (a spreadsheet's
"CSV UTF-8"), a comma or quote out of place, bytes that are not UTF-8, a field over the csv
module's limit (128 KB), a volume that is not a number. Nothing here raises on what the table
holds: a row that cannot be listed is skipped and named (``line 7: ...``); a table without one of
the :data:`REQUIRED` columns lists nothing and says which. A volume ``nan`` or ``inf`` is listed
as ``None``.

A listed row is the dict the page receives: ``case``, ``input``, ``status``, ``verdict``,
``reason`` (str), ``quality_reasons`` and ``warnings`` (lists; the table joins them with ``"; "``)
and ``organs`` (``{organ name: volume in mL or None}``, the organs with a volume in the table).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segcore.labels import ORGANS


class ReviewError(ValueError):
    """An output folder that cannot be reviewed or exported (no ``summary.csv``, records naming
    several input folders)."""


def recorded_input_dir(output_dir: Path, named: Iterable[str]) -> Path | None:
    """The one input folder the records of ``output_dir`` name (``named``: their ``input_dir``
    values); None when they name none. Refused: several folders, a relative one, the top of the
    disk or a folder just below it (which would open all of it)."""
    named = set(named) - {""}
    if len(named) > 1:
        raise ReviewError(
            f"{output_dir}: the records name {len(named)} input folders ({', '.join(sorted(named))}); "
            "say which one with --input-dir"
        )
    if not named:
        return None
    folder = Path(named.pop())
    if not folder.is_absolute():
        raise ReviewError(
            f"{output_dir}: the records name a relative input folder ({folder}), which would mean "
            "wherever the command is started: say which folder with --input-dir"
        )
    folder = folder.resolve()
    if len(folder.parts) < 3:
        raise ReviewError(
            f"{output_dir}: the records name {folder} as the input folder, the top of the disk or a "
            f"folder just below it, which would open all of it to the browser: if it really holds the "
            f"inputs, say so with --input-dir {folder}"
        )
    return folder


REQUIRED = ("case", "input", "status", "verdict")
"""The columns without which no row can be listed; the others may be missing (then empty)."""


@dataclass(frozen=True)
class Table:
    rows: list[dict[str, Any]]
    """The rows that can be listed, in the table's order."""
    problems: list[str]
    """Why the other rows were skipped (``"line 7: ..."``), or why nothing could be listed."""


def read_table(path: Path) -> Table:
    """The rows of ``path`` that can be listed and the problems of the others; never raises."""
    try:
        # surrogateescape keeps a byte that is not UTF-8 in its row, which is then skipped and named.
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
            return parse_table(text, path.name)
    except OSError as error:
        return Table([], [f"{path} could not be read: {error.strerror or error}"])


def parse_table(lines: Iterable[str], name: str) -> Table:
    """:func:`read_table` on the table's text lines; ``name`` names the table in the problems."""
    reader = csv.reader(lines)
    header: list[str] | None = None
    rows, problems = [], []
    first_line: dict[str, int] = {}  # case id -> the line that listed it
    end = 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # the reader goes on at the next line
            end = reader.line_num
            problems.append(f"{lines_of(start, end)}: {csv_problem(error)}")
            continue
        end = reader.line_num
        if not fields:
            continue
        if header is None:
            header = fields
            missing = [column for column in REQUIRED if column not in header]
            if missing:
                columns = ", ".join(missing)
                return Table([], [f"{name} has no {columns} column{'s' if len(missing) > 1 else ''} (line {start})"])
            continue
        try:
            row = listed_row(header, fields)
        except ValueError as reason:
            problems.append(f"{lines_of(start, end)}: {reason}")
            continue
        if row["case"] in first_line:
            problems.append(f"{lines_of(start, end)}: case {row['case']!r} is also on line {first_line[row['case']]}")
            continue
        first_line[row["case"]] = start
        rows.append(row)
    if header is None:
        problems.append(f"{name} is empty")
    return Table(rows, problems)


def listed_row(header: list[str], fields: list[str]) -> dict[str, Any]:
    """One row as the page lists it; ValueError saying why it cannot be."""
    if len(fields) != len(header):
        raise ValueError(f"{len(fields)} fields where the header has {len(header)}: a comma or quote out of place?")
    row = dict(zip(header, fields, strict=True))
    for column, value in row.items():
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"the {column} field is not UTF-8 text (save the table as CSV UTF-8)") from None
    case = row["case"].strip()
    if not case:
        raise ValueError("no case id")
    if case.startswith(".") or any(character in case for character in "/\\\0"):
        raise ValueError(f"case id {case!r} is not a case id (a file name without its folder)")
    organs = {}
    for organ in ORGANS.values():
        text = row.get(f"{organ}_ml", "").strip()
        if not text:
            continue
        try:
            volume = float(text)
        except ValueError:
            raise ValueError(f"{organ}_ml is {text[:40]!r}, not a number") from None
        organs[organ] = volume if math.isfinite(volume) else None
    lists = {key: [item for item in row.get(key, "").split("; ") if item] for key in ("quality_reasons", "warnings")}
    return {
        "case": case, "input": row["input"], "status": row["status"], "verdict": row["verdict"],
        "reason": row.get("reason", ""), **lists, "organs": organs,
    }  # fmt: skip


def lines_of(start: int, end: int) -> str:
    return f"line {start}" if start == end else f"lines {start}-{end}"


def csv_problem(error: csv.Error) -> str:
    if "field larger than field limit" in str(error):
        return f"a field is longer than {csv.field_size_limit()} characters"
    return f"not CSV ({error})"
