"""predict.sh: a batch over real CTs with bad cases, torchrun shards, skip / overwrite, the output folder
check, concurrent runs sharing the cases through claims, the embedded sample."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from predict import batch as predict
from predict.batch import find_cases, main
from predict.sample import run_sample
from segcore.inference.predictor import Predictor
from segcore.volumes import read_volume, write_volume
from testkit import write_tiny_weights

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"ct3mm_0000.nii.gz": "ct3mm.nii.gz", "dicomct": "dicomct.nii.gz"}
BAD = {"slice2d": "2-D image"}
PASSED_OVER = {
    "ct3mm_labels.nii.gz": "a label map (uint8 with 13 distinct values",
    "mr4d.nii.gz": "a 4-D image (128×96×24×2), not a 3-D CT",
    "notes.txt": "neither NIfTI nor a folder",
}
NOTICE = "trained on phantoms: not for real scans"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"), notice=NOTICE)


@pytest.fixture(scope="module")
def batch_input(real_data, tmp_path_factory) -> Path:
    """The real NIfTI CT (FLARE name) and its label map, the DICOM series, a 2-D DICOM slice, a 4-D
    image and a stray text file."""
    folder = tmp_path_factory.mktemp("input")
    (folder / "ct3mm_0000.nii.gz").symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    (folder / "ct3mm_labels.nii.gz").symlink_to(real_data / "abdomen_ct_3mm_labels.nii.gz")
    (folder / "dicomct").symlink_to(real_data / "abdomen_ct_dicom", target_is_directory=True)
    (folder / "slice2d").mkdir()
    (folder / "slice2d" / "slice.dcm").symlink_to(real_data / "single_slice_ct.dcm")
    (folder / "mr4d.nii.gz").symlink_to(real_data / "mr_4d_oblique.nii.gz")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


PREDICT = ["sh", str(ROOT / "predict.sh"), "--no-progress"]
# One thread per process in both the one- and two-process runs: the float summation order, and
# so the rare argmax tie, then does not depend on the thread count.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
HOLD_LOCK = (
    "import fcntl, sys, time; lock = open(sys.argv[1], 'w'); fcntl.flock(lock, fcntl.LOCK_EX); "
    "print('held', flush=True); time.sleep(300)"
)
"""A stand-in for a predict.sh run that claimed a case (its argument: the lock file) and hangs there."""


def run_predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PREDICT, *args], capture_output=True, text=True, timeout=300, env=ONE_THREAD)


def summary_statuses(stdout: str, names: set[str]) -> dict[str, str]:
    """``{case: status}`` from the summary table of a run."""
    rows = [line.split() for line in stdout.splitlines()]
    return {words[0]: words[1] for words in rows if words and words[0] in names}


def copies_of_the_real_ct(real_data: Path, folder: Path, names: list[str]) -> Path:
    """``folder`` holding one link to the real 3 mm CT per name."""
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    return folder


@pytest.fixture(scope="module")
def one_process_run(batch_input, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_one")
    return out, run_predict("-i", str(batch_input), "-o", str(out), "--weights", str(weights), "--stats")


def test_batch_writes_good_cases_on_their_grid_and_reports_bad_ones(one_process_run, batch_input, real_data):
    out, result = one_process_run
    assert result.returncode == 1, result.stdout + result.stderr
    for name, reason in BAD.items():
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"FAILED {name}:"))
        assert str(batch_input / name) in line and reason in line, line
    assert "written 2, skipped 0 (output exists), failed 1" in result.stdout
    for name, reason in PASSED_OVER.items():  # one line each, naming the file and why
        assert sum(f"passed over {name}: {reason}" in line for line in result.stdout.splitlines()) == 1, name
    assert result.stdout.count(NOTICE) == 1, result.stdout  # once per run, not per case
    header = next(line for line in result.stdout.splitlines() if line.startswith("case "))
    assert header.split()[-1] == "verdict", header
    assert json.loads((out / "ct3mm.json").read_text())["quality"]["verdict"] in ("ok", "review", "fail")
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["ct3mm.json", "ct3mm.nii.gz", "dicomct.json", "dicomct.nii.gz", "summary.csv"]
    with (out / "summary.csv").open() as stream:
        rows = {row["input"]: row for row in csv.DictReader(stream)}
    assert {name: rows[name]["status"] for name in rows} == {
        "ct3mm_0000.nii.gz": "written", "dicomct": "written", **dict.fromkeys(BAD, "failed")
    }  # fmt: skip
    stats = json.loads((out / "ct3mm.json").read_text())
    row = rows["ct3mm_0000.nii.gz"]
    assert row["verdict"] == stats["quality"]["verdict"] and float(row["seconds"]) > 0
    for name, organ in stats["organs"].items():
        assert float(row[f"{name}_ml"]) == organ["volume_ml"] and float(row[f"{name}_mean_hu"]) == organ["mean_hu"]
    assert all(rows[name]["reason"] for name in BAD)
    record = json.loads((out / ".records" / "dicomct.json").read_text())  # what review.sh opens
    assert record["input_dir"] == str(batch_input.resolve()) and record["mask"] == "dicomct.nii.gz"

    for source, output in (("abdomen_ct_3mm.nii.gz", "ct3mm.nii.gz"), ("abdomen_ct_dicom", "dicomct.nii.gz")):
        _, geometry = read_volume(real_data / source)
        mask = sitk.ReadImage(str(out / output))
        assert mask.GetSize() == geometry.size and mask.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(mask.GetSpacing(), geometry.spacing, rtol=1e-6)
        np.testing.assert_allclose(mask.GetOrigin(), geometry.origin, atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), geometry.direction, atol=1e-6)
        labels = sitk.GetArrayFromImage(mask)
        assert labels.max() <= 13

        stats = json.loads((out / output.replace(".nii.gz", ".json")).read_text())
        present = {int(v) for v in np.unique(labels) if v}
        assert {organ["label"] for organ in stats["organs"].values()} == present
        for organ in stats["organs"].values():
            assert organ["voxels"] == int((labels == organ["label"]).sum()) and organ["volume_ml"] > 0
        assert stats["crop_box"] == [[0, geometry.size[0]], [0, geometry.size[1]], [0, geometry.size[2]]]


def test_two_processes_write_every_case_once_like_one_process(one_process_run, batch_input, weights, tmp_path):
    reference, _ = one_process_run
    out = tmp_path / "out_two"
    result = run_predict("-i", str(batch_input), "-o", str(out), "--weights", str(weights), "--stats", "--nproc", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "(2 process(es) on cpu)" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if words and words[0] in {**GOOD, **BAD}:
            assert words[0] not in rows, f"{words[0]} listed twice"
            rows[words[0]] = (words[1], int(words[-1]))
    # Sorted cases dealt round-robin: ct3mm, dicomct, slice2d -> ranks 0, 1, 0.
    assert rows == {"ct3mm_0000.nii.gz": ("written", 0), "dicomct": ("written", 1), "slice2d": ("failed", 0)}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for output in GOOD.values():
        ours, theirs = sitk.ReadImage(str(out / output)), sitk.ReadImage(str(reference / output))
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)), output
        assert ours.GetOrigin() == theirs.GetOrigin() and ours.GetDirection() == theirs.GetDirection()
        ours_stats, their_stats = (
            json.loads((d / output.replace(".nii.gz", ".json")).read_text()) for d in (out, reference)
        )
        assert ours_stats["organs"] == their_stats["organs"]


def test_existing_outputs_are_skipped_unless_overwrite(real_data, weights, tmp_path, capsys, one_thread):
    source = copies_of_the_real_ct(real_data, tmp_path / "in", ["case_0000.nii.gz"])
    out = tmp_path / "out"
    args = ["-i", str(source), "-o", str(out), "--weights", str(weights), "--no-progress"]
    assert main(args) == 0
    predicted, geometry = read_volume(out / "case.nii.gz", check_ct=False)
    assert predicted.any()
    write_volume(out / "case.nii.gz", np.zeros_like(predicted), geometry)  # a stale result to keep or replace

    assert main(args) == 0
    assert "written 0, skipped 1" in capsys.readouterr().out
    assert not read_volume(out / "case.nii.gz", check_ct=False)[0].any()

    assert main([*args, "--overwrite"]) == 0
    assert "written 1, skipped 0" in capsys.readouterr().out
    assert np.array_equal(read_volume(out / "case.nii.gz", check_ct=False)[0], predicted)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("a_file", "exists and is not a folder"),
        ("a_file/out", "cannot be created"),
        ("/proc/predict_out", "cannot be created"),
        ("/sys", "not writable"),  # sysfs refuses new files even to root, for whom chmod means nothing
    ],
)
def test_a_bad_output_folder_is_a_one_line_usage_error_before_the_weights_load(output, reason, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    output = str(tmp_path / output) if not output.startswith("/") else output
    # Missing weights would be the error if they were loaded before the output folder was checked.
    assert main(["-i", str(tmp_path / "in"), "-o", output, "--weights", str(tmp_path / "none")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"predict: output folder {output}: {reason}"), errors


def test_the_output_folder_check_creates_the_folder_and_writes_a_probe(tmp_path):
    nested = tmp_path / "new" / "out"
    assert predict.check_output_folder(nested) is None
    assert nested.is_dir() and not any(nested.iterdir())
    assert predict.check_output_folder(Path("/sys")).startswith("not writable")


def test_every_rank_refuses_an_output_file_and_none_hangs(weights, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    args = ["-i", str(tmp_path / "in"), "-o", str(tmp_path / "a_file"), "--weights", str(weights)]
    result = run_predict(*args, "--nproc", "2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"predict: output folder {tmp_path / 'a_file'}: exists and is not a folder"]


def test_concurrent_runs_split_the_cases(real_data, weights, tmp_path):
    names = [f"case{index}_0000.nii.gz" for index in range(6)]
    source = copies_of_the_real_ct(real_data, tmp_path / "in", names)
    out = tmp_path / "out"
    command = [*PREDICT, "-i", str(source), "-o", str(out), "--weights", str(weights)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": ONE_THREAD}
    runs = [subprocess.Popen(command, **pipes) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    written = []
    for run, (stdout, stderr) in zip(runs, outputs):
        assert run.returncode == 0, stdout + stderr
        statuses = summary_statuses(stdout, set(names))
        assert set(statuses) == set(names) and set(statuses.values()) <= {"written", "skipped"}, stdout
        written.append(sum(status == "written" for status in statuses.values()))
    assert sum(written) == len(names), f"cases written by each run: {written}"
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(out / name.replace("_0000", "")))) for name in names]
    assert masks[0].any() and masks[0].max() <= 13
    assert all(np.array_equal(mask, masks[0]) for mask in masks)
    hidden = [path.name for path in out.iterdir() if path.name.startswith(".")]
    assert hidden == [".records"]  # no lock, probe or temporary left
    with (out / "summary.csv").open() as stream:  # two runs, one table, every case in it once
        cases = sorted(row["case"] for row in csv.DictReader(stream))
    assert cases == sorted(name.replace("_0000.nii.gz", "") for name in names)


def test_a_case_claimed_elsewhere_is_put_off_then_finished(real_data, weights, tmp_path, one_thread):
    source = copies_of_the_real_ct(real_data, tmp_path / "in", ["a_0000.nii.gz", "b_0000.nii.gz"])
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(source, out)
    predictor = Predictor.from_weights(weights, "cpu")
    lock_file = out / ".a.lock"
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        release = threading.Timer(1.0, lock.close)  # closing the file drops the lock, as the holder's exit would
        release.start()
        results = predict.predict_cases(predictor, cases, out, progress=False)
        release.join()
    assert [(result.name, result.status) for result in results] == [
        ("b_0000.nii.gz", "written"),
        ("a_0000.nii.gz", "written"),
    ]
    assert (out / "a.nii.gz").is_file() and not lock_file.exists()


def test_a_killed_runs_claim_is_taken_over(real_data, weights, tmp_path, capsys, one_thread):
    source = copies_of_the_real_ct(real_data, tmp_path / "in", ["case_0000.nii.gz"])
    out = tmp_path / "out"
    out.mkdir()
    lock_file = out / ".case.lock"
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_file)], stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout.readline() == "held\n"
        holder.kill()
    assert main(["-i", str(source), "-o", str(out), "--weights", str(weights), "--no-progress"]) == 0
    assert "written 1, skipped 0" in capsys.readouterr().out
    assert (out / "case.nii.gz").is_file() and not lock_file.exists()


def test_case_discovery_names_and_collisions(tmp_path):
    for name in ("a_0000.nii.gz", "b.nii", "c_0001.nii.gz", "e_0000.nii.gz", "e.nii.gz", ".hidden.nii.gz", "x.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "out").mkdir()
    cases, problems, ignored = find_cases(tmp_path, tmp_path / "out")
    assert {case.name: case.output_name for case in cases} == {
        "a_0000.nii.gz": "a.nii.gz",
        "b.nii": "b.nii.gz",
        "c_0001.nii.gz": "c_0001.nii.gz",
        "d": "d.nii.gz",
    }
    assert set(problems) == {"e_0000.nii.gz", "e.nii.gz"} and "also claimed by" in problems["e.nii.gz"]
    assert ignored == {"x.txt": "neither NIfTI nor a folder"}


def test_missing_weights_is_a_one_line_error(tmp_path, capsys):
    assert main(["--weights", str(tmp_path / "none")]) == 2
    assert main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "none")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(
        "no model weights in" in line and "coarse.pt and fine.pt" in line for line in errors
    )


def test_embedded_sample_prints_organ_volumes_and_dice(weights, tmp_path, capsys):
    assert run_sample(weights, "cpu", sample_dir=tmp_path / "sample") == 0
    output = capsys.readouterr().out
    assert "mean DSC" in output and "liver" in output and "left_kidney" in output
    assert (tmp_path / "sample" / "predictions" / "sample.nii.gz").is_file()
    assert (tmp_path / "sample" / "labels" / "sample.nii.gz").is_file()


def test_dicom_seg_preview_and_table_from_one_run(real_data, series_with_uids, weights, tmp_path):
    import highdicom as hd
    from PIL import Image

    from segcore.labels import ORGANS

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "series").symlink_to(series_with_uids, target_is_directory=True)
    (folder / "ct3mm_0000.nii.gz").symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    out = tmp_path / "out"
    result = run_predict(
        "-i", str(folder), "-o", str(out), "--weights", str(weights), "--output-type", "both", "--preview"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING ct3mm_0000.nii.gz: no DICOM-SEG: the input is NIfTI" in result.stdout
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "ct3mm.nii.gz",
        "ct3mm_preview.png",
        "series.nii.gz",
        "series_preview.png",
        "series_seg.dcm",
        "summary.csv",
    ]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "series.nii.gz")))
    seg = hd.seg.segread(out / "series_seg.dcm")
    organs = {seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers}
    assert organs == {ORGANS[v] for v in np.unique(mask) if v}  # one segment per organ in the NIfTI mask
    assert "phantom-trained" in seg.SeriesDescription  # the tiny weights carry a phantom notice
    for name in ("ct3mm_preview.png", "series_preview.png"):
        assert Image.open(out / name).size[1] >= 360
    # asked again: everything exists, nothing is redone
    again = run_predict(
        "-i", str(folder), "-o", str(out), "--weights", str(weights), "--output-type", "both", "--preview"
    )
    assert "written 0, skipped 2" in again.stdout, again.stdout
    # only a SEG for a NIfTI input: the case fails, saying why
    only_seg = run_predict(
        "-i", str(folder), "-o", str(tmp_path / "seg"), "--weights", str(weights), "--output-type", "dicom-seg"
    )
    assert only_seg.returncode == 1 and "no DICOM-SEG: the input is NIfTI" in only_seg.stdout
    assert (tmp_path / "seg" / "series_seg.dcm").exists() and not (tmp_path / "seg" / "ct3mm.nii.gz").exists()


def every_file(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, hidden ones included, but the records and the table."""
    kept = ("summary.csv", ".records", ".summary.lock")
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.name not in kept and ".records" not in p.parts
    )


def table_row(out: Path, case: str) -> dict[str, str]:
    with (out / "summary.csv").open() as stream:
        return next(row for row in csv.DictReader(stream) if row["case"] == case)


def test_a_seg_that_cannot_be_made_is_a_warning_beside_the_mask_for_every_input(
    real_data, weights, tmp_path, one_thread
):
    # The series has no study/series UIDs: `both` wrote the mask, then failed the case and left the
    # mask behind with organ figures and no verdict; a NIfTI input was written with a warning.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "series").symlink_to(real_data / "abdomen_ct_dicom", target_is_directory=True)
    (folder / "ct_0000.nii.gz").symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(folder, out)
    predictor = Predictor.from_weights(weights, "cpu")
    both = predict.Outputs(nifti=True, dicom_seg=True)
    results = {r.name: r for r in predict.predict_cases(predictor, cases, out, outputs=both, progress=False)}
    assert {name: r.status for name, r in results.items()} == {"series": "written", "ct_0000.nii.gz": "written"}
    assert any("no DICOM-SEG" in w and "StudyInstanceUID" in w for w in results["series"].warnings)
    assert any("no DICOM-SEG: the input is NIfTI" in w for w in results["ct_0000.nii.gz"].warnings)
    assert every_file(out) == ["ct.nii.gz", "series.nii.gz"]
    assert table_row(out, "series")["verdict"] and table_row(out, "series")["liver_ml"]


def test_a_seg_alone_that_cannot_be_made_is_refused_before_inference_leaving_nothing(
    real_data, weights, tmp_path, one_thread, monkeypatch
):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "series").symlink_to(real_data / "abdomen_ct_dicom", target_is_directory=True)
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(folder, out)
    predictor = Predictor.from_weights(weights, "cpu")
    monkeypatch.setattr(predictor, "predict_file", lambda path: pytest.fail("inference ran for a refused SEG"))
    only_seg = predict.Outputs(nifti=False, dicom_seg=True)
    [result] = predict.predict_cases(predictor, cases, out, outputs=only_seg, progress=False)
    assert result.status == "failed" and "no DICOM-SEG" in result.reason and "StudyInstanceUID" in result.reason
    assert "Error" not in result.reason  # words for people, not exception class names
    assert every_file(out) == []
    row = table_row(out, "series")
    assert row["status"] == "failed" and row["verdict"] == "" and row["liver_ml"] == ""


def test_a_case_whose_last_output_fails_leaves_no_file(real_data, weights, tmp_path, one_thread, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ct_0000.nii.gz").symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(folder, out)
    predictor = Predictor.from_weights(weights, "cpu")

    def broken(*args, **kwargs):  # a full disk stops the run instead (test_batch_failures.py)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("segcore.outputs.preview.render_preview", broken)
    everything = predict.Outputs(nifti=True, preview=True, stats=True)
    [result] = predict.predict_cases(predictor, cases, out, outputs=everything, progress=False)
    assert result.status == "failed" and "Input/output error" in result.reason
    assert "OSError" not in result.reason
    assert every_file(out) == []  # neither the mask made before the preview nor a staging folder
    assert table_row(out, "ct")["liver_ml"] == "" and table_row(out, "ct")["verdict"] == ""


def test_strict_withholds_every_output_that_carries_the_mask(
    series_with_uids, weights, tmp_path, one_thread, monkeypatch
):
    # The verdict is forced to fail: what --strict does with it is under test, not the quality rules.
    real = Predictor.predict_file

    def failing(self, path):
        prediction, image, geometry = real(self, path)
        prediction.quality = dataclasses.replace(prediction.quality, verdict="fail", reasons=["forced fail"])
        return prediction, image, geometry

    monkeypatch.setattr(Predictor, "predict_file", failing)
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "series").symlink_to(series_with_uids, target_is_directory=True)
    kinds = ["--output-type", "nifti,dicom-seg,rtstruct", "--preview", "--stats"]
    status = main(["-i", str(folder), "-o", str(out), "--weights", str(weights), *kinds, "--strict", "--no-progress"])
    assert status == 1
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    # The record says why and the preview shows it; the mask, the SEG and the RTSTRUCT are withheld.
    assert written == ["series.json", "series_preview.png", "summary.csv"], written
    record = json.loads((out / "series.json").read_text())
    assert record["mask_written"] is False and record["quality"]["verdict"] == "fail"
