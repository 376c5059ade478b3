"""The review station's web app: the cases of a ``predict.sh`` output folder, ``fail`` and
``review`` first, each opened in the organ viewer (``viewer/``) over its CT.

Read-only: it reads ``summary.csv``, the case records (``.records/<id>.json``), the masks and the
inputs, and writes nothing. It serves a file only when the file, with every link in its path
followed, lies inside its own folder: a mask inside the output folder, a CT inside the input
folder. The input folder is fixed at start: ``--input-dir``, or the one the records name (every
record must name the same, an absolute path below the top of the disk, so that ``/`` or ``/home``
needs saying with ``--input-dir``). A case's input is one entry of that folder, as ``predict.sh``
names it; a record written later that names another folder gets 403 (restart to follow it).

It answers only requests whose ``Host`` is one of its names (127.0.0.1, localhost, and
``--allow-host``): a page on another site cannot reach it through a name that resolves to
127.0.0.1 (DNS rebinding).

Routes: ``/`` (the page), ``/labels`` (organ colours and the CT window), ``/api/cases`` (the
list, and the rows of ``summary.csv`` that could not be listed), ``/api/cases/{case}/ct`` and
``/api/cases/{case}/mask`` (the NIfTI bytes; a DICOM input is read and sent as NIfTI).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from review.table import read_table
from segcore.labels import display_table
from segcore.outputs.records import RECORDS, TABLE, RecordCache, ResultRow
from segcore.volumes import VolumeError, is_nifti, nifti_bytes_for_viewing, read_volume
from viewer import STATIC as VIEWER_STATIC

STATIC = Path(__file__).with_name("static")
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
VERDICT_ORDER = {"fail": 0, "review": 1, "ok": 2}
"""The list's order: failed cases and ``fail`` verdicts, then ``review``, then ``ok`` (then by case id)."""
HOSTS = ("127.0.0.1", "localhost")
"""The names the station answers to by default: the address it is bound to and the loopback name."""
PROBLEMS_LISTED = 100
"""At most this many of the table's problems are sent to the page (with their count)."""


class ReviewError(ValueError):
    """The output folder cannot be reviewed (no ``summary.csv``, records naming several input folders)."""


@dataclass(frozen=True)
class Listing:
    """``summary.csv`` and the records as read at one moment, and the ``/api/cases`` answer made of them."""

    cases: dict[str, dict[str, Any]]
    """The listed rows by case id."""
    records: dict[str, ResultRow]
    body: bytes


class Review:
    """The two folders and what is in them. The table and the records are read again only when
    they change (a batch may still be running): the table's modification time, size and inode,
    and those of the records' folder (a record is written by a rename into it)."""

    def __init__(self, output_dir: Path, input_dir: Path | None = None):
        self.output_dir = Path(output_dir).resolve()
        if not (self.output_dir / TABLE).is_file():
            raise ReviewError(f"{self.output_dir}: no {TABLE} here: is it a predict.sh output folder?")
        # Kept without their organs: the station lists the table's volumes and opens a record's files.
        self.records = RecordCache(self.output_dir, lambda record: record.model_copy(update={"organs": {}}))
        self.input_dir_given = input_dir is not None
        self.input_dir = Path(input_dir).resolve() if input_dir is not None else self.recorded_input_dir()
        self.lock = threading.Lock()
        self.listing_read: tuple | None = None
        self.latest: Listing | None = None

    def recorded_input_dir(self) -> Path | None:
        """The one input folder the records name; None when they name none."""
        named = {record.input_dir for record in self.records.read().values()}
        named.discard("")
        if len(named) > 1:
            raise ReviewError(
                f"{self.output_dir}: the records name {len(named)} input folders ({', '.join(sorted(named))}); "
                "say which one with --input-dir"
            )
        if not named:
            return None
        folder = Path(named.pop())
        if not folder.is_absolute():
            raise ReviewError(
                f"{self.output_dir}: the records name a relative input folder ({folder}), which would mean "
                "wherever review.sh is started: say which folder with --input-dir"
            )
        folder = folder.resolve()
        if len(folder.parts) < 3:
            raise ReviewError(
                f"{self.output_dir}: the records name {folder} as the input folder, the top of the disk or a "
                f"folder just below it, which would open all of it to the browser: if it really holds the "
                f"inputs, say so with --input-dir {folder}"
            )
        return folder

    def listing(self) -> Listing:
        """The table and the records, read again only if either changed since last time."""
        read = (stamp(self.output_dir / TABLE), stamp(self.output_dir / RECORDS))
        with self.lock:
            if read != self.listing_read or self.latest is None:
                self.latest = self.read_listing()
                self.listing_read = read
            return self.latest

    def read_listing(self) -> Listing:
        table = read_table(self.output_dir / TABLE)
        records = self.records.read()
        cases = []
        for row in table.rows:
            if (record := records.get(row["case"])) is not None:  # its lists as written (the table joins them)
                row = {**row, "quality_reasons": record.quality_reasons, "warnings": record.warnings}
            cases.append(row)

        def rank(case: dict) -> tuple[int, str]:
            return (0 if case["status"] == "failed" else VERDICT_ORDER.get(case["verdict"], 3)), case["case"]

        cases.sort(key=rank)
        answer = {
            "output_dir": str(self.output_dir), "input_dir": str(self.input_dir or ""), "cases": cases,
            "problems": table.problems[:PROBLEMS_LISTED], "problem_count": len(table.problems),
        }  # fmt: skip
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        return Listing({case["case"]: case for case in cases}, records, body)

    def case(self, case_id: str) -> tuple[dict[str, Any], ResultRow | None]:
        """The case's summary row and its record (None when it has none that can be read); 404 for a
        case the table does not list (so the id names a record only once the table has vouched for it)."""
        listing = self.listing()
        if case_id not in listing.cases:
            raise HTTPException(404, f"no case {case_id!r} in {self.output_dir / TABLE}")
        return listing.cases[case_id], listing.records.get(case_id)

    def mask_path(self, case_id: str) -> Path:
        _, record = self.case(case_id)
        name = record.mask if record is not None and record.mask else f"{case_id}.nii.gz"
        return inside(self.output_dir / name, self.output_dir, f"the mask of {case_id}")

    def ct_path(self, case_id: str) -> Path:
        row, record = self.case(case_id)
        what = f"the CT of {case_id}"
        if self.input_dir is None:
            raise HTTPException(404, f"{case_id}: the records name no input folder: start review.sh with --input-dir")
        name = row["input"]
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise HTTPException(
                403, f"{what}: {name!r} is not the name of an entry of the input folder {self.input_dir}, "
                "as predict.sh names them: the review station serves nothing else",
            )  # fmt: skip
        recorded = record.input_dir if record is not None else None
        if not self.input_dir_given and recorded and Path(recorded).resolve() != self.input_dir:
            raise HTTPException(
                403, f"{what}: its record names the input folder {recorded}, but this review station serves "
                f"{self.input_dir}, the records' folder when it started: restart review.sh (or name the folder "
                "with --input-dir)",
            )  # fmt: skip
        return inside(self.input_dir / name, self.input_dir, what)


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file or folder changed: modification time (ns), size, inode; None if it is gone."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` with every link followed, if it exists and lies inside ``root``; else 404 / 403."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(404, f"{what}: {path} does not exist") from None
    if not resolved.is_relative_to(root):
        raise HTTPException(403, f"{what}: {path} lies outside {root}: the review station serves nothing else")
    return resolved


def create_app(output_dir: Path, input_dir: Path | None = None, hosts: tuple[str, ...] = HOSTS) -> FastAPI:
    """The app over ``output_dir``; ``hosts``: the names (``Host`` header, without the port) it answers to."""
    review = Review(output_dir, input_dir)
    known_hosts = {host.lower() for host in hosts}
    app = FastAPI(title="Review station", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def known_host_only(request, call_next):
        host = request.headers.get("host", "")
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:
            name = None
        if name not in known_hosts:
            return JSONResponse(
                {"detail": f"this review station answers to {', '.join(sorted(known_hosts))}, not to "
                 f"{host[:100]!r}: open it at http://127.0.0.1:<port>/ (or start review.sh with --allow-host)"},
                status_code=421,
            )  # fmt: skip
        return await call_next(request)

    @app.middleware("http")  # added last, so it also marks the refusals above
    async def security_headers(request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        response.headers["Cache-Control"] = "no-store" if request.url.path.startswith("/api/") else "no-cache"
        return response

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/labels")
    def labels() -> dict:
        return display_table()

    @app.get("/api/cases")
    def cases() -> Response:
        return Response(review.listing().body, media_type="application/json")

    @app.get("/api/cases/{case_id}/mask")
    def mask(case_id: str) -> FileResponse:
        return FileResponse(review.mask_path(case_id), media_type="application/gzip")

    @app.get("/api/cases/{case_id}/ct")
    def ct(case_id: str) -> Response:
        path = review.ct_path(case_id)
        if path.is_file() and is_nifti(path):
            return FileResponse(path, media_type="application/octet-stream")
        try:
            image, geometry = read_volume(path)
        except VolumeError as error:
            raise HTTPException(422, str(error)) from None
        return Response(nifti_bytes_for_viewing(image, geometry), media_type="application/gzip")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/viewer", StaticFiles(directory=VIEWER_STATIC), name="viewer")
    return app
