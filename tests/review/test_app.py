"""The review station over HTTP (a real uvicorn): the case list, the files, the folder rules."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time

import httpx
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from review.app import create_app
from segcore.outputs.records import rebuild_table, write_record
from tests.review.conftest import (
    REVIEW_ORDER,
    REVIEW_SH,
    bom,
    edit_table,
    in_row,
    no_case_column,
    record,
    review_station,
)


def tree(folder) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def test_the_cases_come_fail_and_review_first_and_their_files_are_served(folders, real_data, tmp_path):
    inputs, outputs = folders
    before = tree(inputs.parent)
    with review_station(outputs) as url:
        listing = httpx.get(f"{url}/api/cases").json()
        assert [case["case"] for case in listing["cases"]] == REVIEW_ORDER
        assert listing["input_dir"] == str(inputs.resolve())  # from the records
        first = listing["cases"][0]
        assert first["verdict"] == "fail"
        assert first["quality_reasons"] == ["fail because", "a reason; with a semicolon"]  # the record's list
        assert first["organs"] == {"liver": 1500.0}
        mask = httpx.get(f"{url}/api/cases/c_fail/mask")
        assert mask.status_code == 200 and mask.content == (real_data / "abdomen_ct_3mm_labels.nii.gz").read_bytes()
        ct = httpx.get(f"{url}/api/cases/c_fail/ct")
        assert ct.status_code == 200 and ct.content == (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
        assert httpx.get(f"{url}/api/cases/d_failed/mask").status_code == 404  # no mask was written
        assert httpx.get(f"{url}/api/cases/zz/ct").status_code == 404
        assert httpx.get(f"{url}/").headers["content-security-policy"].startswith("default-src 'self'")
        assert httpx.get(f"{url}/viewer/niivue/niivue.umd.js").status_code == 200
    assert tree(inputs.parent) == before  # read-only: nothing written, nothing touched


def test_a_file_outside_the_two_folders_is_refused(folders, tmp_path):
    inputs, outputs = folders
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"not yours")
    write_record(outputs, record("x_escape", inputs, "written", "ok", mask="../secret.nii.gz"))
    (inputs / "y_link_0000.nii.gz").symlink_to(secret)  # a link inside the input folder, pointing out
    write_record(outputs, record("y_link", inputs, "written", "ok"))
    shutil.copy(outputs / "a_ok.nii.gz", outputs / "y_link.nii.gz")
    rebuild_table(outputs)
    with review_station(outputs) as url:
        escape = httpx.get(f"{url}/api/cases/x_escape/mask")
        assert escape.status_code == 403 and "outside" in escape.json()["detail"]
        link = httpx.get(f"{url}/api/cases/y_link/ct")
        assert link.status_code == 403 and "outside" in link.json()["detail"]
        assert httpx.get(f"{url}/api/cases/y_link/mask").status_code == 200  # its mask is inside
        for path in ("/api/cases/..%2F..%2Fsecret/ct", "/static/..%2F..%2Fapp.py", "/viewer/../app.py"):
            answer = httpx.get(f"{url}{path}")
            assert answer.status_code == 404 and b"not yours" not in answer.content, path


def test_a_record_cannot_move_the_input_folder(folders, tmp_path):
    inputs, outputs = folders
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(inputs / "a_ok_0000.nii.gz", elsewhere / "a_ok_0000.nii.gz")
    write_record(outputs, record("a_ok", elsewhere, "written", "ok"))
    rebuild_table(outputs)
    refused = subprocess.run(["sh", str(REVIEW_SH), str(outputs)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "2 input folders" in refused.stderr and "--input-dir" in refused.stderr
    with review_station(outputs, "--input-dir", str(inputs)) as url:
        assert httpx.get(f"{url}/api/cases").json()["input_dir"] == str(inputs.resolve())
        assert httpx.get(f"{url}/api/cases/a_ok/ct").status_code == 200


def test_a_dicom_input_is_sent_as_nifti_on_its_grid(folders, real_data):
    inputs, outputs = folders
    shutil.copytree(real_data / "abdomen_ct_dicom", inputs / "series")
    write_record(outputs, record("series", inputs, "written", "review", input="series"))
    shutil.copy(outputs / "a_ok.nii.gz", outputs / "series.nii.gz")
    rebuild_table(outputs)
    with review_station(outputs) as url:
        answer = httpx.get(f"{url}/api/cases/series/ct")
    assert answer.status_code == 200
    image = nib.Nifti1Image.from_bytes(gzip.decompress(answer.content))
    assert image.shape == (512, 512, 20) and image.get_data_dtype() == np.int16
    assert np.allclose(image.header.get_zooms(), (0.977, 0.977, 2.0), atol=0.01)


def test_a_folder_without_a_summary_is_refused_in_words(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "review", str(tmp_path)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REVIEW_SH.parent)},
    )  # fmt: skip
    assert result.returncode == 2 and "no summary.csv" in result.stderr and str(tmp_path) in result.stderr


# summary.csv of the folders fixture: the header on line 1, then a_ok, b_review, c_fail, d_failed, e_ok.
DAMAGED_TABLES = {  # what was done to the table -> (the edit, the cases listed, how what is said of the rest starts)
    "a spreadsheet's byte order mark": (bom, REVIEW_ORDER, []),
    "an unquoted comma": (
        in_row("d_failed", b"d_failed_0000", b"d_failed,0000"),
        ["c_fail", "b_review", "a_ok", "e_ok"], ["line 5: 35 fields where the header has 34"],
    ),
    "a quote never closed": (
        in_row("d_failed", b"d_failed_0000", b'"d_failed_0000'),
        ["c_fail", "b_review", "a_ok"], ["lines 5-6: 2 fields where the header has 34"],
    ),
    "bytes that are not UTF-8": (
        in_row("b_review", b"review because", b"review b\xe9cause"),
        ["c_fail", "d_failed", "a_ok", "e_ok"], ["line 3: the quality_reasons field is not UTF-8 text"],
    ),
    "no case column": (no_case_column, [], ["summary.csv has no case column"]),
    "a volume that is not a number": (
        in_row("c_fail", b"1500.0", b"lots"),
        ["d_failed", "b_review", "a_ok", "e_ok"], ["line 4: liver_ml is 'lots', not a number"],
    ),
    "a field over 128 KB": (
        in_row("a_ok", b"ok because", b"x" * 200_000),
        ["c_fail", "d_failed", "b_review", "e_ok"], ["line 2: a field is longer than 131072 characters"],
    ),
    "a volume nan": (in_row("e_ok", b"1500.0", b"nan"), REVIEW_ORDER, []),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGED_TABLES)
def test_a_damaged_table_lists_its_good_rows_and_names_the_bad_ones(folders, damage):
    edit, listed, said = DAMAGED_TABLES[damage]
    _, outputs = folders
    edit_table(outputs, edit)
    with TestClient(create_app(outputs), base_url="http://127.0.0.1") as client:
        answer = client.get("/api/cases")
        assert answer.status_code == 200, answer.text[:300]
        listing = answer.json()
        assert [case["case"] for case in listing["cases"]] == listed
        assert listing["problem_count"] == len(listing["problems"]) == len(said), listing["problems"]
        assert all(problem.startswith(start) for problem, start in zip(listing["problems"], said, strict=True))
        if damage == "a volume nan":
            assert next(case for case in listing["cases"] if case["case"] == "e_ok")["organs"] == {"liver": None}
        for case in listed:  # every listed case can still be opened
            assert client.get(f"/api/cases/{case}/ct").status_code == 200


@pytest.mark.parametrize("input_dir", ["/", "."])
def test_records_naming_the_top_of_the_disk_or_a_relative_folder_are_refused(tmp_path, input_dir):
    outputs = tmp_path / "out"
    outputs.mkdir()
    secret = tmp_path / "secret_0000.nii.gz"
    secret.write_bytes(b"not yours")
    name = str(secret.relative_to("/")) if input_dir == "/" else os.path.relpath(secret)
    write_record(outputs, record("x", input_dir, "written", "ok", input=name))
    rebuild_table(outputs)
    refused = subprocess.run(["sh", str(REVIEW_SH), str(outputs)], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "--input-dir" in refused.stderr, refused.stderr
    assert ("top of the disk" if input_dir == "/" else "relative") in refused.stderr


def test_a_case_input_is_an_entry_of_the_input_folder_named_at_start(folders, tmp_path):
    inputs, outputs = folders
    (inputs / "nested").mkdir()
    shutil.copy(inputs / "a_ok_0000.nii.gz", inputs / "nested" / "z_0000.nii.gz")
    write_record(outputs, record("z_nested", inputs, "written", "ok", input="nested/z_0000.nii.gz"))
    shutil.copy(outputs / "a_ok.nii.gz", outputs / "z_nested.nii.gz")
    rebuild_table(outputs)
    with review_station(outputs) as url:
        nested = httpx.get(f"{url}/api/cases/z_nested/ct")
        assert nested.status_code == 403 and "entry of the input folder" in nested.json()["detail"]
        # A record written after the start that names another folder does not move the station there.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shutil.copy(inputs / "a_ok_0000.nii.gz", elsewhere / "a_ok_0000.nii.gz")
        write_record(outputs, record("a_ok", elsewhere, "written", "ok"))
        rebuild_table(outputs)
        moved = httpx.get(f"{url}/api/cases/a_ok/ct")
        assert moved.status_code == 403 and str(elsewhere) in moved.json()["detail"]
        assert "restart" in moved.json()["detail"]
        assert httpx.get(f"{url}/api/cases/b_review/ct").status_code == 200


def test_only_the_station_s_own_host_names_are_answered(folders):
    _, outputs = folders
    with review_station(outputs, "--allow-host", "review.lan") as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"review.lan:{port}"):
            assert httpx.get(f"{url}/api/cases", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
            for path in ("/", "/api/cases", "/api/cases/c_fail/ct"):
                refused = httpx.get(f"{url}{path}", headers={"Host": host})
                assert refused.status_code == 421, (host, path)
                assert "127.0.0.1" in refused.json()["detail"] and b"NIFTI" not in refused.content.upper()


def test_the_table_is_parsed_once_per_change(folders):
    _, outputs = folders
    lines = (outputs / "summary.csv").read_text().splitlines()
    e_ok = next(line for line in lines if line.startswith("e_ok,"))
    many = [e_ok.replace("e_ok", f"z{number:05d}") for number in range(20_000)]
    (outputs / "summary.csv").write_text("\n".join([*lines, *many]) + "\n")
    with review_station(outputs) as url:

        def listing() -> tuple[float, dict]:
            started = time.perf_counter()
            answer = httpx.get(f"{url}/api/cases", timeout=120)
            return time.perf_counter() - started, answer.json()

        listing()
        with open(outputs / "summary.csv", "a") as table:  # a batch still running adds a row
            table.write(e_ok.replace("e_ok", "zz_new") + "\n")
        changed, after = listing()
        assert len(after["cases"]) == 5 + 20_000 + 1 and after["cases"][-1]["case"] == "zz_new"
        again = min(listing()[0] for _ in range(3))
        assert again < changed / 3, (changed, again)
        started = time.perf_counter()
        assert httpx.get(f"{url}/api/cases/z19999/mask").status_code == 404
        assert time.perf_counter() - started < changed / 3
