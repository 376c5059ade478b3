"""The default model's shipping rule (bench.default_model.ships) on hand-made means."""

from __future__ import annotations

import pytest

from bench.default_model import ships


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
