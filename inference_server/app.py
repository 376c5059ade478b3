"""The FastAPI application: HTTP only; the segmentation itself is :class:`segcore.predictor.Predictor`.

``create_app(settings)`` builds the app; the predictor is loaded once, at start-up (lifespan).
``POST /segment`` streams the upload to a temporary file (413 past the size limit), waits for
one of ``max_concurrent`` inference slots (at most ``queue_length`` requests wait; beyond that
503 with ``Retry-After``), runs the predictor in a worker thread and answers with the label
NIfTI or a JSON summary. Bad input is a 4xx with a JSON ``detail``; temporary files are
removed whatever happens.
"""

from __future__ import annotations

import asyncio
import platform
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import anyio
import fastapi
import numpy as np
import SimpleITK as sitk
import torch
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response

from inference_server.schemas import Info, Problem, Segmentation
from inference_server.settings import Settings
from segcore.io import VolumeError, case_stem, read_volume, write_volume
from segcore.labels import LABEL_NAMES
from segcore.postprocess import organ_statistics
from segcore.predictor import Predictor

NIFTI_MEDIA_TYPE = "application/gzip"
ERRORS = {
    400: {"model": Problem, "description": "unreadable or invalid input"},
    401: {"model": Problem, "description": "missing or wrong X-API-Key"},
    413: {"model": Problem, "description": "upload over the size limit"},
    422: {"model": Problem, "description": "not a 3-D CT (2-D, 4-D, absurd size, ...)"},
    503: {"model": Problem, "description": "busy: retry after the Retry-After seconds"},
    504: {"model": Problem, "description": "the request took longer than the timeout"},
}


class UploadTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"upload larger than the limit of {limit / 2**20:.0f} MB")


class BodyLimit:
    """ASGI middleware: refuse ``/segment`` bodies over ``limit`` bytes while they stream in.

    The declared Content-Length is checked first; the running count catches chunked uploads.
    Raised inside body parsing, :class:`UploadTooLarge` reaches FastAPI's handler as a 413.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/segment":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = fastapi.responses.JSONResponse({"detail": UploadTooLarge(self.limit).detail}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise UploadTooLarge(self.limit)
            return message

        return await self.app(scope, limited_receive, send)


class Admission:
    """At most ``concurrent`` inferences at once and ``queue`` waiting; the rest are turned away."""

    def __init__(self, concurrent: int, queue: int):
        self.capacity = concurrent + queue
        self.admitted = 0
        self.slots = asyncio.Semaphore(concurrent)
        self.running: set[asyncio.Task] = set()

    async def run(self, function, timeout: float):
        """Run ``function`` in a worker thread when a slot is free; 503 when full, 504 past ``timeout``.

        On timeout the thread cannot be interrupted: it finishes in the background and keeps its
        slot until then, so the concurrency bound always holds.
        """
        if self.admitted >= self.capacity:
            raise HTTPException(503, "busy: every inference slot and queue place is taken", {"Retry-After": "5"})
        self.admitted += 1

        async def in_slot():
            try:
                async with self.slots:
                    return await anyio.to_thread.run_sync(function)
            finally:
                self.admitted -= 1

        task = asyncio.create_task(in_slot())
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            raise HTTPException(504, f"no result within the request timeout of {timeout:g} s")
        return task.result()


def sniff_kind(name: str, head: bytes) -> Literal["nii.gz", "nii", "zip"]:
    """What an upload is, from its name or, failing that, its first bytes."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return "nii.gz"
    if lower.endswith(".nii"):
        return "nii"
    if lower.endswith(".zip"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "nii.gz"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nii"
    raise HTTPException(400, f"{name}: not a NIfTI (.nii, .nii.gz) file nor a .zip of one DICOM series")


def extract_series(archive: Path, folder: Path, limit: int, name: str) -> Path:
    """Unpack a zip's files (flattened, names sanitised, total size bounded) into ``folder``."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > limit:
                raise HTTPException(413, f"{name}: unpacked size over the limit of {limit / 2**20:.0f} MB")
            if not members:
                raise HTTPException(422, f"{name}: the zip holds no files")
            for index, member in enumerate(members):
                safe = f"{index:06d}_{PurePosixPath(member.filename).name}"
                with bundle.open(member) as source, (folder / safe).open("wb") as target:
                    shutil.copyfileobj(source, target)
    except zipfile.BadZipFile:
        raise HTTPException(400, f"{name}: not a readable zip archive") from None
    return folder


async def save_upload(upload: UploadFile, workdir: Path, settings: Settings) -> Path:
    """Copy the upload into ``workdir`` under a name the readers understand; a DICOM zip is unpacked."""
    name = upload.filename or "upload"
    head = await upload.read(8)
    await upload.seek(0)
    kind = sniff_kind(name, head)
    target = workdir / f"input.{kind}"
    with target.open("wb") as stream:  # one worker thread for the whole copy, not one hop per chunk
        await anyio.to_thread.run_sync(shutil.copyfileobj, upload.file, stream, 1 << 22)
    if kind != "zip":
        return target
    series = workdir / "series"
    series.mkdir()
    return await anyio.to_thread.run_sync(extract_series, target, series, 4 * settings.max_upload_bytes, name)


def require_key(request: Request, x_api_key: Annotated[str | None, fastapi.Header()] = None) -> None:
    """401 unless the configured API key (if any) came in ``X-API-Key``."""
    expected = request.app.state.settings.api_key
    if expected is not None and not (
        x_api_key is not None and secrets.compare_digest(x_api_key.encode(), expected.get_secret_value().encode())
    ):
        raise HTTPException(401, "missing or wrong X-API-Key", {"WWW-Authenticate": "X-API-Key"})


def loaded_predictor(request: Request) -> Predictor:
    """The predictor loaded at start-up (503 while there is none)."""
    loaded = request.app.state.predictor
    if loaded is None:
        raise HTTPException(503, "the models are not loaded", {"Retry-After": "5"})
    return loaded


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service; ``settings`` default to the environment (:class:`Settings`)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.predictor = await anyio.to_thread.run_sync(
            lambda: Predictor.from_weights(settings.weights_dir, settings.device, settings.precision, verify=True)
        )
        app.state.admission = Admission(settings.max_concurrent, settings.queue_length)
        yield
        app.state.predictor = None

    app = FastAPI(
        title="Abdominal CT organ segmentation",
        description="Two-stage coarse-to-fine segmentation of the 13 FLARE22 abdominal organs.",
        version="1.0",
        lifespan=lifespan,
    )
    app.state.predictor, app.state.settings = None, settings
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)

    @app.get("/health", summary="The process is alive")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="The models are loaded", responses={503: ERRORS[503]})
    def ready(model: Annotated[Predictor, Depends(loaded_predictor)]) -> dict[str, bool]:
        return {"ready": True}

    @app.get("/info", response_model=Info, dependencies=[Depends(require_key)], responses={401: ERRORS[401]})
    def info(model: Annotated[Predictor, Depends(loaded_predictor)]) -> Info:
        return Info(
            labels=LABEL_NAMES,
            model=model.info(),
            versions={
                "service": app.version,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "SimpleITK": sitk.Version_VersionString(),
                "fastapi": fastapi.__version__,
            },
            limits={
                "max_upload_mb": settings.max_upload_mb,
                "max_concurrent": settings.max_concurrent,
                "queue_length": settings.queue_length,
                "request_timeout_s": settings.request_timeout_s,
            },
        )

    @app.post(
        "/segment",
        summary="Segment a CT",
        dependencies=[Depends(require_key)],
        responses={200: {"content": {NIFTI_MEDIA_TYPE: {}}, "model": Segmentation}, **ERRORS},
    )
    async def segment(
        request: Request,
        file: Annotated[UploadFile, File(description=".nii / .nii.gz CT, or a .zip holding one DICOM series")],
        output: Annotated[Literal["nifti", "json"], Query(description="label NIfTI or JSON summary")] = "nifti",
    ) -> Any:
        """The label map on the input's exact grid (uint8 NIfTI, FLARE22 ids), or organ volumes,
        mean HU and boxes as JSON. ``Server-Timing`` and ``X-Inference-Seconds`` carry the timings."""
        model = loaded_predictor(request)
        started = time.perf_counter()
        name = file.filename or "upload"
        with tempfile.TemporaryDirectory(prefix="segment-") as tmp:
            workdir = Path(tmp)
            source = await save_upload(file, workdir, settings)
            await file.close()

            def work() -> tuple[bytes | None, dict[str, Any]]:
                try:
                    image, geometry = read_volume(source)
                except VolumeError as error:
                    # Name what the client sent, not the temporary copy.
                    status = 400 if _unreadable(error.reason) else 422
                    raise HTTPException(status, f"{name}: {error.reason}") from None
                read_seconds = time.perf_counter() - started
                prediction = model.predict(image, geometry)
                timings = {"read": read_seconds, **prediction.timings}
                summary = {
                    "file": name,
                    "size": list(geometry.size),
                    "spacing": list(geometry.spacing),
                    "organs": organ_statistics(prediction.labels, image, geometry) if output == "json" else {},
                    "crop_box": prediction.box,
                    "timings": timings,
                    "warnings": prediction.warnings,
                }
                if output == "json":
                    return None, summary
                written, write_started = workdir / "labels.nii.gz", time.perf_counter()
                write_volume(written, prediction.labels, geometry)
                timings["write"] = time.perf_counter() - write_started
                return written.read_bytes(), summary

            body, summary = await request.app.state.admission.run(work, settings.request_timeout_s)
        elapsed = time.perf_counter() - started
        headers = {
            "X-Inference-Seconds": f"{elapsed:.3f}",
            "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in summary["timings"].items()),
        }
        if summary["warnings"]:
            headers["X-Segmentation-Warnings"] = "; ".join(summary["warnings"])
        if body is None:
            return fastapi.responses.JSONResponse(Segmentation(**summary).model_dump(), headers=headers)
        filename = download_name(name)
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(body, media_type=NIFTI_MEDIA_TYPE, headers=headers)

    return app


def download_name(upload_name: str) -> str:
    """``<stem>_labels.nii.gz`` for an upload named ``<stem>.nii.gz``, ``<stem>.nii`` or ``<stem>.zip``."""
    base = PurePosixPath(upload_name.replace("\\", "/")).name
    stem = base[: -len(".zip")] if base.lower().endswith(".zip") else case_stem(base)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "ct"
    return f"{safe}_labels.nii.gz"


def _unreadable(reason: str) -> bool:
    """Whether a reader's complaint is about the bytes (400: unreadable, truncated, empty) rather
    than about a readable volume that is no 3-D CT (422: 2-D, 4-D, absurd size, not HU, ...)."""
    return reason.startswith(("unreadable", "truncated", "empty file", "no such file"))
