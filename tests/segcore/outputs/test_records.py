"""The results table: typed records in ``.records/``, ``summary.csv`` rebuilt from them."""

from __future__ import annotations

import csv
import json

import pytest

from segcore.outputs.records import (
    RECORDS,
    TABLE,
    OrganMeasures,
    RecordCache,
    ResultRow,
    read_records,
    rebuild_table,
    write_record,
)


def row(case: str, **changes) -> ResultRow:
    values = {
        "case": case, "input": f"{case}_0000.nii.gz", "input_dir": "/data/in", "mask": f"{case}.nii.gz",
        "status": "written", "seconds": 2.5, "verdict": "review", "quality_reasons": ["a; b", "c"],
        "warnings": [], "reason": "", "organs": {"liver": OrganMeasures(volume_ml=1500.5, mean_hu=61.25)},
    }  # fmt: skip
    return ResultRow(**{**values, **changes})


def table(folder) -> list[dict[str, str]]:
    with open(folder / TABLE, newline="") as text:
        return list(csv.DictReader(text))


def test_a_record_reads_back_as_written_and_makes_its_row(tmp_path):
    written = row("case1")
    write_record(tmp_path, written)
    assert read_records(tmp_path) == {"case1": written}
    assert rebuild_table(tmp_path) == 1
    (line,) = table(tmp_path)
    assert line["case"] == "case1" and line["status"] == "written" and line["verdict"] == "review"
    assert line["quality_reasons"] == "a; b; c" and line["reason"] == "" and line["seconds"] == "2.5"
    assert line["liver_ml"] == "1500.5" and line["liver_mean_hu"] == "61.25" and line["spleen_ml"] == ""


@pytest.mark.parametrize(
    "text",
    [
        b"[1, 2]",  # JSON, not an object
        b'{"case": "junk", "organs": {"liver": 3}}',  # an object, not a record
        b'{"case": "junk"',  # cut short
        b"\xff\xfe",  # not text
    ],
)
def test_a_file_in_the_records_folder_that_is_not_a_record_is_left_out(tmp_path, text):
    write_record(tmp_path, row("b_good"))
    (tmp_path / RECORDS / "a_junk.json").write_bytes(text)
    assert list(read_records(tmp_path)) == ["b_good"]
    assert rebuild_table(tmp_path) == 1 and [line["case"] for line in table(tmp_path)] == ["b_good"]


def test_a_record_with_a_value_the_schema_lacks_is_refused():
    with pytest.raises(ValueError, match="status"):
        row("x", status="done")
    with pytest.raises(ValueError, match="verdict"):
        row("x", verdict="maybe")


def test_the_record_cache_reads_again_only_what_changed(tmp_path, monkeypatch):
    for case in ("a", "b", "c"):
        write_record(tmp_path, row(case))
    cache = RecordCache(tmp_path, derive=lambda record: (record.verdict, record.seconds))
    assert cache.read() == {"a": ("review", 2.5), "b": ("review", 2.5), "c": ("review", 2.5)}
    reads = []
    real_read = ResultRow.read
    monkeypatch.setattr(ResultRow, "read", classmethod(lambda cls, path: reads.append(path.name) or real_read(path)))
    assert cache.read() == {"a": ("review", 2.5), "b": ("review", 2.5), "c": ("review", 2.5)} and reads == []
    write_record(tmp_path, row("b", verdict="ok", seconds=9.0))  # replaced by a rename: a new file
    (tmp_path / RECORDS / "c.json").unlink()
    write_record(tmp_path, row("d"))
    assert cache.read() == {"a": ("review", 2.5), "b": ("ok", 9.0), "d": ("review", 2.5)}
    assert sorted(reads) == ["b.json", "d.json"]


def test_records_of_other_versions_stay_in_the_table(tmp_path):
    """A record written before ``input_dir`` and ``mask`` were kept, or by a version with one key
    more, is still a row (it was dropped from summary.csv and the review station)."""
    (tmp_path / RECORDS).mkdir()
    old = row("a_old").model_dump()
    del old["input_dir"], old["mask"]
    (tmp_path / RECORDS / "a_old.json").write_text(json.dumps(old))
    (tmp_path / RECORDS / "b_new.json").write_text(json.dumps({**row("b_new").model_dump(), "added_later": 1}))
    assert list(read_records(tmp_path)) == ["a_old", "b_new"]
    assert read_records(tmp_path)["a_old"].mask == ""
    assert rebuild_table(tmp_path) == 2 and [line["case"] for line in table(tmp_path)] == ["a_old", "b_new"]
