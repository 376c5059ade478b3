"""The FastAPI application: HTTP only; the segmentation itself is :class:`segcore.inference.predictor.Predictor`.

``create_app(settings)`` builds the app from the module's routes; the predictor is loaded once,
at start-up (lifespan). Endpoints take the settings and the predictor through ``Depends``
(:func:`app_settings`, :func:`loaded_predictor`), so tests can swap in a fake predictor.
``POST /segment`` is admitted from its headers (API key, declared size, capacity: 401, 413, 503
before the body is read; :mod:`inference_server.admission`), streams the upload into a private
temporary folder (413 past the size limit, 408 when it stalls), waits for one of
``max_concurrent`` inference slots, and runs in a worker thread: unpack a zipped series within
bounds (:mod:`inference_server.uploads`), read, segment, answer with the label NIfTI or a JSON
summary. Bad input is a 4xx with a JSON ``detail`` that names the upload and never echoes it;
the temporary folder is removed once the worker is done with it, whatever the outcome.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
import fastapi
import numpy as np
import SimpleITK as sitk
import torch
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from inference_server.admission import (
    Admission,
    MemoryModel,
    SegmentGate,
    UploadPace,
    key_matches,
    unauthorized,
)
from inference_server.origins import HostGuard
from inference_server.schemas import Bundle, Info, Problem, Segmentation
from inference_server.settings import Settings
from inference_server.uploads import ZipLimits, check_archive, extract_series, sniff_kind
from segcore.inference.predictor import Predictor
from segcore.labels import LABEL_NAMES, display_table
from segcore.outputs.case import DICOM_OUTPUTS, CaseOutputs, build_case, dicom_refusal
from segcore.outputs.records import CaseRecord
from segcore.outputs.source_series import DicomOutputUnavailable
from segcore.volumes import VolumeError, case_id, case_stem, check_file_header, nifti_bytes_for_viewing, read_volume
from viewer import STATIC as VIEWER_STATIC

NIFTI_MEDIA_TYPE = "application/gzip"
Output = Literal["nifti", "json", "dicom-seg", "rtstruct", "preview", "bundle"]
OUTPUT_HELP = (
    "nifti: the label map; dicom-seg: a DICOM Segmentation, rtstruct: a DICOM RT Structure Set of organ "
    "contours (both for DICOM inputs); preview: a PNG; json: organ volumes, mean HU, quality; bundle: JSON "
    "with all of them from one inference (base64 files)"
)
ERRORS = {
    400: {"model": Problem, "description": "unreadable or invalid input"},
    401: {"model": Problem, "description": "missing or wrong X-API-Key"},
    403: {"model": Problem, "description": "a cross-origin POST from an origin not in SEGMENT_ALLOWED_ORIGINS"},
    408: {"model": Problem, "description": "the upload stalled for longer than the idle timeout"},
    413: {"model": Problem, "description": "upload (or its unpacked zip) over the size limits"},
    422: {"model": Problem, "description": "not a 3-D CT (2-D, 4-D, absurd size, impossible geometry, ...)"},
    503: {"model": Problem, "description": "busy: retry after the Retry-After seconds"},
    504: {"model": Problem, "description": "the request took longer than the timeout"},
}
VOLUME_ERROR_STATUS = {
    "unreadable": 400,
    "not_3d": 422,
    "too_large": 422,
    "geometry": 422,
    "not_ct": 422,
    "invalid": 422,
}
"""HTTP status per :data:`segcore.volumes.ErrorKind`: the bytes are bad (400), or the volume is no CT we take (422)."""
MAX_SHOWN_NAME = 200


async def save_upload(upload: UploadFile, workdir: Path) -> tuple[Path, str]:
    """Copy the upload into ``workdir`` under a name the readers understand; returns it and its kind."""
    head = await upload.read(8)
    await upload.seek(0)
    kind = sniff_kind(shown_name(upload.filename), head)
    target = workdir / f"input.{kind}"
    with target.open("wb") as stream:  # one worker thread for the whole copy, not one hop per chunk
        await anyio.to_thread.run_sync(shutil.copyfileobj, upload.file, stream, 1 << 22)
    return target, kind


def app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def require_key(
    settings: Annotated[Settings, Depends(app_settings)], x_api_key: Annotated[str | None, fastapi.Header()] = None
) -> None:
    """401 unless the configured API key (if any) came in ``X-API-Key`` (``/segment``: checked
    from the headers already, by :class:`SegmentGate`; declared here for the API description)."""
    if not key_matches(x_api_key, settings.api_key):
        raise unauthorized()


def loaded_predictor(request: Request) -> Predictor:
    """The predictor loaded at start-up (503 while there is none). Tests swap in another one with
    ``app.dependency_overrides[loaded_predictor]``."""
    loaded = request.app.state.predictor
    if loaded is None:
        raise HTTPException(503, "the models are not loaded", {"Retry-After": "5"})
    return loaded


Model = Annotated[Predictor, Depends(loaded_predictor)]
AppSettings = Annotated[Settings, Depends(app_settings)]
routes = APIRouter()


STATIC = Path(__file__).with_name("static")
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'"

DOCS_PATHS = ("/docs", "/docs/oauth2-redirect")
DOCS_ASSETS = "/docs-assets"
"""Where the API description pages' scripts and styles are served (from the ``fastapi-offline`` package)."""
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'"
)
"""The API description page (Swagger UI): FastAPI starts it with an inline script; everything it
loads comes from this service, so it works on a network without the internet."""


@routes.get("/", include_in_schema=False)
def page() -> FileResponse:
    """The web page (static files, no build step, nothing from other sites)."""
    return FileResponse(STATIC / "index.html")


class SecurityHeaders:
    """ASGI middleware, outermost: ``X-Content-Type-Options: nosniff`` on every response (the
    gate's early refusals included) and the page's policy (:data:`PAGE_POLICY`) on every response
    that serves the page or its static files."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        page = path == "/" or path.startswith(("/static/", "/viewer/"))
        docs = path in DOCS_PATHS or path.startswith(DOCS_ASSETS + "/")
        policy = PAGE_POLICY if page else DOCS_POLICY if docs else None

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
                if policy:
                    headers.append((b"content-security-policy", policy.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


@routes.get("/labels", summary="The organs' ids, names and display colours, and the CT display window")
def labels() -> dict:
    """What the page's viewer draws the labels with (:func:`segcore.labels.display_table`)."""
    return display_table()


@routes.get("/health", summary="The process is alive")
def health() -> dict[str, str]:
    return {"status": "ok"}


@routes.get("/ready", summary="The models are loaded", responses={503: ERRORS[503]})
def ready(model: Model) -> dict[str, bool]:
    return {"ready": True}


@routes.get("/info", response_model=Info, dependencies=[Depends(require_key)], responses={401: ERRORS[401]})
def info(request: Request, model: Model, settings: AppSettings) -> Info:
    return Info(
        labels=LABEL_NAMES,
        model=model.info(),
        versions={
            "service": request.app.version,
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
            "idle_timeout_s": settings.idle_timeout_s,
            "max_uploads": settings.max_uploads,
            "head_timeout_s": settings.head_timeout_s,
            "min_upload_kib_s": settings.min_upload_kib_s,
            "upload_deadline_s": settings.upload_deadline_s,
            "max_request_memory_mb": settings.max_request_memory_mb,
            "memory_budget_mb": settings.memory_budget_mb,
            "max_unpacked_mb": settings.max_unpacked_mb,
            "max_zip_members": settings.max_zip_members,
            "max_compression_ratio": settings.max_compression_ratio,
        },
    )


@routes.post(
    "/segment",
    summary="Segment a CT",
    dependencies=[Depends(require_key)],
    responses={
        200: {
            "content": {NIFTI_MEDIA_TYPE: {}, "application/dicom": {}, "image/png": {}},
            "model": Segmentation | Bundle,
        },
        **ERRORS,
    },
)
async def segment(
    request: Request,
    model: Model,
    settings: AppSettings,
    file: Annotated[UploadFile, File(description=".nii / .nii.gz CT, or a .zip holding one DICOM series")],
    output: Annotated[Output, Query(description=OUTPUT_HELP)] = "nifti",
) -> Any:
    """The label map on the input's exact grid (uint8 NIfTI, FLARE22 ids), a DICOM-SEG or an
    RTSTRUCT (DICOM inputs), a preview PNG, the organ volumes, mean HU and boxes as JSON, or all of them as one JSON
    bundle. ``Server-Timing`` and ``X-Inference-Seconds`` carry the timings."""
    started = time.perf_counter()
    name = shown_name(file.filename)
    zip_limits = ZipLimits(settings.max_zip_members, settings.max_unpacked_bytes, settings.max_compression_ratio)
    workdir = Path(tempfile.mkdtemp(prefix="segment-"))  # private (0700), removed by whoever owns it last
    try:
        upload, kind = await save_upload(file, workdir)
        await file.close()
        voxels = await anyio.to_thread.run_sync(check_headers, upload, kind, name, zip_limits)  # before the queue
        request.state.ticket.reserve_memory(voxels, name, series=kind == "zip")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    gzip_bundle = output == "bundle" and accepts_gzip(request.headers.get("accept-encoding", ""))
    if output in ("dicom-seg", "rtstruct") and kind != "zip":
        shutil.rmtree(workdir, ignore_errors=True)
        wanted = DICOM_OUTPUTS[OUTPUT_DICOM_KIND[output]]
        raise HTTPException(422, f"{name}: {wanted} needs a DICOM series (a zip) as input; ask for output=nifti")

    def work() -> tuple[Answer | None, dict[str, Any]]:
        source = extract_series(upload, workdir / "series", zip_limits, name) if kind == "zip" else upload
        if output in OUTPUT_DICOM_KIND and (refusal := dicom_refusal(source, OUTPUT_DICOM_KIND[output])) is not None:
            raise HTTPException(422, f"{name}: {refusal}")  # before inference
        with volume_errors_as_http(name, upload):
            image, geometry = read_volume(source)
        read_seconds = time.perf_counter() - started
        prediction = model.predict(image, geometry)
        prediction.timings = {"read": read_seconds, **prediction.timings}
        written = time.perf_counter()
        staging = workdir / "outputs"
        staging.mkdir()
        try:
            made = build_case(
                staging, OUTPUT_KINDS[output], case=case_id(name), input_name=name, source=source,
                prediction=prediction, image=image, geometry=geometry, notice=model.notice,
                checkpoints_sha256=[entry["sha256"] for entry in getattr(model, "sources", {}).values()],
                statistics=output in ("json", "bundle", "preview"),
            )  # fmt: skip
        except DicomOutputUnavailable as error:
            raise HTTPException(422, f"{name}: no {error.output}: {error}") from None
        viewing = nifti_bytes_for_viewing(image, geometry) if output == "bundle" and kind == "zip" else None
        answer = answer_of(output, made, name, viewing, gzip_bundle)
        made.record.timings["write"] = round(time.perf_counter() - written, 4)
        return answer, made.record

    answer, record = await request.state.ticket.run(work, settings.request_timeout_s, workdir)
    headers = response_headers(record, time.perf_counter() - started, model.notice)
    if answer is None:
        return JSONResponse(record.model_dump(), headers=headers)
    if answer.filename:
        headers["Content-Disposition"] = attachment(answer.filename)
    if output == "bundle":
        headers["Vary"] = "Accept-Encoding"
    if answer.encoding:
        headers["Content-Encoding"] = answer.encoding
    return Response(answer.body, media_type=answer.media_type, headers=headers)


OUTPUT_KINDS = {"json": set(), "nifti": {"mask"}, "preview": {"preview"}, "dicom-seg": {"seg"},
                "rtstruct": {"rtstruct"}, "bundle": {"mask", "preview", "seg", "rtstruct"}}  # fmt: skip
"""The files of a case (:data:`segcore.outputs.case.KINDS`) each ``output`` needs; the record is always made."""
OUTPUT_DICOM_KIND = {"dicom-seg": "seg", "rtstruct": "rtstruct"}
"""The outputs that are one DICOM output alone (:data:`segcore.outputs.case.DICOM_OUTPUTS`)."""


@dataclass(frozen=True)
class Answer:
    """A response body other than the JSON summary."""

    body: bytes
    media_type: str
    filename: str | None = None
    encoding: str | None = None


def answer_of(
    output: str, made: CaseOutputs, name: str, ct: bytes | None = None, gzip_bundle: bool = False
) -> Answer | None:
    """The body for ``output`` from the case's staged files (None: the JSON record); runs in the worker
    thread. ``ct``: the input as NIfTI for the page's viewer (a bundle for a DICOM input).
    ``gzip_bundle``: a bundle comes gzip-encoded (``Content-Encoding``), its base64 back to about its
    files' size (a DICOM-SEG's bit planes, mostly zeros, to a fraction of it)."""
    if output == "json":
        return None
    if output in SINGLE_FILE_ANSWERS:
        kind, media_type, suffix = SINGLE_FILE_ANSWERS[output]
        return Answer(made.files[kind].read_bytes(), media_type, f"{download_stem(name)}{suffix}")
    return Answer(bundle_body(made, ct, gzip_bundle), "application/json", encoding="gzip" if gzip_bundle else None)


SINGLE_FILE_ANSWERS = {
    "nifti": ("mask", NIFTI_MEDIA_TYPE, "_labels.nii.gz"),
    "preview": ("preview", "image/png", "_preview.png"),
    "dicom-seg": ("seg", "application/dicom", "_seg.dcm"),
    "rtstruct": ("rtstruct", "application/dicom", "_rtstruct.dcm"),
}
"""``output`` -> (the staged file's kind, its media type, the download name's ending)."""

BUNDLE_FILES = {"mask": "mask_nifti_base64", "preview": "preview_png_base64", "seg": "dicom_seg_base64",
                "rtstruct": "rtstruct_base64"}  # fmt: skip
"""A staged file's kind -> its field in :class:`Bundle`."""

BASE64_CHUNK = 3 << 20
"""Bytes encoded at a time (a multiple of 3: the chunks' base64 joins into the whole's)."""

BUNDLE_GZIP_LEVEL = 1
"""Fastest level: the base64 of gzip-ed NIfTI files gains nothing from more effort."""


def bundle_body(made: CaseOutputs, ct: bytes | None, compress: bool) -> bytes:
    """The :class:`Bundle` JSON, written a piece at a time into the answer (gzip-ed if ``compress``):
    every file's base64 is made a chunk at a time, so that neither the files' base64 nor the
    uncompressed JSON exists whole beside the answer (together three times the files' size)."""
    head = Bundle(
        **made.record.model_dump(), **dict.fromkeys(BUNDLE_FILES.values(), ""),
        dicom_seg_note=made.notes.get("seg"), rtstruct_note=made.notes.get("rtstruct"),
    )  # fmt: skip
    text = head.model_dump_json(exclude={*BUNDLE_FILES.values(), "ct_nifti_base64"})
    sources: dict[str, Path | bytes | None] = {field: made.files.get(kind) for kind, field in BUNDLE_FILES.items()}
    sources["ct_nifti_base64"] = ct
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=BUNDLE_GZIP_LEVEL, mtime=0)
        if compress
        else contextlib.nullcontext(buffer)
    ) as out:
        out.write(text[:-1].encode())  # the object without its closing brace
        for field, source in sources.items():
            if source is None:
                out.write(f',"{field}":null'.encode())
                continue
            out.write(f',"{field}":"'.encode())
            with open(source, "rb") if isinstance(source, Path) else io.BytesIO(source) as stream:
                while chunk := stream.read(BASE64_CHUNK):
                    out.write(base64.b64encode(chunk))
            out.write(b'"')
        out.write(b"}")
    return buffer.getvalue()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes ``gzip`` (not with ``q=0``)."""
    for item in accept_encoding.lower().split(","):
        coding, _, parameters = item.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            weight = parameters.strip().removeprefix("q=")
            return not (parameters.strip().startswith("q=") and weight.replace(".", "").strip("0") == "")
    return False


def response_headers(record: CaseRecord, elapsed: float, notice: str | None) -> dict[str, str]:
    """Timings, warnings, the quality verdict and the model's notice as response headers."""
    headers = {
        "X-Inference-Seconds": f"{elapsed:.3f}",
        "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in record.timings.items()),
    }
    if record.warnings:
        headers["X-Segmentation-Warnings"] = ascii_header("; ".join(record.warnings))
    headers["X-Quality-Verdict"] = record.quality.verdict
    if record.quality.reasons:
        headers["X-Quality-Reasons"] = ascii_header("; ".join(record.quality.reasons))
    if notice:
        headers["X-Model-Notice"] = ascii_header(notice)
    return headers


LOG = logging.getLogger("uvicorn.error")
"""uvicorn's own log: the start-up lines go where its "Application startup complete" goes."""


def loaded_line(info: dict[str, Any]) -> str:
    """What the service loaded, for its start-up log: each stage's checkpoint and SHA-256, the
    device, the precision and the weights' notice."""
    stages = ", ".join(
        f"{stage} {info[stage]['path']} (sha256 {info[stage]['sha256'][:12]})" for stage in ("coarse", "fine")
    )
    notice = f"; notice: {info['notice']}" if info.get("notice") else ""
    return f"inference_server: loaded {stages} on {info['device']}, {info['precision']}{notice}"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service; ``settings`` default to the environment (:class:`Settings`). The predictor is
    loaded at start-up (the lifespan), once."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.predictor = await anyio.to_thread.run_sync(
            lambda: Predictor.from_weights(
                settings.weights_dir, settings.device, settings.precision, verify=True, body_region=settings.body_region
            )
        )
        LOG.info("%s", loaded_line(app.state.predictor.info()))
        yield
        app.state.predictor = None

    app = FastAPIOffline(  # FastAPI with /docs served from here, not from a CDN
        title="Abdominal CT organ segmentation",
        description="Two-stage coarse-to-fine segmentation of the 13 FLARE22 abdominal organs.",
        version="1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        redoc_url=None,  # ReDoc's page fetches its logo from redoc.ly whatever it is given
    )
    app.state.predictor, app.state.settings = None, settings
    memory = MemoryModel(
        settings.memory_bytes_per_voxel, settings.memory_base_mb * 2**20, settings.max_request_memory_mb * 2**20,
        settings.memory_budget_mb * 2**20, settings.memory_series_bytes_per_voxel,
    )  # fmt: skip
    app.state.admission = Admission(settings.max_concurrent, settings.queue_length, settings.max_uploads, memory)
    pace = UploadPace(
        settings.idle_timeout_s, settings.upload_grace_s, settings.min_upload_kib_s * 1024, settings.upload_deadline_s
    )
    app.add_middleware(
        SegmentGate, admission=app.state.admission, api_key=settings.api_key, limit=settings.max_upload_bytes,
        pace=pace,
    )  # fmt: skip
    app.add_middleware(HostGuard, settings=settings)  # before admission: a refused Host takes no place
    app.add_middleware(SecurityHeaders)  # added last: outermost, sees every response
    app.add_exception_handler(RequestValidationError, validation_problem)
    app.include_router(routes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/viewer", StaticFiles(directory=VIEWER_STATIC), name="viewer")
    return app


def check_headers(upload: Path, kind: str, name: str, zip_limits: ZipLimits) -> int:
    """What can be refused from the upload's headers alone (a bomb, a header claiming gigabytes),
    in milliseconds: done before the request waits for a slot. Returns the input's voxels as the
    headers give them (a zipped series: its images' rows × columns × frames, and at least its
    unpacked bytes / 2, as if it were all int16 pixels: pixel data no header describes still
    costs memory to read)."""
    if kind == "zip":
        size = check_archive(upload, zip_limits, name)
        return max(size.image_voxels, size.unpacked_bytes // 2)
    with volume_errors_as_http(name, upload):
        return math.prod(check_file_header(upload).size)


@contextmanager
def volume_errors_as_http(name: str, upload: Path) -> Iterator[None]:
    """A reader's :class:`VolumeError` as the HTTP error for its kind, naming what the client sent:
    the temporary copy's path (which a library's message may quote) becomes the upload's name."""
    try:
        yield
    except VolumeError as error:
        reason = error.reason.replace(str(upload), name).replace(str(upload.parent) + os.sep, "")
        raise HTTPException(VOLUME_ERROR_STATUS[error.kind], f"{name}: {reason}") from None


def shown_name(filename: str | None) -> str:
    """The client's file name as error messages and JSON show it (bounded: never the upload's bulk)."""
    name = filename or "upload"
    return name if len(name) <= MAX_SHOWN_NAME else name[:MAX_SHOWN_NAME] + "…"


def download_stem(upload_name: str) -> str:
    """``<stem>`` of an upload named ``<stem>.nii.gz``, ``<stem>.nii`` or ``<stem>.zip``, made safe for
    a file name: downloads are ``<stem>_labels.nii.gz``, ``<stem>_seg.dcm``, ``<stem>_preview.png``."""
    base = PurePosixPath(upload_name.replace("\\", "/")).name
    stem = base[: -len(".zip")] if base.lower().endswith(".zip") else case_stem(base)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "ct"


def attachment(filename: str) -> str:
    """``Content-Disposition`` for any file name (RFC 6266): an ASCII ``filename=`` for old clients
    and the exact name as ``filename*=UTF-8''…``."""
    return f"attachment; filename=\"{ascii_header(filename)}\"; filename*=UTF-8''{quote(filename, safe='')}"


def ascii_header(text: str) -> str:
    """``text`` with every character a header cannot carry as is replaced by ``_``."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in text)


async def validation_problem(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming the fields and what is wrong with them, never echoing their values (an upload)."""
    problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors())
    return JSONResponse({"detail": problems[:1000]}, status_code=422)
