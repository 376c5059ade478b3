"""The pre-registered rules of bench.ssl_verdict on hand-made figures."""

from __future__ import annotations

import pytest

from bench.ssl_verdict import plateau, verdict


def test_s1_is_the_first_validation_within_0_01_of_the_median_of_the_last_three():
    curve = [(150, 0.30), (300, 0.60), (450, 0.695), (600, 0.71), (750, 0.70), (900, 0.72), (1050, 0.71)]
    s1, final = plateau(curve)
    assert final == pytest.approx(0.71)  # median of 0.70, 0.72, 0.71
    assert s1 == 600  # 0.695 is 0.015 short; 0.71 is the first within 0.01


def test_a_curve_that_peaks_and_falls_back_plateaus_at_its_final_level():
    curve = [(100, 0.5), (200, 0.8), (300, 0.7), (400, 0.69), (500, 0.7)]
    assert plateau(curve) == (200, pytest.approx(0.7))  # 0.8 is above final - 0.01: counts


def test_a_rising_curve_plateaus_only_at_its_end_and_an_empty_one_is_refused():
    assert plateau([(100, 0.1), (200, 0.2), (300, 0.3), (400, 0.4)])[0] == 300  # final is 0.3 (median of 0.2..0.4)
    with pytest.raises(ValueError, match="empty"):
        plateau([])


@pytest.mark.parametrize(
    "gain, interval, headroom, worst, valid, expected",
    [
        (0.03, (0.01, 0.05), 0.08, -0.01, True, "unlabeled data pays"),
        (
            0.03,
            (0.01, 0.05),
            0.16,
            -0.01,
            True,
            "gain +0.0300 < +0.0400 needed",
        ),  # 25 % of the headroom is more than 0.02
        (0.03, (-0.01, 0.05), 0.08, 0.0, True, "not above 0"),
        (0.03, (0.01, 0.05), 0.08, -0.03, True, "an organ loses -0.0300"),
        (0.015, (0.01, 0.02), 0.06, 0.0, True, "gain +0.0150 < +0.0200 needed"),
        (0.10, (0.05, 0.15), 0.30, 0.0, False, "inconclusive"),
    ],
)
def test_the_verdict_follows_the_success_criterion(gain, interval, headroom, worst, valid, expected):
    assert expected in verdict(gain, interval, headroom, worst, valid)
