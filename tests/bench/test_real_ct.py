"""bench.real_ct's printed table of a hand-made record (organs by rows, scans by columns)."""

from __future__ import annotations

from bench.real_ct import table


def test_the_table_shows_each_scans_organs_absent_ones_and_means():
    record = {
        "weights": "w", "precision": "float32",
        "scans": {
            "ct": {"dsc": {"liver": 0.9, "ivc": 0.0}, "mean_present": 0.45, "mean_13": 0.8, "verdict": "review"},
            "series": {"dsc": {"liver": 0.8}, "mean_present": 0.8, "mean_13": 0.9, "verdict": "ok"},
        },
        "phantoms": {"count": 2, "dsc": {organ: 0.5 for organ in (
            "liver", "right_kidney", "spleen", "pancreas", "aorta", "ivc", "right_adrenal_gland",
            "left_adrenal_gland", "gallbladder", "esophagus", "stomach", "duodenum", "left_kidney")}},
    }  # fmt: skip
    lines = table(record).splitlines()
    assert lines[0] == "weights w (float32)"
    assert lines[1].split() == ["organ", "ct", "DSC", "series", "DSC", "phantoms", "(2)", "DSC"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:15]}
    assert rows["liver"] == ["0.9000", "0.8000", "0.5000"]
    assert rows["ivc"] == ["0.0000", "absent", "0.5000"]
    assert rows["spleen"] == ["absent", "absent", "0.5000"]
    assert lines[15].split()[-3:] == ["0.4500", "0.8000", "0.5000"]
    assert lines[16].split()[-2:] == ["0.8000", "0.9000"] and lines[17].split()[-2:] == ["review", "ok"]
