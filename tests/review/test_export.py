"""segcore-export-labels: a reviewed batch written as a FLARE22-layout data root."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from review.corrections import ReviewBook, corrected_name, save_correction
from review.export import MANIFEST, export_labels, main
from review.table import ReviewError
from segcore.labels import ORGAN_IDS
from segcore.outputs.records import rebuild_table, write_record
from segcore.volumes import read_label_map, read_volume, write_volume
from tests.review.conftest import record


def correct(outputs, real_data, case: str) -> np.ndarray:
    """Save a correction of ``case`` (the reference labels with a block of gallbladder) as the station does."""
    ct = nib.load(real_data / "abdomen_ct_3mm.nii.gz")
    labels = np.asarray(nib.load(real_data / "abdomen_ct_3mm_labels.nii.gz").dataobj).astype(np.uint8)
    labels[10:20, 10:20, 5] = ORGAN_IDS["gallbladder"]
    header = ct.header.copy()
    header.set_data_dtype(np.uint8)
    data = nib.Nifti1Image(labels, ct.affine, header).to_bytes()
    save_correction(data, outputs / f"{case}.nii.gz", outputs / corrected_name(case))
    ReviewBook(outputs).record(case, "corrected", corrected_name(case))
    return labels


def files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def test_reviewed_cases_become_labeled_the_others_unlabeled(folders, real_data, tmp_path, capsys):
    inputs, outputs = folders
    labels = correct(outputs, real_data, "b_review")
    ReviewBook(outputs).record("a_ok", "accepted", "a_ok.nii.gz")
    root = tmp_path / "data"
    assert main([str(outputs), "--to", str(root)]) == 0
    said = capsys.readouterr().out
    assert "exported 2 labeled case(s) (1 accepted, 1 corrected) and 2 unlabeled" in said
    assert "not exported: d_failed: no mask (failed)" in said
    assert sorted(files(root)) == [
        "train_images/a_ok_0000.nii.gz", "train_images/b_review_0000.nii.gz",
        "train_mask/a_ok.nii.gz", "train_mask/b_review.nii.gz",
        "trainu_images/c_fail_0000.nii.gz", "trainu_images/e_ok_0000.nii.gz",
    ]  # fmt: skip
    assert (root / "train_images/b_review_0000.nii.gz").read_bytes() == (inputs / "b_review_0000.nii.gz").read_bytes()
    assert (root / "train_mask/a_ok.nii.gz").read_bytes() == (outputs / "a_ok.nii.gz").read_bytes()  # accepted
    assert np.array_equal(np.asarray(nib.load(root / "train_mask/b_review.nii.gz").dataobj), labels)  # corrected

    # Reviewed later, a case moves from unlabeled to labeled; a second export changes nothing else.
    ReviewBook(outputs).record("e_ok", "accepted", "e_ok.nii.gz")
    report = export_labels(outputs, root)
    assert report.labeled == {"a_ok": "accepted", "b_review": "corrected", "e_ok": "accepted"}
    assert report.unlabeled == ["c_fail"] and not (root / "trainu_images/e_ok_0000.nii.gz").exists()
    assert (root / "train_mask/e_ok.nii.gz").is_file()
    assert set(json.loads((root / MANIFEST).read_text())) == set(files(root))


def test_a_file_the_command_did_not_write_is_never_replaced(folders, tmp_path, capsys):
    _, outputs = folders
    ReviewBook(outputs).record("a_ok", "accepted", "a_ok.nii.gz")
    root = tmp_path / "data"
    (root / "train_images").mkdir(parents=True)
    own = root / "train_images" / "a_ok_0000.nii.gz"
    own.write_bytes(b"the user's own labeled case")
    assert main([str(outputs), "--to", str(root)]) == 1
    assert "a_ok: " in capsys.readouterr().out and own.read_bytes() == b"the user's own labeled case"
    assert not (root / "train_mask" / "a_ok.nii.gz").exists()
    assert (root / "trainu_images" / "e_ok_0000.nii.gz").is_file()  # the others are exported


def test_a_mask_on_another_grid_is_refused_and_named(folders, tmp_path):
    _, outputs = folders
    mask = nib.load(outputs / "a_ok.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj)[:, :, :20], mask.affine), outputs / "a_ok_corrected.nii.gz")
    ReviewBook(outputs).record("a_ok", "corrected", "a_ok_corrected.nii.gz")  # a hand-made correction
    (outputs / "reviews.csv").write_text((outputs / "reviews.csv").read_text() + "c_fail,corrected,x,../../etc\n")
    report = export_labels(outputs, tmp_path / "data")
    assert "its grid is not its CT's" in report.skipped["a_ok"]
    assert "c_fail" in report.stale and "c_fail" in report.unlabeled  # a row no save wrote: never a label
    assert not (tmp_path / "data" / "train_mask" / "a_ok.nii.gz").exists()


def test_dicom_and_uncompressed_inputs_are_written_as_nifti_on_their_grid(tmp_path, real_data):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    shutil.copytree(real_data / "abdomen_ct_dicom", inputs / "series")
    with gzip.open(real_data / "abdomen_ct_3mm.nii.gz") as stream:
        (inputs / "plain.nii").write_bytes(stream.read())
    labels, _ = read_label_map(real_data / "abdomen_ct_dicom_labels.nii.gz")  # its rows run the other way
    write_volume(outputs / "series.nii.gz", labels[:, ::-1, :], read_volume(inputs / "series")[1])  # as predicted
    shutil.copy(real_data / "abdomen_ct_3mm_labels.nii.gz", outputs / "plain.nii.gz")
    for case, name in (("series", "series"), ("plain", "plain.nii")):
        write_record(outputs, record(case, inputs.resolve(), "written", "ok", input=name))
        ReviewBook(outputs).record(case, "accepted", f"{case}.nii.gz")
    rebuild_table(outputs)
    report = export_labels(outputs, tmp_path / "data")
    assert report.labeled == {"plain": "accepted", "series": "accepted"} and not report.skipped, report.skipped
    image = sitk.ReadImage(str(tmp_path / "data" / "train_images" / "series_0000.nii.gz"))
    series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(inputs / "series")))
    assert image.GetSize() == series.GetSize() and np.allclose(image.GetOrigin(), series.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(series))
    plain = nib.load(tmp_path / "data" / "train_images" / "plain_0000.nii.gz")
    assert np.array_equal(np.asarray(plain.dataobj), np.asarray(nib.load(inputs / "plain.nii").dataobj))


def test_a_folder_that_is_not_a_batch_is_refused(tmp_path, folders):
    with pytest.raises(ReviewError, match="no summary.csv"):
        export_labels(tmp_path, tmp_path / "data")
    _, outputs = folders
    with pytest.raises(ReviewError, match="another folder than the output folder"):
        export_labels(outputs, outputs)


def test_a_mask_written_again_after_its_review_is_not_a_label(folders, tmp_path, capsys):
    _, outputs = folders
    ReviewBook(outputs).record("a_ok", "accepted", "a_ok.nii.gz")
    ReviewBook(outputs).record("e_ok", "accepted", "e_ok.nii.gz")
    mask = nib.load(outputs / "a_ok.nii.gz")  # predict.sh --overwrite: a new mask nobody has seen
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), outputs / "a_ok.nii.gz")
    assert main([str(outputs), "--to", str(tmp_path / "data")]) == 0
    assert (
        "1 review(s) stale (the mask was written again after it), exported unlabeled: a_ok" in capsys.readouterr().out
    )
    assert (tmp_path / "data" / "trainu_images" / "a_ok_0000.nii.gz").is_file()
    assert not (tmp_path / "data" / "train_mask" / "a_ok.nii.gz").exists()
    assert (tmp_path / "data" / "train_mask" / "e_ok.nii.gz").is_file()


def test_files_another_batch_exported_or_edited_since_are_never_replaced(folders, tmp_path):
    _, outputs = folders
    ReviewBook(outputs).record("a_ok", "accepted", "a_ok.nii.gz")
    root = tmp_path / "data"
    assert export_labels(outputs, root).labeled == {"a_ok": "accepted"}
    labeled = files(root)
    other = tmp_path / "other_batch"  # the same case names, a_ok not reviewed there
    shutil.copytree(outputs, other)
    (other / "reviews.csv").unlink()
    report = export_labels(other, root)
    assert "was exported from another output folder" in report.skipped["a_ok"]
    assert {k: v for k, v in files(root).items() if "a_ok" in k} == {k: v for k, v in labeled.items() if "a_ok" in k}
    mask = root / "train_mask" / "a_ok.nii.gz"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))  # edited by hand since
    assert "changed since it was exported" in export_labels(outputs, root).skipped["a_ok"]
