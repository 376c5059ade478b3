"""Who gets in, and when: admission is decided from the request's headers, before its body.

:class:`SegmentGate` (ASGI middleware, ``POST /segment`` only) answers 401 for a missing or
wrong API key, 413 for a declared body over the limit and 503 when every inference slot and
queue place is taken, all before a byte of the body is read. An admitted request holds a
:class:`Ticket` (a place in the count) from its headers until its work ends; so uploads in
progress count against capacity, and there are never more uploads than places. While the body
streams in, a gap longer than the idle timeout ends it with 408 and a running byte count past
the limit with 413, and so does an upload slower than the minimum rate after its grace
period or not complete by its deadline (:class:`UploadPace`). Uploads in progress hold upload
places (``max_uploads``), apart from the queue's: slow uploaders can fill the upload places,
never the inference queue. Refusals sent before the body is read close the connection.

:meth:`Ticket.run` hands the work and its temporary folder to a worker task: the folder is
removed by that task after the worker thread ends, whatever the request's outcome (a 504
returns at once; the thread cannot be interrupted, keeps its slot and its folder until it
ends, and then both are freed).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from pydantic import SecretStr

SEGMENT_PATH = "/segment"
CLOSE = {"Connection": "close"}
"""On a refusal sent before the body was read: the connection closes once the answer is sent,
so a refused client cannot go on sending its body."""


def key_matches(given: str | None, expected: SecretStr | None) -> bool:
    """Whether ``given`` is the configured API key (always true when none is configured)."""
    return expected is None or (
        given is not None and secrets.compare_digest(given.encode(), expected.get_secret_value().encode())
    )


def unauthorized() -> HTTPException:
    return HTTPException(401, "missing or wrong X-API-Key", {"WWW-Authenticate": "X-API-Key", **CLOSE})


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload larger than the limit of {limit / 2**20:.0f} MB", CLOSE)


def busy() -> HTTPException:
    return HTTPException(503, "busy: every inference slot and queue place is taken", {"Retry-After": "5", **CLOSE})


def too_slow(reason: str) -> HTTPException:
    return HTTPException(408, reason, CLOSE)


@dataclass(frozen=True)
class UploadPace:
    """How an upload must arrive: no gap over ``idle_s``; after ``grace_s``, a mean rate of at
    least ``min_bytes_per_s``; the whole body within ``deadline_s``."""

    idle_s: float
    grace_s: float
    min_bytes_per_s: float
    deadline_s: float

    def wait_limit(self, elapsed: float, received: int) -> tuple[float, str]:
        """How long the next piece of the body may take, and what a 408 then says."""
        limits = [(self.idle_s, f"upload idle for more than {self.idle_s:g} s"),
                  (self.deadline_s - elapsed, f"upload not complete within {self.deadline_s:g} s")]  # fmt: skip
        if self.min_bytes_per_s > 0:  # the mean rate falls under the minimum at this time
            at = max(self.grace_s, received / self.min_bytes_per_s)
            limits.append((at - elapsed, f"upload slower than {self.min_bytes_per_s / 1024:g} KiB/s"))
        return min(limits)


@dataclass(frozen=True)
class MemoryModel:
    """A request's expected peak memory from its input's voxels, and the bounds it must fit.
    A zipped DICOM series costs more per voxel than a NIfTI file: its answer may carry a DICOM-SEG,
    an RTSTRUCT and the CT as NIfTI for the page's viewer."""

    bytes_per_voxel: float
    base_bytes: float
    request_limit: float
    budget: float
    series_bytes_per_voxel: float | None = None
    """For a zipped DICOM series; None: as ``bytes_per_voxel``."""

    def need(self, voxels: int, series: bool = False) -> int:
        per_voxel = self.bytes_per_voxel
        if series and self.series_bytes_per_voxel:  # never below the NIfTI rate an operator may have raised
            per_voxel = max(per_voxel, self.series_bytes_per_voxel)
        return int(self.base_bytes + per_voxel * voxels)


class Admission:
    """At most ``concurrent`` inferences at once, ``concurrent + queue`` requests waiting or
    running, and apart from them ``uploads`` bodies streaming in: slow uploads can take upload
    places, never the queue's."""

    def __init__(self, concurrent: int, queue: int, uploads: int, memory: MemoryModel | None = None):
        self.capacity, self.upload_places = concurrent + queue, uploads
        self.admitted = self.uploading = 0
        self.memory, self.reserved_bytes = memory, 0
        self.slots = asyncio.Semaphore(concurrent)
        self.running: set[asyncio.Task] = set()

    def admit(self) -> Ticket:
        """An upload place for one request; 503 (:func:`busy`) when there is none, or when the
        queue is full (its upload would be refused at the end)."""
        if self.uploading >= self.upload_places or self.admitted >= self.capacity:
            raise busy()
        self.uploading += 1
        return Ticket(self)


class Ticket:
    """One request's place: an upload place until its body is in, then a queue place; given back
    once, by the request or by its worker task."""

    def __init__(self, admission: Admission):
        self.admission = admission
        self.handed_over = False
        self.released = False
        self.queued = False
        self.reserved = 0

    def reserve_memory(self, voxels: int, name: str, series: bool = False) -> None:
        """Hold the memory the request will need (:class:`MemoryModel`), from its header's voxel
        count (``series``: a zipped DICOM series): 413 when it could never fit one request's limit,
        503 with ``Retry-After`` while the requests already admitted leave too little of the
        server's budget."""
        model = self.admission.memory
        if model is None or self.reserved:
            return
        need = model.need(voxels, series)
        if need > model.request_limit:
            what = " of a DICOM series" if series else ""
            raise HTTPException(
                413, f"{name}: {voxels:,} voxels{what} need about {need / 2**30:.2f} GiB of memory; the limit is "
                f"{model.request_limit / 2**30:.2f} GiB per request (SEGMENT_MAX_REQUEST_MEMORY_MB)",
            )  # fmt: skip
        if self.admission.reserved_bytes + need > model.budget:
            raise HTTPException(
                503, f"{name}: busy: {need / 2**30:.1f} GiB of memory needed, not free now", {"Retry-After": "10"}
            )
        self.admission.reserved_bytes += need
        self.reserved = need

    def enter_queue(self) -> None:
        """Trade the upload place for a queue place; 503 when the queue filled meanwhile."""
        if self.queued:
            return
        if self.admission.admitted >= self.admission.capacity:
            raise busy()
        self.admission.uploading -= 1
        self.admission.admitted += 1
        self.queued = True

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.reserved_bytes -= self.reserved
            if self.queued:
                self.admission.admitted -= 1
            else:
                self.admission.uploading -= 1

    async def run(self, function: Callable[[], Any], timeout: float, workdir: Path) -> Any:
        """Run ``function`` in a worker thread when a slot is free; 504 past ``timeout``.

        From here on the worker task owns the place and ``workdir``: both are given back when the
        thread has ended, never before.
        """
        try:
            self.enter_queue()
        except HTTPException:  # the queue filled while the body came in: nothing of it may stay
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self.handed_over = True

        async def in_slot():
            try:
                async with self.admission.slots:
                    return await anyio.to_thread.run_sync(function)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
                self.release()

        task = asyncio.create_task(in_slot())
        self.admission.running.add(task)
        task.add_done_callback(self.admission.running.discard)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            raise HTTPException(504, f"no result within the request timeout of {timeout:g} s")
        return task.result()


class SegmentGate:
    """ASGI middleware: admission from the headers of ``POST /segment``, then a guarded body."""

    def __init__(self, app, admission: Admission, api_key: SecretStr | None, limit: int, pace: UploadPace):
        self.app, self.admission, self.api_key = app, admission, api_key
        self.limit, self.pace = limit, pace

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        try:
            ticket = self._admit(headers)
        except HTTPException as refused:
            response = JSONResponse({"detail": refused.detail}, refused.status_code, refused.headers)
            return await response(scope, receive, send)
        scope.setdefault("state", {})["ticket"] = ticket
        try:
            return await self.app(scope, self._guarded(receive), send)
        finally:
            if not ticket.handed_over:
                ticket.release()

    def _admit(self, headers: dict[bytes, bytes]) -> Ticket:
        given = headers.get(b"x-api-key")
        if not key_matches(given.decode("latin-1") if given is not None else None, self.api_key):
            raise unauthorized()
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise too_large(self.limit)
        return self.admission.admit()

    def _guarded(self, receive):
        """``receive`` with a running byte count and, until the body is complete, the upload's
        pace (:class:`UploadPace`: idle gap, minimum rate after the grace, overall deadline).

        Raised while the endpoint parses the body, the HTTP errors reach FastAPI's handler.
        """
        received, complete, started = 0, False, time.monotonic()

        async def guarded_receive():
            nonlocal received, complete
            if complete:  # after the body, receive only waits for a disconnect: no timeout
                return await receive()
            wait, reason = self.pace.wait_limit(time.monotonic() - started, received)
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                raise too_slow(reason) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.limit:
                    raise too_large(self.limit)
            return message

        return guarded_receive
