"""predict.sh when things go wrong around the cases: names that are not UTF-8, a full disk, a run
killed between cases, values that are not Hounsfield units. Every one ends as a reason naming the
file, and the rest of the batch is kept."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from predict import batch as predict
from predict.batch import CaseResult, find_cases, main, record_of
from segcore.inference.predictor import Predictor
from segcore.outputs.records import write_record
from segcore.volumes import read_volume, write_volume

ROOT = Path(__file__).resolve().parents[2]


def table(out: Path) -> dict[str, dict[str, str]]:
    """``summary.csv`` by case id."""
    with (out / "summary.csv").open() as stream:
        return {row["case"]: row for row in csv.DictReader(stream)}


def leftovers(out: Path) -> list[str]:
    """Hidden entries a run should not leave: claims and staging folders."""
    return sorted(path.name for path in out.iterdir() if path.name.startswith(".") and path.name != ".records")


def real_cts(real_data: Path, folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(real_data / "abdomen_ct_3mm.nii.gz")
    return folder


def test_names_that_are_not_utf8_fail_their_cases_and_the_batch_completes(real_data, weights, tmp_path):
    # SimpleITK aborts the whole process on such a name (exit 134): no summary, the good cases never
    # done, the claim and staging folder left behind. It must never see one.
    folder = real_cts(real_data, tmp_path / "in", ["good_0000.nii.gz", os.fsdecode(b"caf\xe9_0000.nii.gz")])
    shutil.copytree(real_data / "abdomen_ct_dicom", folder / "series")
    slice_file = sorted((folder / "series").iterdir())[0]
    slice_file.rename(folder / "series" / os.fsdecode(b"slice\xe9.dcm"))
    out = tmp_path / "out"
    command = ["sh", str(ROOT / "predict.sh"), "-i", str(folder), "-o", str(out), "--weights", str(weights)]
    result = subprocess.run(
        [*command, "--no-progress"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "written 1, skipped 0 (output exists), failed 2" in result.stdout
    failures = {line.split()[1]: line for line in result.stdout.splitlines() if line.strip().startswith("FAILED")}
    assert (
        "not valid UTF-8" in failures["caf\\xe9_0000.nii.gz:"]
        and "caf\\xe9_0000.nii.gz" in failures["caf\\xe9_0000.nii.gz:"]
    )
    assert "not valid UTF-8" in failures["series:"] and "slice\\xe9.dcm" in failures["series:"]
    rows = table(out)
    assert {case: row["status"] for case, row in rows.items()} == {
        "good": "written", "caf\\xe9": "failed", "series": "failed"
    }  # fmt: skip
    assert leftovers(out) == []
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "good.nii.gz", "summary.csv"
    ]  # fmt: skip


def test_an_output_folder_that_is_not_utf8_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    output = tmp_path / os.fsdecode(b"r\xe9sultats")
    assert main(["-i", str(tmp_path / "in"), "-o", str(output), "--weights", str(tmp_path / "none")]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert error == f"predict: output folder {tmp_path}/r\\xe9sultats: the path is not valid UTF-8 " + (
        "(SimpleITK cannot write there): rename it"
    )


def test_a_full_disk_stops_the_run_once_keeping_what_was_written(
    real_data, weights, tmp_path, capsys, monkeypatch, one_thread
):
    # Every later case would fail the same way, each with a traceback: the run stops at the first,
    # says so once, and keeps the cases written before it.
    folder = real_cts(real_data, tmp_path / "in", ["a_0000.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz"])
    out = tmp_path / "out"
    written = []

    def fills_up(path, array, geometry, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(path)
        write_volume(path, array, geometry, **kwargs)

    monkeypatch.setattr("segcore.outputs.case.write_volume", fills_up)
    status = main(["-i", str(folder), "-o", str(out), "--weights", str(weights), "--no-progress", "--stats"])
    captured = capsys.readouterr()
    assert status == predict.DISK_FULL_STATUS == 3, captured.out + captured.err
    assert "Traceback" not in captured.err
    stops = [line for line in captured.err.splitlines() if line.startswith("predict: stopped:")]
    assert stops == [
        f"predict: stopped: no space left on the disk holding {out} (No space left on device); 1 case(s) not "
        "attempted; what was written is kept: free space and run again to finish"
    ], captured.err
    assert f"FAILED b_0000.nii.gz: {folder / 'b_0000.nii.gz'}: not written: no space left" in captured.out
    rows = table(out)
    assert {case: row["status"] for case, row in rows.items()} == {"a": "written", "b": "failed"}
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "a.json", "a.nii.gz", "summary.csv"
    ]  # fmt: skip
    assert leftovers(out) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root may mount one; elsewhere the test is skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path) -> None:
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, bytes(65536))
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)


def test_a_really_full_disk_stops_the_run_and_publishes_no_short_mask(
    real_data, weights, tmp_path, small_disk, capsys, one_thread
):
    # ITK's NIfTI writer reports ENOSPC on stderr only: its short mask must not be published as written.
    folder = real_cts(real_data, tmp_path / "in", ["a_0000.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz"])
    out = small_disk / "out"
    args = ["-i", str(folder), "-o", str(out), "--weights", str(weights), "--no-progress"]
    assert main([*args[:1], str(folder / "a_0000.nii.gz"), *args[2:]]) == 0
    before = read_volume(out / "a.nii.gz", check_ct=False)[0]
    table_before = (out / "summary.csv").read_text()
    fill(small_disk)
    capsys.readouterr()
    assert main(args) == predict.DISK_FULL_STATUS
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert sum(line.startswith("predict: stopped: no space left") for line in captured.err.splitlines()) == 1
    assert "case(s) not attempted" in captured.err
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "a.nii.gz", "summary.csv"
    ]  # fmt: skip
    assert np.array_equal(read_volume(out / "a.nii.gz", check_ct=False)[0], before)
    assert (out / "summary.csv").read_text() == table_before  # no room to rewrite it: the last whole one stays
    assert leftovers(out) == []


def test_the_table_is_rewritten_after_every_case(real_data, tmp_path, monkeypatch):
    # After kill -9 the table must list every case whose outputs were published (not 3 rows beside 4 masks).
    folder = real_cts(real_data, tmp_path / "in", [f"case{index}_0000.nii.gz" for index in range(4)])
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(folder, out)
    rows_seen = []

    def segmented(predictor, case, output_dir, **kwargs):
        rows_seen.append(len(table(output_dir)) if (output_dir / "summary.csv").exists() else 0)
        result = CaseResult(case.name, case.output_name, "written", 0.1)
        write_record(output_dir, record_of(case, result, {}))
        return result

    monkeypatch.setattr(predict, "predict_case", segmented)
    predict.predict_cases(None, cases, out, progress=False)
    assert rows_seen == [0, 1, 2, 3] and len(table(out)) == 4


def test_values_that_are_not_hounsfield_units_are_a_warning_in_the_record_and_table(
    real_data, weights, tmp_path, one_thread
):
    # HU × 1000 is segmented (verdict `review` on its own): the user must read that these are not HU.
    folder = real_cts(real_data, tmp_path / "in", ["plain_0000.nii.gz"])
    image, geometry = read_volume(real_data / "abdomen_ct_3mm.nii.gz")
    write_volume(folder / "scaled_0000.nii.gz", image.astype(np.float32) * 1000, geometry)
    out = tmp_path / "out"
    out.mkdir()
    cases, _, _ = find_cases(folder, out)
    predictor = Predictor.from_weights(weights, "cpu")
    everything = predict.Outputs(nifti=True, stats=True)
    results = {r.name: r for r in predict.predict_cases(predictor, cases, out, outputs=everything, progress=False)}
    assert {name: r.status for name, r in results.items()} == {
        "plain_0000.nii.gz": "written",
        "scaled_0000.nii.gz": "written",
    }
    [warning] = [w for w in results["scaled_0000.nii.gz"].warnings if "Hounsfield" in w]
    assert warning.startswith("values are not plausible Hounsfield units")
    assert not any("Hounsfield" in w for w in results["plain_0000.nii.gz"].warnings)
    assert warning in json.loads((out / "scaled.json").read_text())["warnings"]
    assert warning in table(out)["scaled"]["warnings"] and "Hounsfield" not in table(out)["plain"]["warnings"]
    assert f"WARNING scaled_0000.nii.gz: {warning}" in predict.summary(list(results.values()), 1.0)
    assert sitk.ReadImage(str(out / "scaled.nii.gz")).GetSize() == geometry.size


def test_a_skipped_case_whose_record_cannot_be_read_gets_it_back(real_data, tmp_path):
    # A record another version wrote (or a broken one) left the case out of summary.csv for good:
    # a rerun skipped the case and kept the record because a file of that name existed.
    import shutil

    from predict.batch import skipped
    from segcore.outputs.records import RECORDS, ResultRow

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(real_data / "abdomen_ct_3mm.nii.gz", folder / "ct_0000.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (case,), _, _ = find_cases(folder, out)
    (out / RECORDS).mkdir()
    (out / RECORDS / "ct.json").write_text("{not json")
    assert skipped(case, out).status == "skipped"
    repaired = ResultRow.read(out / RECORDS / "ct.json")
    assert repaired is not None and repaired.case == "ct" and repaired.status == "skipped"
