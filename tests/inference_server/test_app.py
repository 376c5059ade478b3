"""Every status of the service, in process: FastAPI's TestClient and a stand-in predictor.

The stand-in labels the voxels above 100 HU as liver (blurred first, so that the mask has outlines
like an organ's rather than the 18,000 specks of a noisy threshold, which cost an RTSTRUCT a
minute) and says what the test tells it to, so a status path is checked in milliseconds without a
model; `test_server.py` keeps the real uvicorn process and the real model for what only they show
(streaming limits, overload, the model).
"""

from __future__ import annotations

import gzip
import io
import tempfile
import threading
import time
import zipfile

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from scipy import ndimage

from inference_server.app import create_app, loaded_predictor
from inference_server.settings import Settings
from segcore.inference.predictor import Prediction
from segcore.inference.quality import Quality
from segcore.volumes import read_volume

CT_3MM = "abdomen_ct_3mm.nii.gz"
API_KEY = "s3cret-key"


def stand_in_liver(hu: np.ndarray) -> np.ndarray:
    """HU > 100 after a Gaussian blur of 2 voxels (isotropic: the same in any axis order)."""
    return (ndimage.gaussian_filter(hu.astype(np.float64), 2.0) > 100).astype(np.uint8)


class StandInPredictor:
    """Liver where :func:`stand_in_liver`; a verdict, warnings, a notice, a delay or a crash on request."""

    def __init__(self, verdict="ok", reasons=(), warnings=(), notice=None, delay_s=0.0, crash=False):
        self.verdict, self.reasons, self.warnings = verdict, list(reasons), list(warnings)
        self.notice, self.delay_s, self.crash = notice, delay_s, crash
        self.calls = 0

    def predict(self, image, geometry):
        self.calls += 1
        time.sleep(self.delay_s)
        if self.crash:
            raise RuntimeError("out of memory in the stand-in")
        labels = stand_in_liver(image)
        quality = Quality(self.verdict, self.reasons, 0.01, 1.0, int(labels.any()), 0.0, {})
        return Prediction(labels, None, [1], {"fine_network": 0.001}, self.warnings, quality)

    def info(self):
        return {"device": "cpu", "precision": "float32", "notice": self.notice}


@pytest.fixture
def tmpdir_watched(tmp_path, monkeypatch):
    """Request folders go here; every test ends with it empty."""
    folder = tmp_path / "requests"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert list(folder.iterdir()) == []


def client_for(predictor: StandInPredictor | None, **settings) -> TestClient:
    app = create_app(Settings(**settings))
    if predictor is not None:
        app.dependency_overrides[loaded_predictor] = lambda: predictor
    # no lifespan: no model is loaded; Host: localhost (the allow-list's default), not "testserver"
    return TestClient(app, base_url="http://localhost", raise_server_exceptions=False)


def post(client: TestClient, name: str, content: bytes, **kwargs):
    return client.post("/segment", files={"file": (name, content)}, **kwargs)


def zipped(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(name, content)
    return buffer.getvalue()


def test_200_label_nifti_on_the_exact_input_grid(real_data, tmpdir_watched, tmp_path):
    stand_in = StandInPredictor(verdict="review", reasons=["fine-stage entropy 0.1 > 0.065"], notice="phantoms only")
    response = post(client_for(stand_in), "scan é.nii.gz", (real_data / CT_3MM).read_bytes())
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].endswith("filename*=UTF-8''scan_%C3%A9_labels.nii.gz")  # space -> _
    assert response.headers["x-quality-verdict"] == "review"
    assert response.headers["x-quality-reasons"] == "fine-stage entropy 0.1 > 0.065"
    assert response.headers["x-model-notice"] == "phantoms only"
    written = tmp_path / "labels.nii.gz"
    written.write_bytes(response.content)
    source, mask = sitk.ReadImage(str(real_data / CT_3MM)), sitk.ReadImage(str(written))
    assert mask.GetSize() == source.GetSize() and mask.GetSpacing() == source.GetSpacing()
    assert mask.GetOrigin() == source.GetOrigin() and mask.GetDirection() == source.GetDirection()
    np.testing.assert_array_equal(nib.load(written).affine, nib.load(real_data / CT_3MM).affine)
    hu = np.asanyarray(nib.load(real_data / CT_3MM).dataobj)
    np.testing.assert_array_equal(np.asanyarray(nib.load(written).dataobj), stand_in_liver(hu))


def test_200_json_summary_with_organs_quality_and_warnings(real_data, tmpdir_watched):
    stand_in = StandInPredictor(warnings=["the coarse stage found no organ: the mask is empty"])
    response = post(client_for(stand_in), CT_3MM, (real_data / CT_3MM).read_bytes(), params={"output": "json"})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["input"] == CT_3MM and summary["case"] == "abdomen_ct_3mm" and summary["quality"]["verdict"] == "ok"
    assert summary["organs"]["liver"]["volume_ml"] > 0 and summary["model_notice"] is None
    assert response.headers["x-segmentation-warnings"] == stand_in.warnings[0]


@pytest.mark.parametrize("key", [None, "wrong"])
def test_401_without_the_api_key_and_nothing_is_run(real_data, tmpdir_watched, key):
    stand_in = StandInPredictor()
    client = client_for(stand_in, api_key=API_KEY)
    headers = {"X-API-Key": key} if key else {}
    response = post(client, CT_3MM, (real_data / CT_3MM).read_bytes(), headers=headers)
    assert response.status_code == 401 and stand_in.calls == 0
    assert client.get("/info", headers=headers).status_code == 401
    assert post(client, CT_3MM, (real_data / CT_3MM).read_bytes(), headers={"X-API-Key": API_KEY}).status_code == 200


@pytest.mark.parametrize(
    ("name", "content", "status", "words"),
    [
        ("noise.nii.gz", bytes(range(256)) * 20, 400, "unreadable NIfTI header"),
        ("short.nii.gz", gzip.compress(b"\x5c\x01" + b"\0" * 400)[:-30], 400, "empty file"),
        ("slice.zip", None, 422, "2-D"),
        ("mr.nii.gz", None, 422, "4-D"),
        ("big.nii.gz", gzip.compress(b"\0" * 64) + b"\0" * (2 << 20), 413, "limit"),
    ],
)
def test_4xx_for_bad_uploads_name_the_upload_and_run_nothing(real_data, tmpdir_watched, name, content, status, words):
    if name == "slice.zip":
        content = zipped("slice.dcm", (real_data / "single_slice_ct.dcm").read_bytes())
    if name == "mr.nii.gz":
        content = (real_data / "mr_4d_oblique.nii.gz").read_bytes()
    stand_in = StandInPredictor()
    response = post(client_for(stand_in, max_upload_mb=1.0), name, content)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert words in detail and (status == 413 or name in detail), detail
    assert str(tmpdir_watched) not in detail and "input." not in detail, detail  # never the server's own paths
    assert stand_in.calls == 0


def test_422_for_a_bad_query_names_the_field_not_the_value(real_data, tmpdir_watched):
    response = post(client_for(StandInPredictor()), CT_3MM, b"x" * 100, params={"output": "<script>"})
    assert response.status_code == 422
    assert "output" in response.json()["detail"] and "<script>" not in response.text


def test_503_while_no_model_is_loaded(real_data, tmpdir_watched):
    client = client_for(None)
    assert client.get("/ready").status_code == 503
    response = post(client, CT_3MM, (real_data / CT_3MM).read_bytes())
    assert response.status_code == 503 and response.headers["retry-after"] == "5"


def test_504_past_the_request_timeout_and_the_folder_goes_when_the_work_ends(real_data, tmpdir_watched):
    stand_in = StandInPredictor(delay_s=1.0)
    response = post(client_for(stand_in, request_timeout_s=0.2), CT_3MM, (real_data / CT_3MM).read_bytes())
    assert response.status_code == 504
    deadline = time.monotonic() + 10  # the worker keeps its folder until the prediction returns
    while list(tmpdir_watched.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_500_when_the_predictor_fails_and_the_next_request_is_served(real_data, tmpdir_watched):
    crashing = StandInPredictor(crash=True)
    client = client_for(crashing)
    response = post(client, CT_3MM, (real_data / CT_3MM).read_bytes())
    assert response.status_code == 500 and "out of memory" not in response.text
    crashing.crash = False
    assert post(client, CT_3MM, (real_data / CT_3MM).read_bytes()).status_code == 200


def while_one_runs(client: TestClient, stand_in: StandInPredictor, content: bytes):
    """``(first, second)``: the second request sent while the first one is being segmented."""
    first: list = []
    holder = threading.Thread(target=lambda: first.append(post(client, CT_3MM, content)))
    holder.start()
    deadline = time.monotonic() + 5
    while stand_in.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = post(client, CT_3MM, content)
    holder.join()
    return first[0], second


def test_503_when_every_slot_and_queue_place_is_taken(real_data, tmpdir_watched):
    stand_in = StandInPredictor(delay_s=1.0)
    first, busy = while_one_runs(client_for(stand_in, max_concurrent=1, queue_length=0), stand_in,
                                 (real_data / CT_3MM).read_bytes())  # fmt: skip
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) > 0
    assert first.status_code == 200


def zipped_series(folder) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in sorted(folder.iterdir()):
            bundle.write(path, f"series/{path.name}")
    return buffer.getvalue()


def test_a_preview_png_for_a_nifti(real_data, tmpdir_watched):
    from PIL import Image

    stand_in = StandInPredictor(verdict="review", reasons=["only 1 organs found"])
    response = post(client_for(stand_in), CT_3MM, (real_data / CT_3MM).read_bytes(), params={"output": "preview"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].endswith("abdomen_ct_3mm_preview.png")
    assert Image.open(io.BytesIO(response.content)).size[1] >= 360


def test_a_dicom_seg_for_a_zipped_series_and_a_422_for_a_nifti(real_data, series_with_uids, tmpdir_watched):
    import highdicom as hd

    client = client_for(StandInPredictor(notice="trained on phantoms"))
    response = post(client, "series.zip", zipped_series(series_with_uids), params={"output": "dicom-seg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(response.content))
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == ["liver"]  # HU > 100
    assert "phantom-trained" in seg.SeriesDescription
    refused = post(client, CT_3MM, (real_data / CT_3MM).read_bytes(), params={"output": "dicom-seg"})
    assert refused.status_code == 422 and "needs a DICOM series" in refused.json()["detail"]


def test_an_rtstruct_for_a_zipped_series_and_a_422_for_a_nifti(real_data, series_with_uids, tmpdir_watched):
    import pydicom

    client = client_for(StandInPredictor(notice="trained on phantoms"))
    response = post(client, "series.zip", zipped_series(series_with_uids), params={"output": "rtstruct"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["content-disposition"].endswith("series_rtstruct.dcm")
    rtstruct = pydicom.dcmread(io.BytesIO(response.content))
    assert rtstruct.Modality == "RTSTRUCT" and "phantom-trained" in rtstruct.SeriesDescription
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["liver"]  # HU > 100
    source = pydicom.dcmread(next(series_with_uids.iterdir()), stop_before_pixels=True)
    assert rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == source.FrameOfReferenceUID
    refused = post(client, CT_3MM, (real_data / CT_3MM).read_bytes(), params={"output": "rtstruct"})
    assert refused.status_code == 422 and "RTSTRUCT needs a DICOM series" in refused.json()["detail"]
    stand_in = StandInPredictor()
    no_uids = post(client_for(stand_in), "series.zip", zipped_series(real_data / "abdomen_ct_dicom"),
                   params={"output": "rtstruct"})  # fmt: skip
    assert no_uids.status_code == 422 and no_uids.json()["detail"].startswith("series.zip: no RTSTRUCT")
    assert stand_in.calls == 0


def test_a_seg_of_a_series_without_uids_is_refused_before_inference(real_data, tmpdir_watched):
    stand_in = StandInPredictor()
    response = post(client_for(stand_in), "series.zip", zipped_series(real_data / "abdomen_ct_dicom"),
                    params={"output": "dicom-seg"})  # fmt: skip
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("series.zip: no DICOM-SEG") and "StudyInstanceUID" in detail and "/" not in detail
    assert stand_in.calls == 0


def test_a_bundle_carries_summary_mask_preview_and_seg_from_one_inference(
    real_data, series_with_uids, tmpdir_watched, monkeypatch
):
    import base64

    import inference_server.app

    monkeypatch.setattr(inference_server.app, "BASE64_CHUNK", 3000)  # every file's base64 made in many pieces
    stand_in = StandInPredictor()
    client = client_for(stand_in)
    answer = post(client, "series.zip", zipped_series(series_with_uids), params={"output": "bundle"})
    assert answer.headers["content-encoding"] == "gzip"
    bundle = answer.json()
    assert stand_in.calls == 1 and bundle["organs"]["liver"]["volume_ml"] > 0
    assert base64.b64decode(bundle["mask_nifti_base64"])[:2] == b"\x1f\x8b"  # gzip
    assert base64.b64decode(bundle["preview_png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert base64.b64decode(bundle["dicom_seg_base64"])[128:132] == b"DICM"
    assert base64.b64decode(bundle["rtstruct_base64"])[128:132] == b"DICM"
    viewing = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(bundle["ct_nifti_base64"])))
    image, geometry = read_volume(series_with_uids)  # the series the page cannot read, as NIfTI on its grid
    assert viewing.shape == geometry.size and np.array_equal(np.asarray(viewing.dataobj).transpose(2, 1, 0), image)
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(bundle["mask_nifti_base64"])))
    np.testing.assert_allclose(viewing.affine, mask.affine, atol=1e-5)  # the viewer lays one on the other
    plain = post(client, CT_3MM, (real_data / CT_3MM).read_bytes(), params={"output": "bundle"},
                 headers={"Accept-Encoding": "identity"})  # fmt: skip
    assert "content-encoding" not in plain.headers
    nifti = plain.json()
    assert base64.b64decode(nifti["preview_png_base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(nifti["mask_nifti_base64"]))).shape[2] == 30
    assert nifti["dicom_seg_base64"] is None and "the input is NIfTI" in nifti["dicom_seg_note"]
    assert nifti["rtstruct_base64"] is None and "the input is NIfTI" in nifti["rtstruct_note"]
    assert nifti["ct_nifti_base64"] is None  # the page holds the NIfTI it sent
    assert "segment-" not in nifti["dicom_seg_note"]  # no server path


def test_the_label_table_gives_every_organ_its_colour(tmpdir_watched):
    table = client_for(None).get("/labels").json()
    assert [organ["id"] for organ in table["organs"]] == list(range(1, 14))
    assert table["organs"][0] == {"id": 1, "name": "liver", "color": [220, 100, 80]}
    assert table["window"] == [-160.0, 240.0]  # W 400, L 40


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/viewer/viewer.js"])
def test_the_page_carries_its_policy_wherever_it_is_served(tmpdir_watched, path):
    # /static/index.html is the same file as /: it was served without the policy.
    response = client_for(None).get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("get", "/health", 200), ("get", "/missing", 404), ("post", "/segment", 401), ("get", "/static/none.js", 404)],
)  # fmt: skip
def test_every_response_says_nosniff(tmpdir_watched, method, path, status):
    stand_in = StandInPredictor()
    response = getattr(client_for(stand_in, api_key="k"), method)(path)
    assert response.status_code == status, response.text
    assert response.headers["x-content-type-options"] == "nosniff"


def test_413_from_the_header_when_one_request_would_need_more_memory_than_it_may(real_data, tmpdir_watched):
    # 122 x 101 x 30 = 369,660 voxels at 1000 bytes each: ~0.34 GiB, over a 100 MB limit.
    stand_in = StandInPredictor()
    client = client_for(stand_in, memory_bytes_per_voxel=1000.0, memory_base_mb=0.0, max_request_memory_mb=100.0)
    response = post(client, CT_3MM, (real_data / CT_3MM).read_bytes())
    assert response.status_code == 413, response.text
    assert "369,660 voxels" in response.json()["detail"] and "memory" in response.json()["detail"]
    # "needs about 8.0 GiB; may use 8.0 GiB" read as a contradiction: the need and the limit, distinctly
    assert "need about 0.34 GiB of memory; the limit is 0.10 GiB per request" in response.json()["detail"]
    assert stand_in.calls == 0


def test_a_zipped_series_is_admitted_by_its_own_cost_per_voxel(real_data, series_with_uids, tmpdir_watched):
    # The series is 512 x 512 x 20 = 5,242,880 voxels: 50 bytes each as NIfTI (0.24 GiB) fit 400 MB;
    # a series also gets its DICOM-SEG, RTSTRUCT and a NIfTI copy for the viewer: 100 bytes each (0.49 GiB) do not.
    stand_in = StandInPredictor()
    settings = dict(memory_bytes_per_voxel=50.0, memory_series_bytes_per_voxel=100.0, memory_base_mb=0.0,
                    max_request_memory_mb=400.0)  # fmt: skip
    client = client_for(stand_in, **settings)
    response = post(client, "series.zip", zipped_series(series_with_uids))
    assert response.status_code == 413, response.text
    assert "5,242,880 voxels" in response.json()["detail"] and "a DICOM series" in response.json()["detail"]
    image, geometry = read_volume(series_with_uids)
    same_as_nifti = tmpdir_watched.parent / "same.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.GetImageFromArray(image), sitk.sitkInt16), str(same_as_nifti))
    assert post(client, "same.nii.gz", same_as_nifti.read_bytes()).status_code == 200


def test_503_while_the_admitted_requests_hold_the_memory_budget(real_data, tmpdir_watched):
    stand_in = StandInPredictor(delay_s=1.0)
    settings = dict(memory_bytes_per_voxel=1000.0, memory_base_mb=0.0, max_request_memory_mb=1000.0,
                    memory_budget_mb=500.0, queue_length=2)  # fmt: skip
    client = client_for(stand_in, **settings)
    first, refused = while_one_runs(client, stand_in, (real_data / CT_3MM).read_bytes())
    assert refused.status_code == 503 and "memory" in refused.json()["detail"] and refused.headers["retry-after"]
    assert first.status_code == 200
    assert post(client, CT_3MM, (real_data / CT_3MM).read_bytes()).status_code == 200  # the memory came back


@pytest.mark.parametrize("limit_mb, status, words", [(8192.0, 400, "truncated file"), (4096.0, 413, "GiB of memory")])
def test_a_small_upload_of_a_huge_volume_is_refused_from_its_header(tmpdir_watched, limit_mb, status, words):
    # 1024 x 1024 x 1000 int16 is within the 1 Gi-voxel limit and, by the default memory model, needs
    # about 4.4 GiB: under the default 8 GiB per request its header is checked against the file's
    # length (a truncated file), under a 4 GiB one it is refused by the memory model; either way at once.
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((1024, 1024, 1000))
    header.set_zooms((0.5, 0.5, 0.5))
    header.set_qform(np.diag([0.5, 0.5, 0.5, 1.0]), code=1)
    header["vox_offset"] = 352
    # 2.1 MB: a gzip file that could hold the 2 GB its header claims (deflate expands at most ~1032-fold)
    upload = gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 4096) + b"\0" * (2100 << 10)
    stand_in = StandInPredictor()
    started = time.monotonic()
    response = post(client_for(stand_in, max_request_memory_mb=limit_mb), "huge.nii.gz", upload)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"] and time.monotonic() - started < 2
    assert stand_in.calls == 0


def test_a_request_refused_at_the_queue_after_its_upload_leaves_no_folder(tmp_path):
    # Two uploads were admitted to a queue of one place: the second found it full once its body
    # was in, got its 503, and its folder (the whole upload) stayed on disk.
    import asyncio

    from fastapi import HTTPException

    from inference_server.admission import Admission

    async def scenario():
        admission = Admission(concurrent=1, queue=0, uploads=2)
        first, second = admission.admit(), admission.admit()
        folders = [tmp_path / "first", tmp_path / "second"]
        for folder in folders:
            folder.mkdir()
            (folder / "input.nii.gz").write_bytes(b"x" * 1000)
        running = asyncio.create_task(first.run(lambda: time.sleep(0.3), 5, folders[0]))
        await asyncio.sleep(0.05)
        with pytest.raises(HTTPException) as refused:
            await second.run(lambda: None, 5, folders[1])
        second.release()  # as the gate does for a ticket it did not hand over
        await running
        return refused.value.status_code, folders, admission

    status, folders, admission = asyncio.run(scenario())
    assert status == 503
    assert not folders[0].exists() and not folders[1].exists()
    assert admission.admitted == 0 and admission.uploading == 0


@pytest.mark.parametrize("path", ["/", "/health", "/info", "/labels"])
def test_400_for_a_host_the_service_does_not_answer_to(tmpdir_watched, path):
    # DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 read the service.
    client = client_for(StandInPredictor())
    response = client.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 400, response.text
    assert "Host" in response.json()["detail"] and "SEGMENT_ALLOWED_HOSTS" in response.json()["detail"]
    assert response.headers["connection"] == "close"
    for host in ("localhost:8000", "127.0.0.1", "LOCALHOST.", "[::1]:8000"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    named = client_for(None, allowed_hosts="ct.example.org, other.example.org")
    assert named.get("/health", headers={"Host": "ct.example.org"}).status_code == 200
    assert client_for(None, allowed_hosts="*").get("/health", headers={"Host": "evil.example"}).status_code == 200


def test_403_for_a_cross_origin_post_unless_its_origin_is_allowed(real_data, tmpdir_watched):
    stand_in = StandInPredictor()
    content = (real_data / CT_3MM).read_bytes()
    response = post(client_for(stand_in), CT_3MM, content, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403, response.text
    assert "cross-origin" in response.json()["detail"] and "SEGMENT_ALLOWED_ORIGINS" in response.json()["detail"]
    assert stand_in.calls == 0
    assert post(client_for(stand_in), CT_3MM, content, headers={"Origin": "null"}).status_code == 403
    assert post(client_for(stand_in), CT_3MM, content, headers={"Origin": "http://localhost"}).status_code == 200
    assert post(client_for(stand_in), CT_3MM, content).status_code == 200  # no Origin: not a browser's form
    allowed = client_for(stand_in, allowed_origins="https://viewer.example.org")
    assert post(allowed, CT_3MM, content, headers={"Origin": "https://viewer.example.org"}).status_code == 200
    assert post(allowed, CT_3MM, content, headers={"Origin": "https://other.example.org"}).status_code == 403


def test_413_for_a_compressed_series_from_the_voxels_its_headers_give(tmpdir_watched):
    # An RLE series was admitted from its unpacked bytes / 2: 157 M voxels were estimated at 3.3 M.
    from tests.inference_server.test_uploads import rle_series

    stand_in = StandInPredictor()
    settings = dict(memory_series_bytes_per_voxel=1000.0, memory_base_mb=0.0, max_request_memory_mb=1000.0)
    response = post(client_for(stand_in, **settings), "rle.zip", rle_series(8))
    assert response.status_code == 413, response.text
    assert "2,097,152 voxels" in response.json()["detail"] and stand_in.calls == 0


def test_a_bundle_comes_gzip_encoded_to_a_client_that_accepts_it(series_with_uids, tmpdir_watched):
    # A zipped 300-slice series gave a 176 MB bundle: its series as NIfTI and its SEG in base64.
    import base64

    client = client_for(StandInPredictor())
    response = post(client, "series.zip", zipped_series(series_with_uids), params={"output": "bundle"},
                    headers={"Accept-Encoding": "gzip"})  # fmt: skip
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    bundle = response.json()  # decoded as any HTTP client does
    files = sum(len(base64.b64decode(bundle[key])) for key in bundle if key.endswith("_base64") and bundle[key])
    print(f"bundle {response.num_bytes_downloaded:,} bytes sent for {files:,} bytes of files")
    assert response.num_bytes_downloaded <= 2 * files
    plain = post(client, "series.zip", zipped_series(series_with_uids), params={"output": "bundle"},
                 headers={"Accept-Encoding": "identity"})  # fmt: skip
    assert "content-encoding" not in plain.headers and plain.json()["organs"] == bundle["organs"]


def test_a_series_is_never_estimated_below_the_nifti_rate():
    from inference_server.admission import MemoryModel

    assert MemoryModel(4.0, 0, 0, 0, 7.6).need(1000, series=True) == 7600
    # an operator who raised the NIfTI rate (SEGMENT_MEMORY_BYTES_PER_VOXEL=15) keeps it for series too
    assert MemoryModel(15.0, 0, 0, 0, 7.6).need(1000, series=True) == 15000
    assert MemoryModel(15.0, 0, 0, 0, 7.6).need(1000) == 15000
