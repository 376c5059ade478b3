"""The review station's web app: the cases of a ``predict.sh`` output folder, ``fail`` and
``review`` first, each opened in the organ viewer (``viewer/``) over its CT, accepted as it is or
corrected by painting.

It reads ``summary.csv``, the case records (``.records/<id>.json``), the masks and the inputs. It
writes two names only, both in the output folder (:mod:`review.corrections`): a case's
``<case>_corrected.nii.gz`` and ``reviews.csv``; never the model's mask, never an input. A write
needs the station's token (``X-Review-Token``), which the page reads from ``/api/session``: a page
of another site can neither read it (no cross-origin reads are allowed) nor send the header
without a preflight the station never grants. It serves a file only when the file, with every link
in its path followed, lies inside its own folder: a mask inside the output folder, a CT inside the
input folder. The input folder is fixed at start: ``--input-dir``, or the one the records name (every
record must name the same, an absolute path below the top of the disk, so that ``/`` or ``/home``
needs saying with ``--input-dir``). A case's input is one entry of that folder, as ``predict.sh``
names it; a record written later that names another folder gets 403 (restart to follow it).

It answers only requests whose ``Host`` is one of its names (127.0.0.1, localhost, and
``--allow-host``): a page on another site cannot reach it through a name that resolves to
127.0.0.1 (DNS rebinding).

Routes: ``/`` (the page), ``/labels`` (organ colours and the CT window), ``/api/session`` (the
token), ``/api/cases`` (the list with each case's review, and the rows of ``summary.csv`` that
could not be listed), ``/api/cases/{case}/ct`` and ``/api/cases/{case}/mask`` (the NIfTI bytes; a
DICOM input is read and sent as NIfTI; the mask is the correction once the case is ``corrected``,
``?source=model`` the model's), ``PUT /api/cases/{case}/correction`` (the painted label map) and
``POST /api/cases/{case}/accept``. A save answers with the review it made and the one it replaced
(another tab's save of the same case: the later save wins, and says so).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from review.corrections import (
    BYTES_PER_VOXEL,
    HEADER_ALLOWANCE,
    REVIEWS,
    CorrectionError,
    ReviewBook,
    corrected_name,
    save_correction,
)
from review.table import ReviewError, read_table, recorded_input_dir
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
TOKEN_HEADER = "X-Review-Token"


@dataclass(frozen=True)
class Listing:
    """``summary.csv`` and the records as read at one moment, and the ``/api/cases`` answer made of them."""

    cases: dict[str, dict[str, Any]]
    """The listed rows by case id."""
    records: dict[str, ResultRow]
    reviews: dict[str, Any]
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
        if input_dir is None:
            input_dir = recorded_input_dir(self.output_dir, (r.input_dir for r in self.records.read().values()))
        self.input_dir = Path(input_dir).resolve() if input_dir is not None else None
        self.lock = threading.Lock()
        self.book = ReviewBook(self.output_dir)
        self.write_lock = threading.Lock()
        """One save at a time: a correction's temporary file is named by the process."""
        self.listing_read: tuple | None = None
        self.latest: Listing | None = None

    def listing(self) -> Listing:
        """The table and the records, read again only if either changed since last time."""
        read = (stamp(self.output_dir / TABLE), stamp(self.output_dir / RECORDS), stamp(self.output_dir / REVIEWS))
        with self.lock:
            if read != self.listing_read or self.latest is None:
                self.latest = self.read_listing()
                self.listing_read = read
            return self.latest

    def read_listing(self) -> Listing:
        table = read_table(self.output_dir / TABLE)
        records = self.records.read()
        reviews = self.book.read()
        cases = []
        for row in table.rows:
            if (record := records.get(row["case"])) is not None:  # its lists as written (the table joins them)
                row = {**row, "quality_reasons": record.quality_reasons, "warnings": record.warnings}
            review = reviews.get(row["case"])
            said = None
            if review is not None:
                said = {"status": review.status, "time": review.time, "stale": not review.current(self.output_dir)}
            cases.append({**row, "review": said})

        def rank(case: dict) -> tuple[int, str]:
            return (0 if case["status"] == "failed" else VERDICT_ORDER.get(case["verdict"], 3)), case["case"]

        cases.sort(key=rank)
        answer = {
            "output_dir": str(self.output_dir), "input_dir": str(self.input_dir or ""), "cases": cases,
            "problems": table.problems[:PROBLEMS_LISTED], "problem_count": len(table.problems),
        }  # fmt: skip
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        return Listing({case["case"]: case for case in cases}, records, reviews, body)

    def case(self, case_id: str) -> tuple[dict[str, Any], ResultRow | None]:
        """The case's summary row and its record (None when it has none that can be read); 404 for a
        case the table does not list (so the id names a record only once the table has vouched for it)."""
        listing = self.listing()
        if case_id not in listing.cases:
            raise HTTPException(404, f"no case {case_id!r} in {self.output_dir / TABLE}")
        return listing.cases[case_id], listing.records.get(case_id)

    def mask_path(self, case_id: str, source: str = "review") -> Path:
        """The model's mask, or with ``source="review"`` the correction of a ``corrected`` case."""
        row, record = self.case(case_id)
        review = self.listing().reviews.get(case_id) if source == "review" else None
        if review and review.status == "corrected" and (self.output_dir / review.mask).exists():
            return inside(self.output_dir / review.mask, self.output_dir, f"the correction of {case_id}")
        name = record.mask if record is not None and record.mask else f"{case_id}.nii.gz"
        return inside(self.output_dir / name, self.output_dir, f"the mask of {case_id}")

    def writable(self, case_id: str) -> tuple[Path, Path]:
        """``(the model's mask, where the correction goes)`` of a case that can be reviewed: listed,
        written, and named so that its correction lies in the output folder (409 / 403 otherwise)."""
        row, _ = self.case(case_id)
        if row["status"] != "written":
            raise HTTPException(409, f"{case_id}: no mask was written for it ({row['status']}): nothing to review")
        name = corrected_name(case_id)
        if Path(name).name != name or "\\" in name or case_id.startswith(".") or "\0" in name:
            raise HTTPException(403, f"{case_id!r}: a correction of it would not be a file of {self.output_dir}")
        return self.mask_path(case_id, "model"), self.output_dir / name

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


def correction_limit(model_mask: Path) -> int:
    """The most bytes a correction of the case whose model mask is ``model_mask`` may be sent as."""
    import nibabel as nib

    shape = nib.load(model_mask).shape
    voxels = 1
    for n in shape:
        voxels *= int(n)
    return voxels * BYTES_PER_VOXEL + HEADER_ALLOWANCE


def create_app(output_dir: Path, input_dir: Path | None = None, hosts: tuple[str, ...] = HOSTS) -> FastAPI:
    """The app over ``output_dir``; ``hosts``: the names (``Host`` header, without the port) it answers to."""
    review = Review(output_dir, input_dir)
    token = secrets.token_urlsafe(32)
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

    @app.get("/api/session")
    def session() -> dict:
        return {"token": token, "header": TOKEN_HEADER}

    @app.get("/api/cases")
    def cases() -> Response:
        return Response(review.listing().body, media_type="application/json")

    @app.get("/api/cases/{case_id}/mask")
    def mask(case_id: str, source: str = "review") -> FileResponse:
        if source not in ("review", "model"):
            raise HTTPException(422, f"source must be review or model (got {source[:40]!r})")
        path = review.mask_path(case_id, source)
        return FileResponse(path, media_type="application/gzip", headers={"X-Mask-File": path.name})

    def check_token(request: Request) -> None:
        sent = request.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(sent.encode(), token.encode()):
            raise HTTPException(403, f"a save needs this station's token in {TOKEN_HEADER} (reload the page)")

    def answer(case_id: str, made, replaced) -> dict:
        listed = {"status": replaced.status, "time": replaced.time} if replaced else None
        return {"case": case_id, "status": made.status, "time": made.time, "mask": made.mask, "replaced": listed}

    @app.put("/api/cases/{case_id}/correction")
    async def correction(case_id: str, request: Request) -> dict:
        check_token(request)
        model_mask, destination = review.writable(case_id)
        limit = await run_in_threadpool(correction_limit, model_mask)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"{case_id}: the correction is over {limit} bytes, more than its grid needs")

        def save() -> dict:
            with review.write_lock:
                counts = save_correction(bytes(body), model_mask, destination)
                made, replaced = review.book.record(case_id, "corrected", destination.name)
            return {**answer(case_id, made, replaced), "voxels": counts}

        try:
            return await run_in_threadpool(save)
        except CorrectionError as error:
            raise HTTPException(error.status, f"{case_id}: {error}") from None

    @app.post("/api/cases/{case_id}/accept")
    def accept(case_id: str, request: Request) -> dict:
        check_token(request)
        model_mask, _ = review.writable(case_id)
        with review.write_lock:
            made, replaced = review.book.record(case_id, "accepted", model_mask.name)
        return answer(case_id, made, replaced)

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
