"""The review station's writes over HTTP (a real uvicorn): a correction kept on the case's grid, an
acceptance, reviews.csv, and every write it must refuse, leaving nothing behind."""

from __future__ import annotations

import gzip

import httpx
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from review.corrections import read_reviews
from segcore.labels import ORGAN_IDS
from segcore.outputs.records import rebuild_table, write_record
from tests.review.conftest import record, review_station

GALLBLADDER = ORGAN_IDS["gallbladder"]


def painted(real_data) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The case's CT header carrying the model's labels with a block painted gallbladder, as the
    viewer saves its drawing (uint8, the CT's voxel order and header); and the painted labels."""
    ct = nib.load(real_data / "abdomen_ct_3mm.nii.gz")
    labels = np.asarray(nib.load(real_data / "abdomen_ct_3mm_labels.nii.gz").dataobj).astype(np.uint8)
    labels[40:50, 30:36, 15] = GALLBLADDER
    header = ct.header.copy()
    header.set_data_dtype(np.uint8)
    return nib.Nifti1Image(labels, ct.affine, header), labels


def nifti_bytes(image: nib.Nifti1Image, compress: bool = False) -> bytes:
    data = image.to_bytes()
    return gzip.compress(data) if compress else data


def session(url: str) -> dict[str, str]:
    answer = httpx.get(f"{url}/api/session").json()
    return {answer["header"]: answer["token"]}


def written(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compress", [False, True])
def test_a_correction_is_kept_on_the_case_grid_and_the_case_reopens_with_it(folders, real_data, compress):
    inputs, outputs = folders
    model = (outputs / "b_review.nii.gz").read_bytes()
    image, labels = painted(real_data)
    with review_station(outputs) as url:
        answer = httpx.put(f"{url}/api/cases/b_review/correction", content=nifti_bytes(image, compress),
                           headers=session(url))  # fmt: skip
        assert answer.status_code == 200, answer.text
        saved = answer.json()
        assert saved["status"] == "corrected" and saved["mask"] == "b_review_corrected.nii.gz"
        assert saved["replaced"] is None and saved["voxels"][str(GALLBLADDER)] == int((labels == GALLBLADDER).sum())
        listed = {case["case"]: case for case in httpx.get(f"{url}/api/cases").json()["cases"]}
        assert listed["b_review"]["review"] == {"status": "corrected", "time": saved["time"], "stale": False}
        assert listed["a_ok"]["review"] is None
        reopened = httpx.get(f"{url}/api/cases/b_review/mask")
        assert reopened.content == (outputs / "b_review_corrected.nii.gz").read_bytes()
        assert httpx.get(f"{url}/api/cases/b_review/mask?source=model").content == model
    assert (outputs / "b_review.nii.gz").read_bytes() == model  # the model's mask is never written
    corrected = outputs / "b_review_corrected.nii.gz"
    assert np.array_equal(np.asarray(nib.load(corrected).dataobj), labels)
    mine, ct = sitk.ReadImage(str(corrected)), sitk.ReadImage(str(inputs / "b_review_0000.nii.gz"))
    assert mine.GetSize() == ct.GetSize() and mine.GetDirection() == ct.GetDirection()
    assert np.allclose(mine.GetSpacing(), ct.GetSpacing()) and np.allclose(mine.GetOrigin(), ct.GetOrigin())
    assert np.allclose(nib.load(corrected).affine, nib.load(inputs / "b_review_0000.nii.gz").affine, atol=1e-4)
    reviews = read_reviews(outputs)
    assert list(reviews) == ["b_review"] and reviews["b_review"].status == "corrected"
    assert (outputs / "reviews.csv").read_text().splitlines()[0] == "case,status,time,mask,stamp"


def test_accepting_keeps_the_model_mask_and_a_later_save_says_what_it_replaced(folders, real_data):
    _, outputs = folders
    model = (outputs / "a_ok.nii.gz").read_bytes()
    image, _ = painted(real_data)
    with review_station(outputs) as url:
        token = session(url)
        first = httpx.put(f"{url}/api/cases/a_ok/correction", content=nifti_bytes(image), headers=token).json()
        second = httpx.post(f"{url}/api/cases/a_ok/accept", headers=token).json()  # another tab, later
        assert second["status"] == "accepted" and second["mask"] == "a_ok.nii.gz"
        assert second["replaced"] == {"status": "corrected", "time": first["time"]}
        assert httpx.get(f"{url}/api/cases/a_ok/mask").content == model  # accepted: the model's mask counts
        third = httpx.post(f"{url}/api/cases/a_ok/accept", headers=token).json()
        assert third["replaced"] == {"status": "accepted", "time": second["time"]} and third["time"] > second["time"]
    assert (outputs / "a_ok_corrected.nii.gz").exists()  # the reviewer's painting is not thrown away
    assert read_reviews(outputs)["a_ok"].status == "accepted"
    mask = nib.load(outputs / "a_ok.nii.gz")  # predict.sh --overwrite: a mask nobody has seen
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), outputs / "a_ok.nii.gz")
    with review_station(outputs) as url:
        listed = {case["case"]: case for case in httpx.get(f"{url}/api/cases").json()["cases"]}
        assert listed["a_ok"]["review"]["stale"] is True


def _shifted(image: nib.Nifti1Image) -> bytes:
    affine = image.affine.copy()
    affine[0, 3] += 3.0
    return nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header).to_bytes()


def _labels_of(image: nib.Nifti1Image, value: int, dtype=np.uint8) -> bytes:
    data = np.asarray(image.dataobj).astype(dtype)
    data[0, 0, 0] = value
    header = image.header.copy()
    header.set_data_dtype(dtype)
    return nib.Nifti1Image(data, image.affine, header).to_bytes()


def _scaled(image: nib.Nifti1Image) -> bytes:
    scaled = nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)
    scaled.header.set_slope_inter(2.0, 0.0)
    return scaled.to_bytes()


def _cropped(image: nib.Nifti1Image) -> bytes:
    return nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :29], image.affine, image.header).to_bytes()


def _bomb(image: nib.Nifti1Image) -> bytes:
    return gzip.compress(image.to_bytes() + bytes(8 << 20))  # small on the wire, over the grid's size unpacked


REFUSALS = {  # name -> (bytes of the correction, status, words of the reason)
    "another grid": (_cropped, 422, "122x101x29 voxels, the case's is 122x101x30"),
    "moved in space": (_shifted, 422, "voxel-to-world matrix differs"),
    "not a label": (lambda image: _labels_of(image, 14), 422, "values 0..14"),
    "negative": (lambda image: _labels_of(image, -1, np.int16), 422, "values -1"),
    "scaled": (_scaled, 422, "values are scaled (slope 2.0"),
    "not NIfTI": (lambda image: b"<html>nothing</html>", 422, "not a NIfTI-1 file"),
    "cut short": (lambda image: gzip.compress(image.to_bytes())[:5000], 422, "not a whole gzip stream"),
    "voxels cut short": (lambda image: image.to_bytes()[:5000], 422, "voxels are cut short"),
    "voxels cut, then gzip-ed": (lambda image: gzip.compress(image.to_bytes()[:5000]), 422, "voxels are cut short"),
    "too large": (lambda image: image.to_bytes() * 2 + bytes(2 << 20), 413, "more than its grid needs"),
    "unpacks too large": (_bomb, 413, "unpacks to over"),
}


def test_a_write_the_station_must_refuse_leaves_nothing_behind(folders, real_data):
    _, outputs = folders
    before = written(outputs)
    image, _ = painted(real_data)
    good = nifti_bytes(image)
    with review_station(outputs) as url:
        token = session(url)
        for name, (make, status, reason) in REFUSALS.items():
            answer = httpx.put(f"{url}/api/cases/b_review/correction", content=make(image), headers=token)
            assert answer.status_code == status and reason in answer.json()["detail"], (name, answer.text)
        for headers in ({}, {"X-Review-Token": "guessed"}, {"X-Review-Token": ""}):
            assert httpx.put(f"{url}/api/cases/b_review/correction", content=good, headers=headers).status_code == 403
            assert httpx.post(f"{url}/api/cases/b_review/accept", headers=headers).status_code == 403
        other_site = {**token, "Host": "evil.example:80"}
        assert httpx.post(f"{url}/api/cases/b_review/accept", headers=other_site).status_code == 421
        assert httpx.get(f"{url}/api/session", headers={"Host": "evil.example"}).status_code == 421
        assert httpx.post(f"{url}/api/cases/d_failed/accept", headers=token).status_code == 409  # no mask
        assert httpx.post(f"{url}/api/cases/nobody/accept", headers=token).status_code == 404
        preflight = httpx.options(f"{url}/api/cases/b_review/accept", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-review-token",
        })  # fmt: skip
        assert "access-control-allow-origin" not in preflight.headers  # a cross-site page never gets to send
    assert written(outputs) == before


def test_a_case_named_like_a_path_is_never_written_outside_the_folder(tmp_path, real_data):
    outputs, inputs = tmp_path / "out", tmp_path / "in"
    outputs.mkdir()
    inputs.mkdir()
    (outputs / "x.nii.gz").write_bytes((real_data / "abdomen_ct_3mm_labels.nii.gz").read_bytes())
    write_record(outputs, record("x", inputs, "written", "ok"))
    rebuild_table(outputs)
    table = outputs / "summary.csv"
    table.write_text(table.read_text().replace("\nx,", "\n../x,", 1))  # a hand-edited table
    image, _ = painted(real_data)
    with review_station(outputs, "--input-dir", str(inputs)) as url:
        listing = httpx.get(f"{url}/api/cases").json()
        assert listing["cases"] == [] and "'../x' is not a case id" in listing["problems"][0]  # never listed
        token = session(url)
        for quoted in ("..%2Fx", "%2E%2E%2Fx"):
            answer = httpx.put(f"{url}/api/cases/{quoted}/correction", content=nifti_bytes(image), headers=token)
            assert answer.status_code == 404, answer.text
    assert not list(tmp_path.glob("*corrected*")) and not (outputs / "reviews.csv").exists()


def test_a_hand_edited_reviews_file_is_read_as_far_as_it_makes_sense(tmp_path):
    (tmp_path / "reviews.csv").write_bytes(
        b"\xef\xbb\xbfcase,status,time,mask\na,accepted,2026-01-01T00:00:00.000Z,a.nii.gz\n"
        b"b,maybe,,\n,corrected,,\nc,corrected,2026-01-02T00:00:00.000Z,c_corrected.nii.gz\n"
    )
    assert {case: review.status for case, review in read_reviews(tmp_path).items()} == {
        "a": "accepted", "c": "corrected",
    }  # fmt: skip
    assert read_reviews(tmp_path / "nowhere") == {}
