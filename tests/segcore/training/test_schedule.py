"""Learning-rate schedules: factors at chosen steps, computed by hand."""

from __future__ import annotations

import pytest

from segcore.training.config import OptimizerConfig
from segcore.training.optim import lr_schedule, poly_schedule, wsd_schedule


def test_warmup_stable_decay_factors():
    factor = wsd_schedule(total_steps=100, warmup_steps=10, decay_share=0.2)
    # warm-up: (step + 1) / 10; stable: 1 until step 80; then (100 - step) / 20
    expected = {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 50: 1.0, 79: 1.0, 80: 1.0, 85: 0.75, 90: 0.5, 99: 0.05, 100: 0.0}
    assert {step: factor(step) for step in expected} == pytest.approx(expected)


def test_a_run_shorter_than_its_warm_up_still_cools_down_to_zero():
    factor = wsd_schedule(total_steps=6, warmup_steps=10, decay_share=0.5)
    # min of the warm-up (step + 1) / 10 and the cool-down over steps 3-6, (6 - step) / 3
    assert [factor(step) for step in range(7)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 1 / 3, 0.0])


def test_a_longer_wsd_run_matches_a_shorter_one_until_its_cool_down():
    short, long = wsd_schedule(100, 10, 0.2), wsd_schedule(400, 10, 0.2)
    assert [short(s) for s in range(80)] == [long(s) for s in range(80)]
    assert long(319) == 1.0 and long(360) == 0.5


def test_poly_factors():
    factor = poly_schedule(total_steps=100, warmup_steps=0, power=0.9)
    assert factor(0) == 1.0
    assert factor(50) == pytest.approx(0.5**0.9)
    assert factor(100) == 0.0


def test_config_picks_the_schedule_and_its_length():
    wsd = lr_schedule(OptimizerConfig(schedule="wsd", warmup_steps=0, decay_share=0.5), total_steps=1000, max_steps=10)
    assert wsd(4) == 1.0 and wsd(5) == 1.0 and wsd(8) == pytest.approx(0.4)  # over max_steps, not the epochs
    poly = lr_schedule(OptimizerConfig(warmup_steps=0), total_steps=1000, max_steps=10)
    assert poly(500) == pytest.approx(0.5**0.9)
    with pytest.raises(ValueError, match="decay_share"):
        OptimizerConfig(decay_share=0.0)


def test_the_constant_schedule_warms_up_and_never_decays():
    factor = lr_schedule(OptimizerConfig(schedule="constant", warmup_steps=10), total_steps=100, max_steps=100)
    assert factor(4) == pytest.approx(0.5) and factor(9) == 1.0 and factor(99) == 1.0 and factor(10**6) == 1.0
    assert lr_schedule(OptimizerConfig(schedule="constant"), total_steps=5, max_steps=5)(0) == 1.0
