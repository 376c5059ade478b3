"""experiments.real_ct's printed tables of hand-made records and its confusion count on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.real_ct import confusion, confusion_table, table


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


def test_confusion_counts_each_reference_organs_voxels_by_the_label_given():
    # liver (1): 20 voxels given 10 liver, 5 stomach (11), 3 background, 2 pancreas (4): the top 3
    # leaves pancreas out. ivc (6): 4 voxels given 3 pancreas, 1 liver: two labels only.
    # Background: 6 voxels, 2 of them given spleen (3), which the reference does not hold.
    truth = np.array([1] * 20 + [6] * 4 + [0] * 6)
    prediction = np.array([1] * 10 + [11] * 5 + [0] * 3 + [4] * 2 + [4] * 3 + [1] + [3] * 2 + [0] * 4)
    order = np.random.default_rng(0).permutation(truth.size)
    found = confusion(truth[order].reshape(2, 3, 5), prediction[order].reshape(2, 3, 5).astype(np.uint8))
    assert list(found) == [1, 6]
    assert [label for label, _ in found[1]] == [1, 11, 0]
    assert [share for _, share in found[1]] == pytest.approx([10 / 20, 5 / 20, 3 / 20])
    assert [label for label, _ in found[6]] == [4, 1]
    assert [share for _, share in found[6]] == pytest.approx([3 / 4, 1 / 4])


def test_confusion_refuses_arrays_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8))


def test_the_confusion_table_names_each_scans_organs_and_the_labels_given_in_percent():
    record = {
        "scans": {
            "ct": {
                "confusion": {
                    "liver": [["liver", 0.9512], ["background", 0.032], ["stomach", 0.0101]],
                    "ivc": [["pancreas", 0.412], ["liver", 0.301], ["background", 0.12]],
                }
            },
            "series": {"confusion": {"spleen": [["spleen", 1.0]]}},
        },
    }
    lines = confusion_table(record).splitlines()
    assert lines[0].startswith("ct:") and lines[3].startswith("series:")
    assert lines[1].strip() == "liver: liver 95.1 %, background 3.2 %, stomach 1.0 %"
    assert lines[2].strip() == "ivc: pancreas 41.2 %, liver 30.1 %, background 12.0 %"
    assert lines[4].strip() == "spleen: spleen 100.0 %"
    assert len(lines) == 5
