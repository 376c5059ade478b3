"""A real uvicorn process answering HTTP: segmentation, bad inputs, overload, API key."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from inference_server.local import LocalServer
from testkit import write_tiny_weights
from tests.predict.test_batch import run_predict

API_KEY = "s3cret-key"
NOTICE = "trained on phantoms: not for real scans"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"), notice=NOTICE)


@pytest.fixture(scope="module")
def server(weights):
    with LocalServer(weights, max_upload_mb="4") as url:
        yield url


def zipped(*paths: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in paths:
            for file in sorted(path.iterdir()) if path.is_dir() else [path]:
                bundle.write(file, f"{path.name}/{file.name}" if path.is_dir() else file.name)
    return buffer.getvalue()


def post(url: str, name: str, content: bytes, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/segment", files={"file": (name, content)}, timeout=120, **kwargs)


def test_nifti_in_label_nifti_out_on_the_exact_grid(server, real_data, tmp_path):
    source = real_data / "abdomen_ct_3mm.nii.gz"
    response = post(server, source.name, source.read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="abdomen_ct_3mm_labels.nii.gz"' in response.headers["content-disposition"]
    assert (
        float(response.headers["x-inference-seconds"]) > 0 and "fine_network;dur=" in response.headers["server-timing"]
    )
    (tmp_path / "labels.nii.gz").write_bytes(response.content)
    labels, image = sitk.ReadImage(str(tmp_path / "labels.nii.gz")), sitk.ReadImage(str(source))
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()
    assert labels.GetOrigin() == image.GetOrigin() and labels.GetDirection() == image.GetDirection()
    array = sitk.GetArrayFromImage(labels)
    assert array.dtype == np.uint8 and array.max() <= 13 and array.any()


def test_json_output_reports_organ_volumes(server, real_data):
    source = real_data / "abdomen_ct_3mm.nii.gz"
    response = post(server, source.name, source.read_bytes(), params={"output": "json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == [122, 101, 30] and body["spacing"] == [3.0, 3.0, 3.0]
    assert body["organs"], body
    for organ in body["organs"].values():
        assert organ["volume_ml"] == pytest.approx(organ["voxels"] * 27 / 1000, rel=1e-3)
    assert {"read", "coarse_network", "fine_network", "total"} <= set(body["timings"])
    assert body["model_notice"] == NOTICE and response.headers["x-model-notice"] == NOTICE
    assert body["quality"]["verdict"] == response.headers["x-quality-verdict"] in ("ok", "review", "fail")
    assert set(body["quality"]) >= {"reasons", "entropy", "coarse_fine_dice", "organ_count", "chest_share", "organs"}
    assert httpx.get(f"{server}/info").json()["model"]["notice"] == NOTICE


def test_zipped_dicom_series(server, real_data):
    response = post(server, "series.zip", zipped(real_data / "abdomen_ct_dicom"))
    assert response.status_code == 200, response.text
    assert 'filename="series_labels.nii.gz"' in response.headers["content-disposition"]


def missing_slice(real_data) -> list[Path]:
    """The shared series' files but one in the middle (names sort by position)."""
    files = sorted((real_data / "abdomen_ct_dicom").iterdir())
    return files[:10] + files[11:]


def truncated_nifti(real_data) -> bytes:
    data = (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "make", "status", "words"),
    [
        ("noise.nii.gz", lambda d: np.random.default_rng(0).bytes(5000), 400, "unreadable"),
        ("noise.bin", lambda d: np.random.default_rng(0).bytes(5000), 400, "not a NIfTI"),
        ("cut.nii.gz", truncated_nifti, 400, "truncated"),
        ("slice.zip", lambda d: zipped(d / "single_slice_ct.dcm"), 422, "2-D"),
        ("mr.nii.gz", lambda d: (d / "mr_4d_oblique.nii.gz").read_bytes(), 422, "4-D"),
        ("two.zip", lambda d: zipped(d / "abdomen_ct_dicom", d / "single_slice_ct.dcm"), 422, "series"),
        ("big.nii.gz", lambda d: gzip.compress(b"\0" * 64) + b"\0" * (5 << 20), 413, "limit"),
        ("not.zip", lambda d: b"PK\x03\x04" + b"\0" * 100, 400, "zip"),
        ("gappy.zip", lambda d: zipped(*missing_slice(d)), 422, "non-uniform"),
    ],
)
def test_bad_inputs_get_their_4xx_with_a_json_detail(server, real_data, name, make, status, words):
    response = post(server, name, make(real_data))
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words in detail and (status == 413 or name in detail), detail
    assert httpx.get(f"{server}/health").status_code == 200


def test_info_describes_labels_models_and_versions(server):
    body = httpx.get(f"{server}/info").json()
    assert body["labels"]["1"] == "liver" and body["labels"]["13"] == "left_kidney"
    assert body["model"]["coarse"]["input_size"] == [16, 16, 16] and len(body["model"]["fine"]["sha256"]) == 64
    assert body["versions"]["torch"] and body["model"]["device"] == "cpu"
    assert httpx.get(f"{server}/docs").status_code == 200


def test_overload_turns_requests_away_with_503_never_500(weights, real_data):
    with LocalServer(weights, max_concurrent="1", queue_length="1", api_key=API_KEY) as url:
        content = zipped(real_data / "abdomen_ct_dicom")
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: post(url, "s.zip", content, headers={"X-API-Key": API_KEY}), range(6)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses  # 1 running + 1 queued at least
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] and "busy" in busy.json()["detail"]
        assert httpx.get(f"{url}/health").status_code == 200

        # API key: 401 without or with a wrong one, 200 with it.
        source = (real_data / "abdomen_ct_3mm.nii.gz").read_bytes()
        assert post(url, "ct.nii.gz", source).status_code == 401
        assert post(url, "ct.nii.gz", source, headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.get(f"{url}/info").status_code == 401
        assert post(url, "ct.nii.gz", source, headers={"X-API-Key": API_KEY}).status_code == 200


def test_uploads_leave_no_temporary_files(server, real_data):
    before = set(Path("/tmp").glob("segment-*"))
    post(server, "ct.nii.gz", (real_data / "abdomen_ct_3mm.nii.gz").read_bytes())
    post(server, "cut.nii.gz", truncated_nifti(real_data))
    assert set(Path("/tmp").glob("segment-*")) == before


def test_local_server_that_cannot_start_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="exited with status") as failure:
        LocalServer(tmp_path / "no_weights").__enter__()
    assert "no_weights" in str(failure.value)  # the server's own message is passed on


def test_the_batch_commands_record_is_the_services_json(server, weights, real_data, tmp_path):
    # One output path: predict.sh --stats and POST /segment?output=json build the same record.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "abdomen_ct_3mm.nii.gz").symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    run = run_predict("-i", str(folder), "-o", str(tmp_path / "out"), "--weights", str(weights), "--stats")
    assert run.returncode == 0, run.stdout + run.stderr
    written = json.loads((tmp_path / "out" / "abdomen_ct_3mm.json").read_text())
    answered = post(server, "abdomen_ct_3mm.nii.gz", (real_data / "abdomen_ct_3mm.nii.gz").read_bytes(),
                    params={"output": "json"}).json()  # fmt: skip
    assert set(written["timings"]) - {"read"} <= set(answered["timings"])
    written.pop("timings"), answered.pop("timings")
    assert written == answered
    assert written["case"] == "abdomen_ct_3mm" and written["organs"] and written["mask_written"] is True


def test_the_start_up_log_says_which_weights_device_and_notice(weights):
    local = LocalServer(weights, log_level="info")
    with local:
        printed = local.output()
    [line] = [line for line in printed.splitlines() if "inference_server: loaded" in line]
    for stage in ("coarse", "fine"):
        assert f"{stage} {weights / f'{stage}.pt'} (sha256 " in line
    assert "on cpu, float32" in line and line.endswith(f"notice: {NOTICE}")
