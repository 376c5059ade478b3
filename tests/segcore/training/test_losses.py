"""Deep supervision: the weights of the outputs and the targets each output is scored against."""

from __future__ import annotations

import pytest
import torch

from segcore.labels import NUM_CLASSES
from segcore.training.losses import deep_supervision_loss, deep_supervision_weights, dice_ce_loss


def test_weights_halve_per_level_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == pytest.approx([2 / 3, 1 / 3])
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_loss_scores_each_output_against_the_targets_at_its_size():
    generator = torch.Generator().manual_seed(0)
    main = torch.randn(2, NUM_CLASSES, 4, 6, 8, generator=generator)
    half = torch.randn(2, NUM_CLASSES, 2, 3, 4, generator=generator)
    targets = torch.randint(0, NUM_CLASSES, (2, 4, 6, 8), generator=generator)
    # Voxel-centre nearest neighbour at a factor of 2 takes the second voxel of each pair.
    half_targets = targets[:, 1::2, 1::2, 1::2]
    expected = 2 / 3 * dice_ce_loss(main, targets) + 1 / 3 * dice_ce_loss(half, half_targets)
    assert deep_supervision_loss([main, half], targets) == pytest.approx(float(expected), rel=1e-6)


def test_a_perfect_auxiliary_output_lowers_the_loss_by_its_weight():
    targets = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    targets[:, 1::2, 1::2, 1::2] = 1  # liver exactly where the half-resolution grid samples
    main = torch.zeros(1, NUM_CLASSES, 4, 4, 4)
    wrong, right = torch.zeros(1, NUM_CLASSES, 2, 2, 2), torch.zeros(1, NUM_CLASSES, 2, 2, 2)
    right[:, 1] = 50.0  # certain liver: every half-resolution voxel is liver
    assert deep_supervision_loss([main, right], targets) < deep_supervision_loss([main, wrong], targets)
