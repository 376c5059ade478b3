"""Quality measures and the verdict, on constructed cases whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segcore.inference.quality import (
    Thresholds,
    chest_share,
    coarse_on_crop,
    edge_labels,
    normalised_entropy,
    organ_measures,
    stage_agreement,
    verdict,
)

CALM = {"liver": {"volume_ml": 1500.0, "plausible_volume": True}} | {
    f"organ{i}": {"volume_ml": 10.0, "plausible_volume": True} for i in range(8)
}


def test_entropy_is_zero_when_certain_and_one_when_uniform():
    certain = torch.zeros(14, 2, 2, 2)
    certain[3] = 1
    assert float(normalised_entropy(certain).max()) == pytest.approx(0, abs=1e-6)
    assert float(normalised_entropy(torch.full((14, 2, 2, 2), 1 / 14)).min()) == pytest.approx(1, abs=1e-6)


def test_entropy_by_slabs_is_every_voxels_entropy():
    """Slabs of 3 planes over 10 (the last one short): each voxel's entropy from numpy's own sums."""
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(3 * torch.randn(4, 10, 3, 5, generator=generator), dim=0)
    p = probabilities.double().numpy()
    expected = -(p * np.log(p)).sum(0) / np.log(4)
    np.testing.assert_allclose(normalised_entropy(probabilities, slab=3).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_stage_agreement_is_the_mean_dice_over_organs_in_either_map():
    fine = torch.zeros(4, 4, 4, dtype=torch.uint8)
    coarse = torch.zeros(4, 4, 4, dtype=torch.uint8)
    fine[:2], coarse[:2] = 1, 1  # liver: identical
    fine[2, 0, 0] = 2  # right kidney only in the fine map: Dice 0
    assert stage_agreement(fine, coarse) == pytest.approx(0.5)
    assert stage_agreement(coarse, coarse) == 1.0


def test_coarse_labels_are_cut_to_the_crop_and_resized():
    coarse = np.zeros((8, 8, 8), dtype=np.uint8)
    coarse[4:, :, :] = 1  # the upper half of the coarse grid is liver
    # the crop is the upper half of a 16³ full-resolution grid: all liver
    crop = coarse_on_crop(coarse, [(8, 16), (0, 16), (0, 16)], (16, 16, 16), (5, 5, 5))
    assert crop.shape == (5, 5, 5) and bool((crop == 1).all())


def test_organ_volumes_are_checked_against_adult_ranges_unless_cut_by_the_scan():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # right kidney: 1000 voxels of 1 mL: 1000 mL, implausible
    labels[0:2, 0:2, 0:2] = 1  # liver: 8 mL, far too small, but it touches the first slice
    fine_labels = torch.zeros(4, 4, 4, dtype=torch.long)
    fine_labels[:2] = 2
    entropy = torch.zeros(4, 4, 4)
    entropy[0] = 0.5  # half the kidney's fine voxels are uncertain
    measures = organ_measures(fine_labels, entropy, labels, edge_labels(labels), (10.0, 10.0, 10.0))
    kidney = measures["right_kidney"]
    assert kidney["volume_ml"] == 1000.0 and not kidney["plausible_volume"]
    assert kidney["entropy"] == pytest.approx(0.25) and kidney["uncertain_share"] == pytest.approx(0.5)
    assert measures["liver"]["cut_by_field_of_view"] and measures["liver"]["plausible_volume"]
    assert measures["liver"]["entropy"] is None  # no fine voxel of it


def ct_slices(lungs: bool) -> np.ndarray:
    """8 slices of a body (soft tissue, 40 HU) in air; with ``lungs``, two lung-dense (-850 HU) disks in it."""
    image = np.full((8, 64, 64), -1000, dtype=np.int16)
    yy, xx = np.mgrid[:64, :64]
    image[:, (yy - 32) ** 2 + (xx - 32) ** 2 < 28**2] = 40
    if lungs:
        for centre in (20, 44):
            image[:, (yy - 32) ** 2 + (xx - centre) ** 2 < 10**2] = -850
    return image


def test_chest_share_sees_lungs_and_not_the_skin_rim():
    assert chest_share(ct_slices(lungs=False)) == 0.0  # the air/skin boundary is not lung
    assert chest_share(ct_slices(lungs=True)) == 1.0
    half = np.concatenate([ct_slices(lungs=False)[:6], ct_slices(lungs=True)[:2]])
    assert chest_share(half) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("entropy", "agreement", "chest", "organs", "expected", "words"),
    [
        (0.05, 0.7, 0.2, CALM, "ok", ""),
        (0.05, 0.7, 0.2, {}, "fail", "no organ"),
        (0.05, 0.7, 0.9, CALM, "fail", "mostly chest"),
        (0.15, 0.7, 0.2, CALM, "review", "entropy"),
        (0.25, 0.7, 0.2, CALM, "fail", "entropy"),
        (0.05, 0.15, 0.2, CALM, "review", "disagree"),
        (0.05, 0.05, 0.2, CALM, "fail", "agree poorly"),
        (0.05, 0.7, 0.2, {**CALM, "spleen": {"volume_ml": 3000.0, "plausible_volume": False}}, "review", "spleen"),
        (0.05, 0.7, 0.2, dict(list(CALM.items())[:3]), "review", "only 3 organs"),
    ],
)
def test_verdict(entropy, agreement, chest, organs, expected, words):
    status, reasons = verdict(entropy, agreement, chest, organs, Thresholds())
    assert status == expected, reasons
    assert words in " ".join(reasons) and bool(reasons) == (expected != "ok")
