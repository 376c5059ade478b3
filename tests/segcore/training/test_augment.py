"""Augmentation: what survives the window + z-score, the HU remap, gamma, blur, Fourier mixing, views."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from segcore.labels import ORGAN_IDS
from segcore.training.augment import (
    AugmentConfig,
    apply_gamma,
    augment_intensity,
    augment_views,
    fourier_mix,
    gaussian_blur,
    random_fourier_mix,
    remap_hu,
)
from segcore.volumes.intensity import normalize_hu

LIVER, AORTA = ORGAN_IDS["liver"], ORGAN_IDS["aorta"]
ONLY_ORGAN_CONTRAST = AugmentConfig(
    intensity_probability=1.0, hu_shift=0.0, hu_scale=0.0, tissue_contrast_hu=0.0, gamma=0.0,
    blur_probability=0.0, noise_probability=0.0, fourier_probability=0.0,
)  # fmt: skip


def abdomen(shape=(16, 24, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    """A hand-made ``(1, 1, z, y, x)`` HU volume and its ``(1, z, y, x)`` labels: fat, muscle, liver, aorta."""
    image = torch.full((1, 1, *shape), -100.0)  # fat
    labels = torch.zeros((1, *shape), dtype=torch.long)
    image[..., 4:20, 4:20] = 50.0  # muscle and viscera, background label
    image[..., 6:14, 6:12] = 110.0
    labels[..., 6:14, 6:12] = LIVER
    image[..., 14:18, 14:18] = 160.0
    labels[..., 14:18, 14:18] = AORTA
    return image, labels


def z_mean(normalised: torch.Tensor, labels: torch.Tensor, organ: int) -> float:
    return float(normalised[0, 0][labels[0] == organ].mean())


def test_a_global_shift_and_scale_are_undone_by_the_z_score():
    image, labels = abdomen()
    before, after = normalize_hu(image), normalize_hu(image * 1.1 + 20.0)
    for organ in (LIVER, AORTA):
        assert abs(z_mean(after, labels, organ) - z_mean(before, labels, organ)) < 0.01


def test_organ_contrast_survives_the_z_score_by_the_intended_amount():
    image, labels = abdomen()
    generator = torch.Generator().manual_seed(0)
    before = normalize_hu(image)
    vessels_only = replace(ONLY_ORGAN_CONTRAST, organ_contrast_hu=0.0)  # the liver stays: one change to follow
    moves = []
    for _ in range(20):
        augmented = augment_intensity(image, labels, vessels_only, generator)
        shift_hu = float((augmented - image)[0, 0][labels[0] == AORTA].mean())
        assert abs(shift_hu) <= vessels_only.vessel_contrast_hu
        # Intended: the aorta alone, shifted by that many HU, then normalised.
        intended_volume = normalize_hu(image + shift_hu * (labels == AORTA)[:, None])
        intended = z_mean(intended_volume, labels, AORTA) - z_mean(before, labels, AORTA)
        move = z_mean(normalize_hu(augmented), labels, AORTA) - z_mean(before, labels, AORTA)
        assert move == pytest.approx(intended, abs=1e-3)
        assert abs(move) > 0.5 * abs(shift_hu) / float(image.std())  # the z-score cancels little of it
        moves.append(abs(move))
    # As large as a contrast phase: portal venous -> arterial moves the aorta by about +0.6.
    assert max(moves) > 0.6


def test_unlabeled_volumes_get_a_per_tissue_change_the_z_score_keeps():
    image, labels = abdomen()
    config = replace(ONLY_ORGAN_CONTRAST, tissue_contrast_hu=60.0)
    generator = torch.Generator().manual_seed(3)
    before = normalize_hu(image)
    relative = []
    for _ in range(10):
        after = normalize_hu(augment_intensity(image, None, config, generator))
        relative.append(abs((z_mean(after, labels, AORTA) - z_mean(after, labels, LIVER))
                            - (z_mean(before, labels, AORTA) - z_mean(before, labels, LIVER))))  # fmt: skip
    assert max(relative) > 0.2  # aorta vs liver contrast changes without labels


def test_remap_hu_interpolates_offsets_between_knots_and_holds_them_beyond():
    image = torch.tensor([-50.0, 0.0, 50.0, 100.0, 200.0])
    out = remap_hu(image, (0.0, 100.0), torch.tensor([10.0, 30.0]))
    torch.testing.assert_close(out, torch.tensor([-40.0, 10.0, 70.0, 130.0, 230.0]))


def test_gamma_acts_inside_the_window_only():
    image = torch.tensor([-10.0, 25.0, 50.0, 150.0])
    out = apply_gamma(image, 2.0, (0.0, 100.0))
    torch.testing.assert_close(out, torch.tensor([-10.0, 6.25, 25.0, 150.0]))


def test_blur_keeps_a_constant_volume_and_spreads_a_point_symmetrically():
    constant = torch.full((1, 8, 8, 8), 7.0)
    torch.testing.assert_close(gaussian_blur(constant, 1.0), constant)
    point = torch.zeros((1, 9, 9, 9))
    point[0, 4, 4, 4] = 1.0
    blurred = gaussian_blur(point, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert blurred[0, 4, 4, 4] < 0.1
    torch.testing.assert_close(blurred, blurred.flip(1).flip(2).flip(3))


def _centre_amplitude(volume: torch.Tensor, half: int) -> torch.Tensor:
    spectrum = torch.fft.fftshift(torch.fft.fftn(volume, dim=(-3, -2, -1)), dim=(-3, -2, -1)).abs()
    c = volume.shape[-1] // 2
    return spectrum[..., c - half : c + half + 1, c - half : c + half + 1, c - half : c + half + 1]


def test_fourier_mix_swaps_the_low_frequency_amplitude_and_keeps_the_phase():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((1, 1, 16, 16, 16), generator=generator)
    source = 3 * torch.randn((1, 1, 16, 16, 16), generator=generator)
    torch.testing.assert_close(fourier_mix(image, source, torch.tensor([0.0]), 0.25), image, atol=1e-5, rtol=0)
    mixed = fourier_mix(image, source, torch.tensor([1.0]), 0.25)  # box side 4 -> centre 5^3 (half 2)
    torch.testing.assert_close(_centre_amplitude(mixed, 2), _centre_amplitude(source, 2), atol=1e-3, rtol=1e-4)
    spectrum_in = torch.fft.fftn(image, dim=(-3, -2, -1))
    spectrum_out = torch.fft.fftn(mixed, dim=(-3, -2, -1))
    strong = spectrum_in.abs() > 1e-3
    phase_change = torch.angle(spectrum_out * spectrum_in.conj())[strong]
    assert phase_change.abs().max() < 1e-3
    # Frequencies outside the box keep their amplitude (after fftshift the corner is the highest one).
    shifted_in = torch.fft.fftshift(spectrum_in, dim=(-3, -2, -1)).abs()
    shifted_out = torch.fft.fftshift(spectrum_out, dim=(-3, -2, -1)).abs()
    assert torch.allclose(shifted_out[..., 0, 0, 0], shifted_in[..., 0, 0, 0], atol=1e-4)


def test_random_fourier_mix_never_takes_a_sample_as_its_own_source():
    pool = torch.stack([torch.full((1, 8, 8, 8), float(v)) for v in range(4)])
    pool = pool + torch.randn(pool.shape, generator=torch.Generator().manual_seed(1))
    config = AugmentConfig(fourier_probability=1.0, fourier_beta=1.0)
    # A ratio of 1 over the whole spectrum would copy the source's amplitude: with its own one the
    # sample would come back unchanged. Over many draws none does.
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        images = pool[1:3]
        out = random_fourier_mix(images, pool, config, generator, offset=1)
        for i in range(2):
            assert not torch.allclose(out[i], (images[i] - images[i].mean()) / images[i].std(), atol=1e-3)
    with pytest.raises(ValueError, match="pool"):
        random_fourier_mix(pool, pool[:2], config, torch.Generator())


def test_weak_and_strong_views_share_their_geometry():
    image, labels = abdomen()
    generator = torch.Generator().manual_seed(5)
    quiet = replace(ONLY_ORGAN_CONTRAST, organ_contrast_hu=0.0, vessel_contrast_hu=0.0)
    weak, strong, sampled = augment_views(image, labels, (16, 20, 20), quiet, generator)
    torch.testing.assert_close(weak, strong, atol=1e-3, rtol=0)  # no intensity change: the same volume
    assert sampled.shape == (1, 16, 20, 20)
    # Labels stay on their organ: sampled aorta voxels carry aorta-like HU (interpolation at edges aside).
    assert float(weak[0, 0][sampled[0] == AORTA].median()) > 130
    weak, strong, _ = augment_views(image, labels, (16, 20, 20), AugmentConfig(), torch.Generator().manual_seed(5))
    assert not torch.allclose(weak, strong)


def test_unknown_fourier_sources_are_refused():
    with pytest.raises(ValueError, match="fourier_sources"):
        AugmentConfig(fourier_sources="unlabeled")


def test_spatial_augmentation_moves_image_and_labels_together():
    # each label's voxels carry a HU value of their own: after resampling they must still do
    shape = (20, 24, 24)
    labels = torch.zeros((2, *shape), dtype=torch.long)
    labels[:, 4:12, 4:14, 4:12] = LIVER
    labels[:, 10:18, 12:20, 14:22] = AORTA
    images = (labels[:, None].float() * 100.0) - 50.0  # background -50, liver 50, aorta 450
    config = replace(ONLY_ORGAN_CONTRAST, intensity_probability=0.0, spatial_probability=1.0, scale=0.15)
    for seed in range(4):
        weak, _, moved = augment_views(images, labels, (16, 20, 20), config, torch.Generator().manual_seed(seed))
        for organ in (LIVER, AORTA):
            inside = weak[:, 0][moved == organ]
            assert inside.numel() > 50 and abs(float(inside.median()) - (organ * 100.0 - 50.0)) < 1.0, (seed, organ)


def test_no_augmentation_swaps_left_and_right():
    # canonical x runs from the patient's right to left: a flip would make a right kidney a left one
    shape = (16, 16, 32)
    labels = torch.zeros((1, *shape), dtype=torch.long)
    right, left = ORGAN_IDS["right_kidney"], ORGAN_IDS["left_kidney"]
    labels[:, 4:12, 4:12, 2:10] = right
    labels[:, 4:12, 4:12, 22:30] = left
    images = labels[:, None].float() * 10.0
    config = replace(AugmentConfig(), spatial_probability=1.0, rotation_degrees=15.0, scale=0.2, jitter=0.1)
    for seed in range(20):
        _, _, moved = augment_views(images, labels, shape, config, torch.Generator().manual_seed(seed))
        x = torch.arange(shape[2], dtype=torch.float32)
        centre = {organ: float(x.expand(*shape)[moved[0] == organ].mean()) for organ in (right, left)}
        assert centre[right] < centre[left], seed
