"""On-device augmentation and resizing of training batches, in one resampling pass.

A random affine per sample (scale, small rotations, crop jitter) is sampled straight at the
network's input size, so resizing from the stored array size costs nothing extra. No
left-right flip: it would turn the right kidney into a left one. Intensity changes (global
shift and scale, a shift per organ, Gaussian noise) act on HU before windowing.

All randomness comes from one CPU ``torch.Generator`` (its state goes into the checkpoint,
so a resumed run draws the same augmentations as an uninterrupted one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AIR_HU = -1024.0


@dataclass
class AugmentConfig:
    """Augmentation strengths; probabilities are per sample."""

    enabled: bool = True
    spatial_probability: float = 0.8
    scale: float = 0.15
    rotation_degrees: float = 10.0
    jitter: float = 0.08
    intensity_probability: float = 0.8
    hu_shift: float = 20.0
    hu_scale: float = 0.1
    organ_hu_shift: float = 15.0
    noise_probability: float = 0.3
    noise_hu: float = 15.0


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrix ``(3, 3)`` from three angles in radians about the three axes."""
    matrices = []
    for axis, angle in enumerate(angles.tolist()):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        m = torch.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        matrices.append(m)
    return matrices[0] @ matrices[1] @ matrices[2]


def _uniform(generator: torch.Generator, low: float, high: float, size=()) -> torch.Tensor:
    return torch.rand(size, generator=generator) * (high - low) + low


def random_affines(batch: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``(N, 3, 4)`` affine matrices in ``affine_grid``'s normalised coordinates."""
    thetas = []
    for _ in range(batch):
        theta = torch.zeros(3, 4)
        theta[:, :3] = torch.eye(3)
        if config.enabled and torch.rand((), generator=generator) < config.spatial_probability:
            angles = _uniform(generator, -1, 1, (3,)) * math.radians(config.rotation_degrees)
            scale = _uniform(generator, 1 - config.scale, 1 + config.scale)
            theta[:, :3] = _rotation(angles) / scale
            theta[:, 3] = _uniform(generator, -config.jitter, config.jitter, (3,)) * 2
        thetas.append(theta)
    return torch.stack(thetas)


def resample_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    thetas: torch.Tensor,
    size_zyx: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample ``(N, 1, z, y, x)`` HU images (trilinear, air outside) and ``(N, z, y, x)`` labels
    (nearest, background outside) on affine grids of spatial size ``size_zyx``."""
    batch = images.shape[0]
    grid = F.affine_grid(thetas.to(images.device, images.dtype), [batch, 1, *size_zyx], align_corners=False)
    # Pad with air, not water: sample HU shifted so that air is 0.
    images = F.grid_sample(images - AIR_HU, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + AIR_HU
    if labels is not None:
        sampled = F.grid_sample(
            labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        labels = sampled[:, 0].round().long()
    return images, labels


def augment_intensity(
    images: torch.Tensor, labels: torch.Tensor | None, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Global HU shift and scale, per-organ HU shift, Gaussian noise; images ``(N, 1, z, y, x)`` in HU."""
    if not config.enabled:
        return images
    out = []
    for i in range(images.shape[0]):
        image = images[i]
        if torch.rand((), generator=generator) < config.intensity_probability:
            shift = _uniform(generator, -config.hu_shift, config.hu_shift).item()
            scale = _uniform(generator, 1 - config.hu_scale, 1 + config.hu_scale).item()
            image = image * scale + shift
            if labels is not None and config.organ_hu_shift > 0:
                organ_shift = _uniform(generator, -config.organ_hu_shift, config.organ_hu_shift, (256,))
                image = image + organ_shift.to(image.device)[labels[i]][None] * (labels[i] > 0)[None]
        if torch.rand((), generator=generator) < config.noise_probability:
            sigma = _uniform(generator, 0, config.noise_hu).item()
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            noise_generator = torch.Generator(image.device).manual_seed(seed)
            image = image + sigma * torch.randn(image.shape, generator=noise_generator, device=image.device)
        out.append(image)
    return torch.stack(out)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    size_zyx: Sequence[int],
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spatial then intensity augmentation of a HU batch, output at ``size_zyx``.

    Args:
        images: ``(N, 1, z, y, x)`` float HU on the training device.
        labels: ``(N, z, y, x)`` int64 class ids, or None for unlabeled data.
        size_zyx: the network's input size.
        config: strengths; ``enabled=False`` only resizes.
        generator: CPU generator for all random draws.
    """
    thetas = random_affines(images.shape[0], config, generator)
    images, labels = resample_batch(images, labels, thetas, size_zyx)
    return augment_intensity(images, labels, config, generator), labels
