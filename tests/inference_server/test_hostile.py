"""Hostile and broken uploads against a real uvicorn process on loopback: nothing may leak, blow
up, or be read before the request is allowed in.

Every server here runs with its own ``TMPDIR``, so "nothing left behind" is checked on a folder
that only it writes to.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import nibabel as nib
import numpy as np
import pytest

from inference_server.local import LocalServer
from testkit import CT_AFFINE, nifti_with_header, small_ct, upload_head, write_tiny_weights
from tests.inference_server.test_server import API_KEY, post

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@contextmanager
def serving(weights: Path, temp: Path, **settings: str) -> Iterator[str]:
    """A server whose temporary files go to ``temp`` (and nowhere else)."""
    server = LocalServer(weights, **settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(temp))
        url = server.__enter__()
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def guarded(weights, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """One inference at a time, no queue and one upload place, small limits, an API key, 1 s idle
    timeout, 2 s for a request head."""
    temp = tmp_path_factory.mktemp("server_tmp")
    settings = dict(max_upload_mb="4", max_concurrent="1", queue_length="0", max_uploads="1", api_key=API_KEY,
                    idle_timeout_s="1", head_timeout_s="2", max_zip_members="50", max_unpacked_mb="8")  # fmt: skip
    with serving(weights, temp, **settings) as url:
        yield url, temp


def left_behind(temp: Path, settle: float = 0.0, wait: float = 10.0) -> list[str]:
    """What is still under ``temp`` after ``settle`` seconds and up to ``wait`` more for it to empty."""
    time.sleep(settle)
    deadline = time.monotonic() + wait
    while any(temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(str(path.relative_to(temp)) for path in temp.rglob("*"))


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
    return buffer.getvalue()


def low_entropy(size: int, seed: int = 0) -> bytes:
    """Bytes that deflate about 4:1, like an uncompressed CT slice (within any sane ratio limit)."""
    return np.random.default_rng(seed).integers(0, 4, size, np.uint8).tobytes()


def raw_exchange(url: str, request: bytes, wait: float) -> bytes:
    """Send ``request`` bytes as they are and return what the server says within ``wait`` seconds."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(request)
        try:
            return sock.recv(65536)
        except TimeoutError:
            return b""


def test_a_timed_out_request_leaves_no_file_behind(weights, real_data, tmp_path):
    # The 504 comes while the worker thread still reads, segments and writes; its folder must go
    # when that thread ends, not be re-created and left with the label map in it.
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    with serving(weights, temp, request_timeout_s="0.05") as url:
        source = real_data / "chest_crop_1p5mm.nii.gz"
        response = post(url, source.name, source.read_bytes())
        assert response.status_code == 504, response.text
        assert all(path.stat().st_mode & 0o077 == 0 for path in temp.iterdir()), "temporary folders must be private"
        assert left_behind(temp, settle=3) == []  # by then the worker thread has long finished
        assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize(
    ("name", "make", "status", "words"),
    [
        ("a.zip", lambda: zip_of({"a.dcm": b"\0" * (1 << 20)}, zipfile.ZIP_BZIP2), 422, "bzip2"),
        ("b.zip", lambda: zip_of({"a.dcm": b"\0" * (1 << 20)}, zipfile.ZIP_LZMA), 422, "lzma"),
        ("c.zip", lambda: zip_of({"a.dcm": b"\0" * (30 << 20)}), 413, "compression ratio"),
        ("d.zip", lambda: zip_of({f"{i}.dcm": b"x" for i in range(60)}), 422, "members"),
        ("e.zip", lambda: zip_of({f"{i}.dcm": low_entropy(4 << 20, seed=i) for i in range(3)}), 413, "unpacked"),
    ],
)
def test_zip_bombs_are_refused_before_they_cost_disk(guarded, name, make, status, words):
    url, temp = guarded
    response = post(url, name, make(), headers=KEY)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"] and name in response.json()["detail"]
    assert left_behind(temp) == []


def test_a_zip_member_larger_than_its_header_says_is_refused(guarded):
    url, temp = guarded
    content = low_entropy(1 << 20)
    honest = zip_of({"a.dcm": content})
    declared = len(content).to_bytes(4, "little")
    lying = honest.replace(declared, (1024).to_bytes(4, "little"))  # local header and central directory
    assert lying.count((1024).to_bytes(4, "little")) >= 2
    response = post(url, "lying.zip", lying, headers=KEY)
    assert response.status_code in (400, 422), response.text
    assert "lying.zip" in response.json()["detail"]
    assert left_behind(temp) == []


def test_unicode_file_names_get_their_labels_back(guarded, real_data):
    url, _ = guarded
    source = (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
    for name in ["腹部.nii.gz", "٣.nii.gz", 'quote"and;semi.nii.gz']:
        response = post(url, name, source, headers=KEY)
        assert response.status_code == 200, (name, response.text)
        disposition = response.headers["content-disposition"]
        assert disposition.isascii() and "filename*=UTF-8''" in disposition, disposition
    disposition = post(url, "腹部.nii.gz", source, headers=KEY).headers["content-disposition"]
    assert "%E8%85%B9%E9%83%A8_labels.nii.gz" in disposition


def test_the_api_key_is_checked_before_the_body_is_read(guarded):
    url, _ = guarded
    # Headers promise 3 MB; only 1 KB follows. The 401 must not wait for the rest.
    answer = raw_exchange(url, upload_head(3 << 20) + b"\0" * 1024, wait=3)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_full_server_says_503_before_the_body_is_read(guarded, real_data):
    url, _ = guarded
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as slow:
        slow.sendall(upload_head(3 << 20, API_KEY) + b"\0" * 1024)  # takes the only place, then stalls
        time.sleep(0.3)
        started = time.monotonic()
        answer = raw_exchange(url, upload_head(3 << 20, API_KEY) + b"\0" * 1024, wait=3)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"retry-after" in answer.lower() and time.monotonic() - started < 2
    source = (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
    deadline = time.monotonic() + 10  # the stalled upload times out and gives its place back
    while (status := post(url, "ct.nii.gz", source, headers=KEY).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert status == 200


def test_an_upload_that_stalls_is_cut_off(guarded):
    url, temp = guarded
    started = time.monotonic()
    answer = raw_exchange(url, upload_head(3 << 20, API_KEY) + b"\0" * 1024, wait=6)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 4
    assert left_behind(temp) == []


def test_a_connection_that_sends_nothing_is_closed(guarded):
    url, _ = guarded
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=6) as idle:
        started = time.monotonic()
        try:
            closed = idle.recv(1) == b""
        except TimeoutError:
            closed = False
        assert closed and time.monotonic() - started < 5


def test_nifti_with_a_zero_pixdim_is_refused_not_segmented(guarded, tmp_path):
    url, _ = guarded

    def zero_x(header):
        header["pixdim"][1] = 0.0

    path = nifti_with_header(tmp_path / "zero.nii.gz", small_ct((40, 40, 20)), CT_AFFINE, zero_x)
    response = post(url, "zero.nii.gz", path.read_bytes(), headers=KEY)
    assert response.status_code == 422, response.text
    assert "pixdim" in response.json()["detail"]
    assert nib.load(path).header["pixdim"][1] == 1.0  # what a reader that repairs headers would have used


def test_error_bodies_never_echo_the_upload(guarded):
    url, _ = guarded
    boundary = "B0undary"
    content = b"\x01" * 500_000
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''ct.nii.gz\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        f"{url}/segment",
        content=body,
        headers={**KEY, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, response.text[:300]
    assert len(response.content) < 2000, len(response.content)


def test_concurrent_slow_uploads_are_capped(guarded):
    url, _ = guarded
    answers: list[bytes] = []

    def slow_upload():
        answers.append(raw_exchange(url, upload_head(3 << 20, API_KEY) + b"\0" * 1024, wait=4))

    threads = [threading.Thread(target=slow_upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(answer[9:12] for answer in answers)
    assert statuses.count(b"503") >= 3, statuses  # one place (1 slot, no queue): the others are turned away


def test_a_bomb_is_refused_without_waiting_for_the_busy_slot(weights, tmp_path):
    large = nifti_with_header(tmp_path / "large.nii.gz", small_ct((320, 320, 160)), CT_AFFINE).read_bytes()
    bomb_bytes = zip_of({"a.dcm": b"\0" * (30 << 20)})
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    with serving(weights, temp, max_concurrent="1", queue_length="1") as url:
        finished: dict[str, float] = {}

        def honest():
            assert post(url, "large.nii.gz", large).status_code == 200
            finished["honest"] = time.monotonic()

        worker = threading.Thread(target=honest)
        worker.start()
        time.sleep(0.5)  # the honest request holds the only slot
        bomb = post(url, "z.zip", bomb_bytes)
        finished["bomb"] = time.monotonic()
        worker.join()
        assert bomb.status_code == 413, bomb.text
        assert finished["bomb"] < finished["honest"], "the bomb waited for the slot before its refusal"


def closed_within(connection: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``connection`` (reading and dropping what it sends), or None."""
    started = time.monotonic()
    connection.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if connection.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def test_a_connection_that_sends_one_byte_and_stops_is_closed_after_the_head_timeout(weights, tmp_path):
    # The first byte cancelled uvicorn's idle timer and nothing restarted it: such connections
    # stayed open for good, and max_connections of them turned every request away with 503.
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    with serving(weights, temp, head_timeout_s="1", idle_timeout_s="1", max_connections="4") as url:
        parts = urlsplit(url)
        sockets = [socket.create_connection((parts.hostname, parts.port), timeout=5) for _ in range(4)]
        for connection in sockets:
            connection.sendall(b"G")
        assert all((closed := closed_within(c, 4)) is not None and closed < 3 for c in sockets)
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        for connection in sockets:
            connection.close()


def test_a_trickled_body_is_cut_off_below_the_minimum_rate(weights, tmp_path):
    # One byte every 0.5 s never trips the idle timeout; the rate after the grace does.
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    settings = dict(upload_grace_s="1", min_upload_kib_s="64", idle_timeout_s="5", max_uploads="1")
    with serving(weights, temp, **settings) as url:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as slow:
            slow.sendall(upload_head(3 << 20))
            started, answer = time.monotonic(), b""
            slow.settimeout(0.5)
            while time.monotonic() - started < 6 and not answer:
                try:
                    slow.sendall(b"\0")
                    answer = slow.recv(4096)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            answered = time.monotonic() - started
            rest, closed = b"", False
            slow.settimeout(3)
            while not closed:  # the rest of the answer, then the close
                try:
                    more = slow.recv(4096)
                except TimeoutError:
                    break
                except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
                    more = b""
                rest, closed = rest + more, more == b""
            assert answer.startswith(b"HTTP/1.1 408") and b"KiB/s" in answer + rest, answer + rest
            assert answered < 4 and closed
        assert left_behind(temp) == []


def test_a_client_answered_503_is_disconnected_not_left_sending(guarded):
    url, _ = guarded
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as holder:
        holder.sendall(upload_head(3 << 20, API_KEY) + b"\0" * 1024)  # takes the only upload place
        time.sleep(0.3)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as refused:
            refused.sendall(upload_head(3 << 20, API_KEY) + b"\0" * 1024)
            assert refused.recv(4096).startswith(b"HTTP/1.1 503")
            assert (closed := closed_within(refused, 2)) is not None and closed < 0.5  # idle timeout: 1 s


def test_slow_uploads_fill_the_upload_places_never_the_queue(weights, real_data, tmp_path):
    # Two stalled uploads used to take both places of a 1 + 1 queue: every honest request got 503.
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    settings = dict(max_concurrent="1", queue_length="1", max_uploads="3", idle_timeout_s="20", upload_grace_s="60")
    with serving(weights, temp, **settings) as url:
        parts = urlsplit(url)
        slow = [socket.create_connection((parts.hostname, parts.port), timeout=5) for _ in range(3)]
        try:
            for connection in slow[:2]:
                connection.sendall(upload_head(3 << 20) + b"\0" * 1024)  # two upload places, then silence
            time.sleep(0.3)
            source = (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
            assert post(url, "ct.nii.gz", source).status_code == 200  # the queue is still free
            slow[2].sendall(upload_head(3 << 20) + b"\0" * 1024)  # the third and last upload place
            time.sleep(0.3)
            assert post(url, "ct.nii.gz", source).status_code == 503
        finally:
            for connection in slow:
                connection.close()
        time.sleep(0.5)
        assert post(url, "ct.nii.gz", source).status_code == 200  # the places came back at once


def test_a_request_head_sent_a_byte_at_a_time_is_closed_at_the_head_deadline(weights, tmp_path):
    # Each byte came within the idle timeout, so nothing ever timed the head out.
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    with serving(weights, temp, head_timeout_s="1.5", idle_timeout_s="1") as url:
        parts = urlsplit(url)
        head = upload_head(3 << 20)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as slow:
            started, closed = time.monotonic(), False
            for index in range(len(head)):
                try:
                    slow.sendall(head[index : index + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                time.sleep(0.25)
                if time.monotonic() - started > 6:
                    break
            closed = closed or closed_within(slow, 2) is not None
            assert closed and time.monotonic() - started < 5


@contextmanager
def one_byte_connections(url: str, count: int) -> Iterator[list[float]]:
    """``count`` connections that each send one byte and stop, each reopened as soon as the server
    closes it (the attack that kept every place taken); yields the times the server closed one."""
    parts = urlsplit(url)
    closed_at: list[float] = []
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((parts.hostname, parts.port), timeout=5) as connection:
                    connection.sendall(b"P")
                    connection.settimeout(0.1)
                    while not stop.is_set():
                        try:
                            if connection.recv(4096) == b"":
                                break
                        except TimeoutError:
                            continue
                    closed_at.append(time.monotonic())
            except OSError:
                closed_at.append(time.monotonic())

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
    for holder in holders:
        holder.start()
    time.sleep(0.5)  # every place taken
    try:
        yield closed_at
    finally:
        stop.set()
        for holder in holders:
            holder.join()


def test_health_and_segment_are_answered_while_one_byte_connections_are_reopened_as_they_close(
    weights, real_data, tmp_path
):
    # max_connections one-byte connections, each reopened as it closed at the head timeout, kept
    # every place taken: /health and /segment answered 503 for as long as the attack went on.
    temp = tmp_path / "server_tmp"
    temp.mkdir()
    with serving(weights, temp, max_connections="8", head_timeout_s="2", idle_timeout_s="2") as url:
        source = (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
        with one_byte_connections(url, 8):
            health = []
            for _ in range(15):
                started = time.monotonic()
                status = httpx.get(f"{url}/health", timeout=5).status_code
                health.append((status, time.monotonic() - started))
                time.sleep(0.2)
            segmented, deadline = 0, time.monotonic() + 10
            while (segmented := post(url, "ct.nii.gz", source).status_code) == 503 and time.monotonic() < deadline:
                time.sleep(0.3)
        assert all(status == 200 and seconds < 1 for status, seconds in health), health
        assert segmented == 200


def test_a_request_for_another_host_or_from_another_origin_is_refused(guarded):
    url, _ = guarded
    answer = raw_exchange(url, b"GET /health HTTP/1.1\r\nHost: evil.example\r\n\r\n", wait=3)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    parts = urlsplit(url)
    cross = upload_head(3 << 20, API_KEY).replace(b"\r\n\r\n", b"\r\nOrigin: http://evil.example\r\n\r\n", 1)
    answer = raw_exchange(url, cross + b"\0" * 1024, wait=3)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:300]  # before the body: its detail in test_app
    assert httpx.get(f"http://localhost:{parts.port}/health", timeout=5).status_code == 200
