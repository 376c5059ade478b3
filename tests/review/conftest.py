"""A predict.sh-style output folder to review, and the review station running on it (``review.sh``
on a free loopback port, a real uvicorn)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from inference_server.local import free_port
from segcore.outputs.records import ResultRow, rebuild_table, write_record

REVIEW_SH = Path(__file__).resolve().parents[2] / "review.sh"
CASES = {  # case id -> (status, verdict): listed out of order on purpose
    "a_ok": ("written", "ok"),
    "b_review": ("written", "review"),
    "c_fail": ("written", "fail"),
    "d_failed": ("failed", ""),
    "e_ok": ("written", "ok"),
}
REVIEW_ORDER = ["c_fail", "d_failed", "b_review", "a_ok", "e_ok"]
"""Failed cases and fail verdicts first (by id), then review, then ok."""


def record(case: str, input_dir: Path, status: str, verdict: str, **changes) -> ResultRow:
    """A case record as predict.batch writes it (predict.batch.record_of), with ``changes``."""
    return ResultRow.model_validate({
        "case": case, "input": f"{case}_0000.nii.gz", "input_dir": str(input_dir), "mask": f"{case}.nii.gz",
        "status": status, "seconds": 1.0, "verdict": verdict,
        "quality_reasons": [f"{verdict} because", "a reason; with a semicolon"] if verdict else [],
        "warnings": [], "reason": "" if status == "written" else "it broke",
        "organs": {"liver": {"volume_ml": 1500.0, "mean_hu": 60.0}} if status == "written" else {},
        **changes,
    })  # fmt: skip


@pytest.fixture
def folders(tmp_path, real_data) -> tuple[Path, Path]:
    """``(input_dir, output_dir)``: the real 3 mm CT under five case names, its reference labels as
    each written case's mask (known organs on known slices), records and summary.csv."""
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    for case, (status, verdict) in CASES.items():
        shutil.copy(real_data / "abdomen_ct_3mm.nii.gz", inputs / f"{case}_0000.nii.gz")
        if status == "written":
            shutil.copy(real_data / "abdomen_ct_3mm_labels.nii.gz", outputs / f"{case}.nii.gz")
        write_record(outputs, record(case, inputs.resolve(), status, verdict))
    rebuild_table(outputs)
    return inputs, outputs


@contextmanager
def review_station(output_dir: Path, *options: str):
    """``sh review.sh OUTPUT_DIR`` on a free port; yields its URL once it answers (``/labels``: the
    case list may be large or damaged)."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in the finally below, after the process)
    process = subprocess.Popen(
        ["sh", str(REVIEW_SH), str(output_dir), "--port", str(port), "--log-level", "warning", *options],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"review.sh exited with {process.returncode}: {log.read()}")
            try:
                if httpx.get(f"{url}/labels", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("review.sh did not answer within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # uvicorn still finishing a slow answer
            process.kill()
            process.wait(timeout=10)
        log.close()


def edit_table(output_dir: Path, edit) -> None:
    """Replace ``summary.csv`` with ``edit(its bytes)`` (a spreadsheet's save, a hand edit, a damaged copy)."""
    table = output_dir / "summary.csv"
    table.write_bytes(edit(table.read_bytes()))


def in_row(case: str, old: bytes, new: bytes):
    """An edit of ``summary.csv`` that replaces ``old`` by ``new`` in the row of ``case`` only."""

    def edit(data: bytes) -> bytes:
        lines = data.split(b"\n")
        index = next(number for number, line in enumerate(lines) if line.startswith(case.encode() + b","))
        assert old in lines[index], (case, old)
        lines[index] = lines[index].replace(old, new)
        return b"\n".join(lines)

    return edit


def bom(data: bytes) -> bytes:
    """The UTF-8 byte order mark a spreadsheet's "CSV UTF-8" save puts first."""
    return b"\xef\xbb\xbf" + data


def no_case_column(data: bytes) -> bytes:
    return data.replace(b"case,input,", b"id,input,", 1)
