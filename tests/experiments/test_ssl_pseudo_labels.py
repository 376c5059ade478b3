"""How experiments.ssl_pseudo_labels keeps its figures between calls."""

from __future__ import annotations

import json

from experiments.ssl_pseudo_labels import keep_figures


def test_scoring_more_checkpoints_adds_to_the_figures_of_earlier_calls_and_replaces_a_rescored_one(tmp_path):
    path = tmp_path / "pseudo_labels_checkpoints.json"
    keep_figures(path, {"seed0/last.pt/ensemble": {"mean_dsc": 0.65}, "seed1/last.pt/ensemble": {"mean_dsc": 0.66}})
    keep_figures(path, {"seed2/last.pt/ensemble": {"mean_dsc": 0.67}, "seed1/last.pt/ensemble": {"mean_dsc": 0.61}})
    assert json.loads(path.read_text()) == {
        "seed0/last.pt/ensemble": {"mean_dsc": 0.65},
        "seed1/last.pt/ensemble": {"mean_dsc": 0.61},
        "seed2/last.pt/ensemble": {"mean_dsc": 0.67},
    }
