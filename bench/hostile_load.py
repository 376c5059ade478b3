"""The service under a mixed load of honest and hostile uploads: statuses, time to answer, memory
and temporary disk of the server process, and what is left behind.

Run from the repository root::

    .venv/bin/python -m bench.hostile_load                          # tiny random nets (fast)
    .venv/bin/python -m bench.hostile_load --weights model_weights  # the real ones
    .venv/bin/python -m bench.hostile_load --requests 60 --clients 10 --hostile 24 --out load.json

One real uvicorn process (:class:`inference_server.local.LocalServer`): one inference at a time,
a queue of 2, 64 MB uploads, 2 s idle timeout, an API key, and a ``TMPDIR`` of its own.

* Baseline RSS after start-up, then one honest request of each kind alone (warm RSS).
* Load: ``--requests`` requests from ``--clients`` threads, ``--hostile`` of them hostile (a
  seeded shuffle). Honest: the real NIfTI (``abdomen_ct_3mm.nii.gz``) and the zipped DICOM
  series (``abdomen_ct_dicom``); each 200 must carry the input's size, spacing, origin and
  direction. A 503 (full) is allowed and counted, and the request tried again every 0.5 s for
  up to ``--retry-for`` s (``0``: one try each, so that most requests end at 503 and few reach
  the unpacking and reading code). Hostile kinds, in turn: a 1 GiB deflate bomb,
  1000 members of 2 MiB zeros, a 256 MiB bzip2 bomb, a member whose headers claim 1 KiB, a
  NIfTI header claiming 1100×1000×1000, a NIfTI with pixdim 0, no API key on a 60 MB declared
  body, an upload that stalls after 1 KB, a non-Latin-1 file name (honest content: 200), a
  part named only by ``filename*``, a connection that sends one byte and stops, a request head
  sent a byte every 0.5 s, a body sent a byte every 0.5 s (never idle, far below the minimum
  rate), the series under 300-character member names (honest content: 200), an encrypted
  member, a NIfTI whose ``vox_offset`` is 0 and a 1024×1024×1000 header over a few bytes (the
  memory admission). Status 0 for the connection-holding kinds: closed without an answer, the
  expected end. Every ~50 ms: the server's RSS (``/proc/<pid>/status``) and its temporary
  bytes (files under its ``TMPDIR`` plus deleted ones it still holds open); every 0.2 s a
  ``GET /health``.
* Then a connection flood (``--flood-seconds``): ``--flood-connections`` connections (the
  server's ``max_connections``, 64) that each send one byte and stop, each reopened as soon as
  the server closes it, ``/health`` probed every 0.2 s and the NIfTI posted once a second
  (a 503 tried again every 0.5 s). ``--flood-only`` runs this phase alone.
* Then, server idle: each bomb alone, 3 times (RSS peak from the kernel's high-water mark,
  reset before each request; temporary bytes sampled every 5 ms).

Targets: nothing left under ``TMPDIR`` once in-flight work is done; no 5xx but 503/504; every
honest 200 on the input's grid; >= 90 % of the honest requests answered 200; ``/health`` p99
<= 1 s; each bomb answered 413/422 (a lying header: 400, its CRC fails)
within 1 s with < 100 MB extra RSS and < 100 MB temporary bytes. Figures are printed, with the
target next to each, and written as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import itertools
import json
import os
import random
import re
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nibabel as nib
import numpy as np
import SimpleITK as sitk

from inference_server.local import LocalServer
from testkit import CT_AFFINE, REAL_DATA, nifti_with_header, small_ct, upload_head, write_tiny_weights

NIFTI_SOURCE = REAL_DATA / "abdomen_ct_3mm.nii.gz"
DICOM_SOURCE = REAL_DATA / "abdomen_ct_dicom"
API_KEY = "bench-key"
SETTINGS = {"max_concurrent": "1", "queue_length": "2", "max_upload_mb": "64", "idle_timeout_s": "2",
            "head_timeout_s": "2", "upload_grace_s": "2", "min_upload_kib_s": "32", "max_uploads": "8",
            "api_key": API_KEY}  # fmt: skip
TRICKLE_PAUSE_S = 0.5
HEALTH_EVERY_S, HEALTH_TARGET_S = 0.2, 1.0
MiB = 1 << 20
SAMPLE_S, ISOLATED_SAMPLE_S = 0.05, 0.005
BOMB_TARGET_S, BOMB_TARGET_BYTES = 1.0, 100e6
GEOMETRY_TOLERANCE = 1e-4
FULL, TIMED_OUT = 503, 504
RETRY_PAUSE_S = 0.5


@dataclass(frozen=True)
class Answer:
    """What came back: status (0: no answer), body bytes, and the body itself for a 200."""

    status: int
    body_bytes: int
    body: bytes | None = None


@dataclass(frozen=True)
class Payloads:
    """Every upload, built once, and the geometry (size, spacing, origin, direction) of the honest ones."""

    nifti: bytes
    dicom_zip: bytes
    deflate_bomb: bytes
    many_member_bomb: bytes
    bzip2_bomb: bytes
    lying_size: bytes
    huge_header: bytes
    zero_pixdim: bytes
    long_names: bytes
    encrypted: bytes
    zero_offset: bytes
    huge_volume: bytes
    geometry: dict[str, tuple]


@dataclass(frozen=True)
class Kind:
    """One kind of request: how to send it, the statuses it should get alone, and for an honest
    upload whose geometry a 200 must carry."""

    send: Callable[[str, Payloads], Answer]
    expected: tuple[int, ...]
    source: str | None = None


@dataclass
class Outcome:
    """One request: its last answer (``seconds`` to get it) after ``full_answers`` 503s and retries
    (``total_seconds`` from the first try); ``geometry_ok`` for an honest 200."""

    kind: str
    status: int
    seconds: float
    total_seconds: float
    body_bytes: int
    full_answers: int
    geometry_ok: bool | None = None
    error: str | None = None


def zeros_zip(unpacked: int, method: int) -> bytes:
    """One member of ``unpacked`` zero bytes, streamed in: this process never holds them."""
    buffer, chunk = io.BytesIO(), bytes(MiB)
    with zipfile.ZipFile(buffer, "w", method) as bundle, bundle.open("slice.dcm", "w") as member:
        for _ in range(unpacked // MiB):
            member.write(chunk)
    return buffer.getvalue()


def many_member_zip(members: int, member_bytes: int) -> bytes:
    buffer, content = io.BytesIO(), bytes(member_bytes)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for index in range(members):
            bundle.writestr(f"{index:04d}.dcm", content)
    return buffer.getvalue()


def claiming_size(single_member_zip: bytes, claimed: int) -> bytes:
    """The zip with its one member's uncompressed size set to ``claimed`` in both headers."""
    patched = bytearray(single_member_zip)
    directory = patched.rfind(b"PK\x01\x02")
    struct.pack_into("<I", patched, 22, claimed)  # local file header
    struct.pack_into("<I", patched, directory + 24, claimed)  # central directory entry
    return bytes(patched)


def zipped_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.iterdir()):
            bundle.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


def huge_header_nifti() -> bytes:
    """A header claiming 1100×1000×1000 int16 (2.2 GB) over a few hundred bytes of voxels."""
    header = nib.Nifti1Image(small_ct(), CT_AFFINE).header.copy()
    header.set_data_shape((1100, 1000, 1000))
    header["vox_offset"] = 352  # voxels after the header (nibabel's in-memory header says 0)
    return gzip.compress(header.binaryblock + b"\0" * 4 + small_ct().tobytes())


def zero_pixdim_nifti(folder: Path) -> bytes:
    def zero_x(header):
        header["pixdim"][1] = 0.0

    return nifti_with_header(folder / "zero.nii.gz", small_ct((40, 40, 20)), CT_AFFINE, zero_x).read_bytes()


def long_name_zip(folder: Path) -> bytes:
    """The series with each file under a 300-character name (over the file system's 255 bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for index, path in enumerate(sorted(folder.iterdir())):
            bundle.write(path, "d" * 292 + f"{index:04d}.dcm")
    return buffer.getvalue()


def encrypted_zip() -> bytes:
    """One member whose encrypted flag is set in both headers (zipfile cannot open it)."""
    data = bytearray(zipped_folder(DICOM_SOURCE))
    directory = data.rfind(b"PK\x01\x02")
    local = struct.unpack_from("<I", data, directory + 42)[0]
    for field_at in (directory + 8, local + 6):
        struct.pack_into("<H", data, field_at, struct.unpack_from("<H", data, field_at)[0] | 0x1)
    return bytes(data)


def zero_offset_nifti(folder: Path) -> bytes:
    """A single-file NIfTI whose vox_offset 0 puts the voxels in the header (read, a shifted mask)."""

    def zero(header):
        header["vox_offset"] = 0

    return nifti_with_header(folder / "offset.nii.gz", small_ct((40, 40, 20)), CT_AFFINE, zero).read_bytes()


def huge_volume_nifti() -> bytes:
    """A header of 1024×1024×1000 int16 (within the voxel limit), few voxels sent: refused before any
    allocation, by the memory model (413) where its limit is under the ~4.4 GiB such a scan needs,
    else as a truncated file (400)."""
    header = nib.Nifti1Image(small_ct(), np.diag([0.5, 0.5, 0.5, 1.0])).header.copy()
    header.set_data_shape((1024, 1024, 1000))
    header["vox_offset"] = 352
    return gzip.compress(header.binaryblock + b"\0" * 4 + bytes(1 << 16))


def geometry_of(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def dicom_geometry(folder: Path) -> tuple:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.MetaDataDictionaryArrayUpdateOff()
    return geometry_of(reader.Execute())


def build_payloads(work: Path) -> Payloads:
    deflate_bomb = zeros_zip(1024 * MiB, zipfile.ZIP_DEFLATED)
    return Payloads(
        nifti=NIFTI_SOURCE.read_bytes(),
        dicom_zip=zipped_folder(DICOM_SOURCE),
        deflate_bomb=deflate_bomb,
        many_member_bomb=many_member_zip(1000, 2 * MiB),
        bzip2_bomb=zeros_zip(256 * MiB, zipfile.ZIP_BZIP2),
        lying_size=claiming_size(deflate_bomb, 1024),
        huge_header=huge_header_nifti(),
        zero_pixdim=zero_pixdim_nifti(work),
        long_names=long_name_zip(DICOM_SOURCE),
        encrypted=encrypted_zip(),
        zero_offset=zero_offset_nifti(work),
        huge_volume=huge_volume_nifti(),
        geometry={"nifti": geometry_of(sitk.ReadImage(str(NIFTI_SOURCE))), "dicom": dicom_geometry(DICOM_SOURCE)},
    )


def post_file(url: str, name: str, content: bytes, key: str | None = API_KEY) -> Answer:
    headers = {"X-API-Key": key} if key else {}
    response = httpx.post(f"{url}/segment", files={"file": (name, content)}, headers=headers, timeout=120)
    return Answer(response.status_code, len(response.content), response.content)


def post_raw(url: str, request: bytes, wait: float) -> Answer:
    """Send ``request`` as is (it may promise more than it holds) and read the answer until its
    ``Content-Length`` is in or the server closes; status 0 when no answer came within ``wait`` s."""
    parts = urlsplit(url)
    received = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(request)
        try:
            while not answer_complete(received) and (chunk := sock.recv(65536)):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    if not received.startswith(b"HTTP/1.1 "):
        return Answer(0, 0)
    return Answer(int(received[9:12]), len(received.partition(b"\r\n\r\n")[2]))


def answer_complete(received: bytes) -> bool:
    head, separator, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"^content-length:\s*(\d+)", head, re.IGNORECASE | re.MULTILINE)
    return bool(separator) and length is not None and len(body) >= int(length.group(1))


def post_filename_star_only(url: str, payloads: Payloads) -> Answer:
    """A multipart part named only by RFC 5987 ``filename*``, over 500 KB the answer must not echo."""
    boundary = "B0undary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''ct.nii.gz\r\n\r\n".encode()
        + b"\x01" * 500_000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"X-API-Key": API_KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = httpx.post(f"{url}/segment", content=body, headers=headers, timeout=120)
    return Answer(response.status_code, len(response.content))


def post_stalled(url: str, payloads: Payloads) -> Answer:
    """Headers promising 3 MB, 1 KB of body, then silence until the server answers."""
    return post_raw(url, upload_head(3 * MiB, API_KEY) + b"\0" * 1024, wait=float(SETTINGS["idle_timeout_s"]) + 5)


def held_open(url: str, pieces: list[bytes], wait: float) -> Answer:
    """Send ``pieces`` one every :data:`TRICKLE_PAUSE_S`, then wait; the answer, or status 0 when
    the server closed without one (``Answer.body_bytes`` -1: it never closed within ``wait`` s)."""
    parts = urlsplit(url)
    received, closed = b"", False
    deadline = time.monotonic() + wait
    with socket.create_connection((parts.hostname, parts.port), timeout=TRICKLE_PAUSE_S) as sock:
        for piece in [*pieces, *([b""] * int(wait / TRICKLE_PAUSE_S))]:
            if time.monotonic() > deadline or closed:
                break
            try:
                if piece:
                    sock.sendall(piece)
                chunk = sock.recv(65536)
                received, closed = received + chunk, chunk == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
    if received.startswith(b"HTTP/1.1 "):
        return Answer(int(received[9:12]), len(received.partition(b"\r\n\r\n")[2]))
    return Answer(0, 0 if closed else -1)


def one_byte(url: str, payloads: Payloads) -> Answer:
    """One byte of a request, then silence: closed after the head timeout."""
    return held_open(url, [b"P"], wait=float(SETTINGS["head_timeout_s"]) + 5)


def head_trickle(url: str, payloads: Payloads) -> Answer:
    """The request head, a byte every 0.5 s: closed after the head timeout."""
    head = upload_head(3 * MiB, API_KEY)
    return held_open(url, [head[i : i + 1] for i in range(len(head))], wait=float(SETTINGS["head_timeout_s"]) + 5)


def body_trickle(url: str, payloads: Payloads) -> Answer:
    """A whole head, then the body a byte every 0.5 s (never idle): 408 below the minimum rate."""
    wait = float(SETTINGS["upload_grace_s"]) + 5
    return held_open(url, [upload_head(3 * MiB, API_KEY), *([b"\0"] * int(wait / TRICKLE_PAUSE_S))], wait=wait)


HONEST = {
    "nifti": Kind(lambda url, p: post_file(url, NIFTI_SOURCE.name, p.nifti), (200,), "nifti"),
    "dicom_zip": Kind(lambda url, p: post_file(url, "series.zip", p.dicom_zip), (200,), "dicom"),
}
BOMBS = {
    "deflate_bomb": Kind(lambda url, p: post_file(url, "deflate.zip", p.deflate_bomb), (413,)),
    "many_member_bomb": Kind(lambda url, p: post_file(url, "many.zip", p.many_member_bomb), (413,)),
    "bzip2_bomb": Kind(lambda url, p: post_file(url, "bzip2.zip", p.bzip2_bomb), (422,)),
    "lying_size": Kind(lambda url, p: post_file(url, "lying.zip", p.lying_size), (400, 422)),
    "huge_header": Kind(lambda url, p: post_file(url, "claims_huge.nii.gz", p.huge_header), (422,)),
}
HOSTILE = {
    **BOMBS,
    "zero_pixdim": Kind(lambda url, p: post_file(url, "zero.nii.gz", p.zero_pixdim), (422,)),
    "no_key_60MB": Kind(lambda url, p: post_raw(url, upload_head(60 * MiB) + b"\0" * 1024, wait=5), (401,)),
    "stalled_upload": Kind(post_stalled, (408,)),
    "non_latin_name": Kind(lambda url, p: post_file(url, "腹部.nii.gz", p.nifti), (200,), "nifti"),
    "filename_star_only": Kind(post_filename_star_only, (400, 422)),
    "one_byte": Kind(one_byte, (0,)),
    "head_trickle": Kind(head_trickle, (0,)),
    "body_trickle": Kind(body_trickle, (408,)),
    "long_member_names": Kind(lambda url, p: post_file(url, "long.zip", p.long_names), (200,), "dicom"),
    "encrypted_member": Kind(lambda url, p: post_file(url, "encrypted.zip", p.encrypted), (422,)),
    "zero_vox_offset": Kind(lambda url, p: post_file(url, "offset.nii.gz", p.zero_offset), (400,)),
    "huge_volume": Kind(lambda url, p: post_file(url, "huge_volume.nii.gz", p.huge_volume), (400, 413)),
}
SLOW = ("one_byte", "head_trickle", "body_trickle", "stalled_upload")
"""Hostile kinds that hold a connection rather than send a payload (status 0: closed unanswered)."""
KINDS = {**HONEST, **HOSTILE}


def same_geometry(label_nifti: bytes, expected: tuple, folder: Path) -> bool:
    with tempfile.NamedTemporaryFile(suffix=".nii.gz", dir=folder) as stream:
        stream.write(label_nifti)
        stream.flush()
        answered = geometry_of(sitk.ReadImage(stream.name))
    return answered[0] == expected[0] and all(
        np.allclose(a, e, atol=GEOMETRY_TOLERANCE) for a, e in zip(answered[1:], expected[1:])
    )


def attempt(url: str, kind: str, payloads: Payloads) -> tuple[Answer, float, str | None]:
    """One try: the answer (status 0 on a transport error), its seconds and the error, if any."""
    started = time.perf_counter()
    try:
        return KINDS[kind].send(url, payloads), time.perf_counter() - started, None
    except (httpx.HTTPError, OSError) as error:
        return Answer(0, 0), time.perf_counter() - started, f"{type(error).__name__}: {error}"[:200]


def send(url: str, kind: str, payloads: Payloads, scratch: Path, retry_for: float = 0) -> Outcome:
    """A request of ``kind``, tried again after each 503 for up to ``retry_for`` s; a 200 of an
    honest upload is checked for its grid."""
    started, full_answers = time.perf_counter(), 0
    while True:
        answer, seconds, error = attempt(url, kind, payloads)
        if answer.status != FULL or time.perf_counter() - started + RETRY_PAUSE_S > retry_for:
            break
        full_answers += 1
        time.sleep(RETRY_PAUSE_S)
    total = time.perf_counter() - started
    outcome = Outcome(kind, answer.status, seconds, total, answer.body_bytes, full_answers, error=error)
    source = KINDS[kind].source
    if answer.status == 200 and source is not None:
        outcome.geometry_ok = same_geometry(answer.body, payloads.geometry[source], scratch)
    return outcome


def plan(requests: int, hostile: int, seed: int) -> list[str]:
    """``hostile`` hostile kinds in turn and honest ones alternating, in a seeded order."""
    kinds = list(itertools.islice(itertools.cycle(HOSTILE), hostile))
    kinds += list(itertools.islice(itertools.cycle(HONEST), requests - hostile))
    random.Random(seed).shuffle(kinds)
    return kinds


def status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field_name}")


def rss_bytes(pid: int) -> int:
    return status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Set the kernel's high-water mark (``VmHWM``) to the current RSS; false where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def server_pid(process_pid: int) -> int:
    """The Python process serving: ``run.sh`` ``exec``s it, else it is ``sh``'s child."""
    if b"python" in Path(f"/proc/{process_pid}/cmdline").read_bytes().split(b"\0")[0]:
        return process_pid
    children = Path(f"/proc/{process_pid}/task/{process_pid}/children").read_text().split()
    if not children:
        raise RuntimeError(f"process {process_pid} is not Python and has no child")
    return int(children[0])


def tree_bytes(folder: str) -> int:
    """Bytes of the files under ``folder``; files and folders vanishing meanwhile are skipped."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
            total += tree_bytes(entry.path) if is_folder else entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def unlinked_bytes(pid: int, folder: Path) -> int:
    """Bytes of deleted files under ``folder`` that ``pid`` holds open (spooled uploads: O_TMPFILE)."""
    total, prefix = 0, f"{folder}/"
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for descriptor in descriptors:
        path = f"/proc/{pid}/fd/{descriptor}"
        try:
            target = os.readlink(path)
            if target.startswith(prefix) and target.endswith(" (deleted)"):
                total += os.stat(path).st_size
        except OSError:
            pass
    return total


def temp_bytes(pid: int, folder: Path) -> int:
    return tree_bytes(str(folder)) + unlinked_bytes(pid, folder)


class Periodic:
    """Calls :meth:`sample` every ``interval`` s in a thread, from ``with`` entry to exit (and
    once more at exit)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class Sampler(Periodic):
    """Peak RSS and temporary bytes of the server, sampled every ``interval`` s in a thread."""

    def __init__(self, pid: int, temp: Path, interval: float):
        self.pid, self.temp = pid, temp
        self.peak_rss = self.peak_temp = self.samples = 0
        super().__init__(interval)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
        self.peak_temp = max(self.peak_temp, temp_bytes(self.pid, self.temp))
        self.samples += 1


class HealthProbe(Periodic):
    """``GET /health`` every :data:`HEALTH_EVERY_S` in a thread: seconds of each answer (a failed
    or non-200 one counts as its full wait)."""

    def __init__(self, url: str):
        self.url, self.seconds, self.failures = url, [], 0
        super().__init__(HEALTH_EVERY_S)

    def sample(self) -> None:
        started = time.perf_counter()
        try:
            ok = httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        self.seconds.append(time.perf_counter() - started)
        self.failures += not ok

    def percentile(self, share: float) -> float:
        return float(np.quantile(self.seconds, share)) if self.seconds else float("nan")


@dataclass
class Server:
    url: str
    pid: int
    temp: Path


@contextmanager
def serving(weights: Path, temp: Path) -> Iterator[Server]:
    """The service with :data:`SETTINGS`, its temporary files in ``temp`` (and nowhere else)."""
    server = LocalServer(weights, ready_timeout=120, environment={"TMPDIR": str(temp)}, **SETTINGS)
    url = server.__enter__()
    try:
        yield Server(url, server_pid(server.process.pid), temp)
    finally:
        server.__exit__(None, None, None)


def drain(server: Server, timeout: float = 30) -> tuple[float, list[str]]:
    """Seconds until ``/health`` answers and the temporary folder is empty (at most ``timeout``),
    and what is still there."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    while any(server.temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = sorted(str(path.relative_to(server.temp)) for path in server.temp.rglob("*") if path.is_file())
    return time.monotonic() - started, left


@dataclass
class LoadReport:
    requests: int
    clients: int
    hostile: int
    retry_for: float
    seconds: float
    baseline_rss: int
    warm_rss: int
    peak_rss_sampled: int
    peak_rss_kernel: int | None
    peak_temp_bytes: int
    samples: int
    drain_seconds: float
    left_behind: list[str]
    health_p99_s: float
    health_max_s: float
    health_failures: int
    health_probes: int
    outcomes: list[Outcome] = field(default_factory=list)
    warm_up: list[Outcome] = field(default_factory=list)


def run_load(server: Server, payloads: Payloads, args: argparse.Namespace, scratch: Path) -> LoadReport:
    """Baseline RSS, one honest request of each kind (warm RSS), then the load and the drain."""
    kinds = plan(args.requests, args.hostile, args.seed)
    baseline = rss_bytes(server.pid)
    kernel_peak = reset_peak_rss(server.pid)
    warm_up = [send(server.url, kind, payloads, scratch) for kind in HONEST]
    warm = rss_bytes(server.pid)
    started = time.perf_counter()
    with (
        Sampler(server.pid, server.temp, SAMPLE_S) as sampler,
        HealthProbe(server.url) as health,
        ThreadPoolExecutor(args.clients) as pool,
    ):
        outcomes = list(pool.map(lambda kind: send(server.url, kind, payloads, scratch, args.retry_for), kinds))
    seconds = time.perf_counter() - started
    peak_kernel = status_kib(server.pid, "VmHWM") * 1024 if kernel_peak else None
    drain_seconds, left = drain(server)
    return LoadReport(args.requests, args.clients, args.hostile, args.retry_for, seconds, baseline, warm,
                      sampler.peak_rss, peak_kernel, sampler.peak_temp, sampler.samples, drain_seconds, left,
                      health.percentile(0.99), max(health.seconds, default=float("nan")), health.failures,
                      len(health.seconds), outcomes, warm_up)  # fmt: skip


class Reopener:
    """``count`` connections that each send one byte and stop, each reopened as soon as the server
    closes it, from ``with`` entry to exit; ``closes`` counts the server's closes."""

    def __init__(self, url: str, count: int):
        parts = urlsplit(url)
        self.address, self.closes = (parts.hostname, parts.port), 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(count)]

    def _hold(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(self.address, timeout=5) as connection:
                    connection.sendall(b"P")
                    connection.settimeout(0.1)
                    while not self._stop.is_set():
                        try:
                            if connection.recv(4096) == b"":
                                break
                        except TimeoutError:
                            continue
            except OSError:
                pass
            self.closes += 1

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@dataclass
class FloodReport:
    seconds: float
    connections: int
    closes: int
    health_p99_s: float
    health_max_s: float
    health_failures: int
    health_probes: int
    segment_outcomes: list[Outcome]


def run_flood(server: Server, payloads: Payloads, seconds: float, connections: int, scratch: Path) -> FloodReport:
    """One-byte connections reopened as they close for ``seconds``; ``/health`` and honest posts meanwhile."""
    outcomes = []
    with Reopener(server.url, connections) as flood, HealthProbe(server.url) as health:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            outcomes.append(send(server.url, "nifti", payloads, scratch, retry_for=10))
            time.sleep(1.0)
    return FloodReport(seconds, connections, flood.closes, health.percentile(0.99),
                       max(health.seconds, default=float("nan")), health.failures, len(health.seconds),
                       outcomes)  # fmt: skip


def print_flood(flood: FloodReport) -> None:
    honest = flood.segment_outcomes
    print(f"flood: {flood.connections} one-byte connections reopened as they close, {flood.seconds:g} s "
          f"({flood.closes} closed by the server)")  # fmt: skip
    print(f"  /health: p99 {flood.health_p99_s:.3f} s, max {flood.health_max_s:.3f} s over {flood.health_probes} "
          f"probes, {flood.health_failures} failed (target p99 <= {HEALTH_TARGET_S:g} s)")  # fmt: skip
    print(
        f"  /segment: {statuses_text([o.status for o in honest])}, 503s on the way "
        f"{sum(o.full_answers for o in honest)}, slowest {max((o.total_seconds for o in honest), default=0):.2f} s"
    )


@dataclass
class Isolated:
    kind: str
    statuses: list[int]
    median_seconds: float
    peak_extra_rss: int
    peak_temp_bytes: int

    def meets_target(self) -> bool:
        return (
            set(self.statuses) <= set(KINDS[self.kind].expected)
            and self.median_seconds < BOMB_TARGET_S
            and self.peak_extra_rss < BOMB_TARGET_BYTES
            and self.peak_temp_bytes < BOMB_TARGET_BYTES
        )


def run_isolated(server: Server, kind: str, payloads: Payloads, scratch: Path, repeats: int = 3) -> Isolated:
    """``kind`` alone, ``repeats`` times; extra RSS over the RSS just before each request."""
    statuses, seconds, extra, temp = [], [], 0, 0
    for _ in range(repeats):
        before = rss_bytes(server.pid)
        kernel_peak = reset_peak_rss(server.pid)
        with Sampler(server.pid, server.temp, ISOLATED_SAMPLE_S) as sampler:
            outcome = send(server.url, kind, payloads, scratch)
        peak = max(sampler.peak_rss, status_kib(server.pid, "VmHWM") * 1024 if kernel_peak else 0)
        statuses.append(outcome.status)
        seconds.append(outcome.seconds)
        extra, temp = max(extra, peak - before), max(temp, sampler.peak_temp)
        drain(server, timeout=5)
    return Isolated(kind, statuses, statistics.median(seconds), extra, temp)


def megabytes(count: int | None) -> str:
    return "n/a" if count is None else f"{count / 1e6:.1f} MB"


def statuses_text(statuses: list[int]) -> str:
    return " ".join(f"{status}x{count}" for status, count in sorted(Counter(statuses).items()))


def print_load(load: LoadReport) -> None:
    outcomes = load.outcomes
    statuses = [outcome.status for outcome in outcomes]
    unexpected_5xx = [s for s in statuses if s >= 500 and s not in (FULL, TIMED_OUT)]
    checked = [outcome for outcome in [*load.warm_up, *outcomes] if outcome.geometry_ok is not None]
    equal = sum(outcome.geometry_ok for outcome in checked)
    warm_up = ", ".join(f"{o.kind} {o.status} in {o.seconds:.2f} s" for o in load.warm_up)
    print(f"warm-up, alone: {warm_up}")
    print(f"load: {load.requests} requests ({load.hostile} hostile), {load.clients} clients, {load.seconds:.1f} s; "
          f"a 503 is tried again every {RETRY_PAUSE_S:g} s for up to {load.retry_for:g} s")  # fmt: skip
    print(f"  last statuses: {statuses_text(statuses)} (0: no HTTP answer); "
          f"503 answers on the way: {sum(o.full_answers for o in outcomes)}")  # fmt: skip
    print(f"  5xx other than 503/504: {len(unexpected_5xx)} (target 0)")
    honest = [outcome for outcome in outcomes if outcome.kind in HONEST]
    answered = sum(outcome.status == 200 for outcome in honest)
    first_try = sum(outcome.status == 200 and outcome.full_answers == 0 for outcome in honest)
    if honest:
        print(f"  honest requests answered 200: {answered}/{len(honest)} ({answered / len(honest):.0%}; target "
              f">= 90 %), at the first try: {first_try}/{len(honest)} ({first_try / len(honest):.0%})")  # fmt: skip
    print(f"  /health: p99 {load.health_p99_s:.3f} s, max {load.health_max_s:.3f} s over {load.health_probes} probes, "
          f"{load.health_failures} failed (target p99 <= {HEALTH_TARGET_S:g} s)")  # fmt: skip
    print(f"  200s on the input's grid (size, spacing, origin, direction): {equal}/{len(checked)} (target all)")
    print(
        f"  server RSS: baseline {megabytes(load.baseline_rss)}, warm {megabytes(load.warm_rss)}, peak "
        f"{megabytes(load.peak_rss_sampled)} sampled / {megabytes(load.peak_rss_kernel)} high-water mark; peak extra "
        f"over baseline {megabytes(max(load.peak_rss_sampled, load.peak_rss_kernel or 0) - load.baseline_rss)}"
    )
    print(f"  temporary bytes: peak {megabytes(load.peak_temp_bytes)} ({load.samples} samples)")
    print(f"  after the load: drained in {load.drain_seconds:.1f} s, files left under TMPDIR: {len(load.left_behind)} "
          f"(target 0) {load.left_behind[:5] if load.left_behind else ''}")  # fmt: skip
    errors = Counter(outcome.error.split(":")[0] for outcome in outcomes if outcome.error)
    if errors:
        print(f"  client-side errors: {dict(errors)}")
    print_kinds(outcomes)


def print_kinds(outcomes: list[Outcome]) -> None:
    """Per kind: last statuses, 503s on the way, seconds of the last try and in all, largest body."""
    print(f"  {'kind':<20} {'expected':>9} {'last statuses':<14} {'503s':>5} {'max s':>6} {'max all s':>9} "
          f"{'max body B':>10}  as expected")  # fmt: skip
    for kind in KINDS:
        mine = [outcome for outcome in outcomes if outcome.kind == kind]
        if not mine:
            continue
        expected = KINDS[kind].expected
        fine = all(o.status in (*expected, FULL) and o.geometry_ok is not False for o in mine)
        print(f"  {kind:<20} {'/'.join(map(str, expected)):>9} {statuses_text([o.status for o in mine]):<14} "
              f"{sum(o.full_answers for o in mine):>5} {max(o.seconds for o in mine):>6.2f} "
              f"{max(o.total_seconds for o in mine):>9.2f} {max(o.body_bytes for o in mine):>10}  "
              f"{'yes' if fine else 'NO'}")  # fmt: skip


def print_isolated(results: list[Isolated]) -> None:
    print(
        f"bombs alone, server idle (target: expected status within {BOMB_TARGET_S:g} s, "
        f"< {BOMB_TARGET_BYTES / 1e6:.0f} MB extra RSS and temporary bytes)"
    )
    print(f"  {'kind':<20} {'expected':>9} {'statuses':<12} {'median s':>8} {'extra RSS':>10} {'temp':>10}  target")
    for result in results:
        expected = "/".join(map(str, KINDS[result.kind].expected))
        print(f"  {result.kind:<20} {expected:>9} {statuses_text(result.statuses):<12} {result.median_seconds:>8.3f} "
              f"{megabytes(result.peak_extra_rss):>10} {megabytes(result.peak_temp_bytes):>10}  "
              f"{'met' if result.meets_target() else 'MISSED'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (default: tiny random nets, fast)")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--hostile", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="of the order of the requests")
    parser.add_argument(
        "--retry-for", type=float, default=60,
        help=f"seconds a request is tried again after a 503, every {RETRY_PAUSE_S:g} s (0: never)",
    )  # fmt: skip
    parser.add_argument("--flood-seconds", type=float, default=20, help="length of the connection flood")
    parser.add_argument("--flood-connections", type=int, default=64, help="one-byte connections in the flood")
    parser.add_argument("--flood-only", action="store_true", help="run the connection flood alone")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    if not 0 <= args.hostile <= args.requests:
        parser.error("--hostile must be between 0 and --requests")

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as work_name:
        work = Path(work_name)
        (work / "server_tmp").mkdir()
        (work / "scratch").mkdir()
        started = time.perf_counter()
        payloads = build_payloads(work)
        weights = args.weights or write_tiny_weights(work / "weights")
        print(f"payloads built in {time.perf_counter() - started:.1f} s; weights {weights}; settings {SETTINGS}")
        load, isolated = None, []
        with serving(weights, work / "server_tmp") as server:
            if not args.flood_only:
                load = run_load(server, payloads, args, work / "scratch")
                print_load(load)
            flood = run_flood(server, payloads, args.flood_seconds, args.flood_connections, work / "scratch")
            print_flood(flood)
            if not args.flood_only:
                isolated = [run_isolated(server, kind, payloads, work / "scratch") for kind in BOMBS]
                print_isolated(isolated)
    if args.out:
        report = {"settings": SETTINGS, "load": asdict(load) if load else None, "flood": asdict(flood),
                  "isolated": [asdict(result) for result in isolated]}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1))
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
