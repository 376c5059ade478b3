"""The default model's shipping rule (experiments.default_model.ships) on hand-made means."""

from __future__ import annotations

import pytest

from experiments.default_model import comparison, ships


@pytest.mark.parametrize(
    ("medium", "varied", "expected"),
    [
        ((0.8503, 0.8403), (0.6867, 0.6868), True),  # exactly 0.01 below on medium is allowed
        ((0.8503, 0.8402), (0.6867, 0.7500), False),  # a hair more than 0.01 below is not
        ((0.8503, 0.9000), (0.6867, 0.6867), False),  # level on the varied set is not better
        ((0.8503, 0.9000), (0.6867, 0.6000), False),
        ((0.8000, 0.7950), (0.5000, 0.5100), True),
    ],
)
def test_the_candidate_ships_only_if_level_on_medium_and_better_on_varied(medium, varied, expected):
    verdict, why = ships(dict(zip(("shipped", "candidate"), medium)), dict(zip(("shipped", "candidate"), varied)))
    assert verdict is expected
    assert f"{medium[1]:.4f}" in why and f"{varied[1]:.4f}" in why


def test_no_medium_organ_may_fall_more_than_0_05_below_the_shipped_model():
    """The third candidate's rule: a medium mean within 0.01 does not ship a model that loses an organ."""
    medium, varied = {"shipped": 0.8503, "candidate": 0.8503}, {"shipped": 0.59, "candidate": 0.60}
    shipped = [0.9] * 13
    level = ships(medium, varied, {"shipped": shipped, "candidate": [0.9] * 12 + [0.85]})
    assert level[0] is True  # exactly 0.05 below is allowed
    verdict, why = ships(medium, varied, {"shipped": shipped, "candidate": [0.9] * 6 + [0.8499] + [0.9] * 6})
    assert verdict is False and "right_adrenal_gland 0.8499 < 0.8500" in why
    assert ships(medium, varied)[0] is True  # without per-organ figures the rule is the second candidate's


def test_the_report_prints_the_recorded_difference_per_set_and_organ():
    """``--report``'s lines from a hand-made record: every case 0.1 better on every organ but the liver (0.2)."""
    shipped = {f"case{i}": [0.5] * 13 for i in range(4)}
    candidate = {case: [0.7] + [0.6] * 12 for case in shipped}
    record = {
        "means": {"medium": {"shipped": 0.5, "candidate": 0.6077}},
        "ships": False,
        "why": "hand-made",
        "figures": {"medium": {"shipped": {"seconds": 8.0, "cases": shipped},
                               "candidate": {"seconds": 9.5, "cases": candidate}}},
    }  # fmt: skip
    lines = comparison(record).splitlines()
    expected = "medium: candidate 0.6077 vs shipped 0.5000: +0.1077 [+0.1077, +0.1077]; predict.sh 9.5 s vs 8.0 s"
    assert lines[0] == expected  # 1.4 / 13 = 0.1077 on every case, so the interval is that point
    assert lines[1].startswith("  per organ: liver +0.2000, right_kidney +0.1000")
    assert lines[-1] == "SHIPS: no: hand-made"
