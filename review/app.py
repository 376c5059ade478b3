"""The review station's web app: the cases of a ``predict.sh`` output folder, ``fail`` and
``review`` first, each opened in the organ viewer (``viewer/``) over its CT.

Read-only: it reads ``summary.csv``, the case records (``.records/<id>.json``), the masks and the
inputs, and writes nothing. It serves a file only when the file, with every link in its path
followed, lies inside its own folder: a mask inside the output folder, a CT inside the input
folder. The input folder is ``--input-dir`` or the one the records name (every record must name
the same); a record cannot widen it.

Routes: ``/`` (the page), ``/labels`` (organ colours and the CT window), ``/api/cases`` (the
list), ``/api/cases/{case}/ct`` and ``/api/cases/{case}/mask`` (the NIfTI bytes; a DICOM input
is read and sent as NIfTI).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from segcore.labels import ORGANS, display_table
from segcore.outputs.records import RECORDS, TABLE, record_path
from segcore.volumes import VolumeError, is_nifti, nifti_bytes_for_viewing, read_volume
from viewer import STATIC as VIEWER_STATIC

STATIC = Path(__file__).with_name("static")
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"
VERDICT_ORDER = {"fail": 0, "review": 1, "ok": 2}
"""The list's order: failed cases and ``fail`` verdicts, then ``review``, then ``ok`` (then by case id)."""


class ReviewError(ValueError):
    """The output folder cannot be reviewed (no ``summary.csv``, records naming several input folders)."""


class Review:
    """The two folders and what is in them, read afresh on every request (a batch may still be running)."""

    def __init__(self, output_dir: Path, input_dir: Path | None = None):
        self.output_dir = Path(output_dir).resolve()
        if not (self.output_dir / TABLE).is_file():
            raise ReviewError(f"{self.output_dir}: no {TABLE} here: is it a predict.sh output folder?")
        self.input_dir = Path(input_dir).resolve() if input_dir is not None else self.recorded_input_dir()

    def records(self) -> dict[str, dict[str, Any]]:
        found = {}
        for path in sorted((self.output_dir / RECORDS).glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            found[str(record.get("case", path.stem))] = record
        return found

    def recorded_input_dir(self) -> Path | None:
        """The one input folder the records name; None when they name none."""
        named = {record["input_dir"] for record in self.records().values() if record.get("input_dir")}
        if len(named) > 1:
            raise ReviewError(
                f"{self.output_dir}: the records name {len(named)} input folders ({', '.join(sorted(named))}); "
                "say which one with --input-dir"
            )
        return Path(named.pop()).resolve() if named else None

    def cases(self) -> list[dict[str, Any]]:
        """The rows of ``summary.csv`` in review order, each with its organs' volumes (mL)."""
        with open(self.output_dir / TABLE, newline="") as table:
            rows = list(csv.DictReader(table))
        records = self.records()  # the lists as written (the table joins them with "; ")
        cases = []
        for row in rows:
            organs = {name: float(row[f"{name}_ml"]) for name in ORGANS.values() if row.get(f"{name}_ml")}
            record = records.get(row["case"], {})
            lists = {key: record.get(key, [text for text in row[key].split("; ") if text])
                     for key in ("quality_reasons", "warnings")}  # fmt: skip
            cases.append({
                "case": row["case"], "input": row["input"], "status": row["status"], "verdict": row["verdict"],
                **lists, "reason": row["reason"], "organs": organs,
            })  # fmt: skip

        def rank(case: dict) -> tuple[int, str]:
            return (0 if case["status"] == "failed" else VERDICT_ORDER.get(case["verdict"], 3)), case["case"]

        return sorted(cases, key=rank)

    def case(self, case_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The case's summary row and its record; 404 for a case the table does not list (so the
        id names a record file only once the table has vouched for it)."""
        rows = {case["case"]: case for case in self.cases()}
        if case_id not in rows:
            raise HTTPException(404, f"no case {case_id!r} in {self.output_dir / TABLE}")
        try:
            record = json.loads(record_path(self.output_dir, case_id).read_text())
        except (OSError, ValueError):
            record = {}
        return rows[case_id], record

    def mask_path(self, case_id: str) -> Path:
        _, record = self.case(case_id)
        name = record.get("mask") or f"{case_id}.nii.gz"
        return inside(self.output_dir / name, self.output_dir, f"the mask of {case_id}")

    def ct_path(self, case_id: str) -> Path:
        row, _ = self.case(case_id)
        if self.input_dir is None:
            raise HTTPException(404, f"{case_id}: the records name no input folder: start review.sh with --input-dir")
        return inside(self.input_dir / row["input"], self.input_dir, f"the CT of {case_id}")


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` with every link followed, if it exists and lies inside ``root``; else 404 / 403."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(404, f"{what}: {path} does not exist") from None
    if not resolved.is_relative_to(root):
        raise HTTPException(403, f"{what}: {path} lies outside {root}: the review station serves nothing else")
    return resolved


def create_app(output_dir: Path, input_dir: Path | None = None) -> FastAPI:
    review = Review(output_dir, input_dir)
    app = FastAPI(title="Review station", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
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
    def cases() -> dict:
        return {"output_dir": str(review.output_dir), "input_dir": str(review.input_dir or ""), "cases": review.cases()}

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
