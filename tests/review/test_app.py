"""The review station over HTTP (a real uvicorn): the case list, the files, the folder rules."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys

import httpx
import nibabel as nib
import numpy as np

from segcore.outputs.records import rebuild_table, write_record
from tests.review.conftest import REVIEW_ORDER, REVIEW_SH, record, review_station


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
    write_record(outputs, {**record("x_escape", inputs, "written", "ok"), "mask": "../secret.nii.gz"})
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
    write_record(outputs, {**record("a_ok", elsewhere, "written", "ok")})
    rebuild_table(outputs)
    refused = subprocess.run(["sh", str(REVIEW_SH), str(outputs)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "2 input folders" in refused.stderr and "--input-dir" in refused.stderr
    with review_station(outputs, "--input-dir", str(inputs)) as url:
        assert httpx.get(f"{url}/api/cases").json()["input_dir"] == str(inputs.resolve())
        assert httpx.get(f"{url}/api/cases/a_ok/ct").status_code == 200


def test_a_dicom_input_is_sent_as_nifti_on_its_grid(folders, real_data):
    inputs, outputs = folders
    shutil.copytree(real_data / "abdomen_ct_dicom", inputs / "series")
    write_record(outputs, {**record("series", inputs, "written", "review"), "input": "series"})
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
