"""On-device augmentation and resizing of training batches, in one resampling pass.

A random affine per sample (scale, small rotations, crop jitter) is sampled straight at the
network's input size, so resizing from the stored array size costs nothing extra. No
left-right flip: it would turn the right kidney into a left one.

Intensity changes act on HU before the window and the per-volume z-score, and are chosen so
that the z-score cannot undo them (a global HU shift or scale is undone almost entirely; it is
kept only because it is harmless). They are as large as the change between contrast phases
(portal venous -> arterial moves the aorta by about +120 HU, the IVC by -60 HU):

* ``organ_contrast_hu`` / ``vessel_contrast_hu``: a shift per organ drawn from ±this (vessels and
  kidneys take the larger range), labeled samples only;
* ``tissue_contrast_hu``: a random piecewise-linear remapping of the HU scale (knots every
  50-100 HU from -200 to 300 HU, each moved by ±this): tissue classes by HU range, so it works
  on unlabeled samples too;
* ``gamma``: windowed intensity ``v in [0, 1] -> v ** g``, ``g`` log-uniform in ``[1/(1+gamma), 1+gamma]``;
* ``blur_sigma``: a Gaussian blur of sigma 0.5..this voxels (reconstruction kernels);
* ``noise_hu``: Gaussian noise of sigma 0..this HU (dose).

After normalisation, :func:`fourier_mix` (seed 002, Yao et al., AAAI 2022) replaces the
low-frequency amplitude spectrum of a sample by a mix with another volume's (phase kept), a
change of "style" that keeps the anatomy.

Weak and strong views (:func:`augment_views`) share one resampling, so they share their geometry
and a pseudo-label made on one view is aligned with the other without warping.

All randomness comes from one CPU ``torch.Generator`` (its state goes into the checkpoint,
so a resumed run draws the same augmentations as an uninterrupted one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import ConfigDict

from segcore.labels import HU_WINDOW, ORGAN_IDS

AIR_HU = -1024.0
VESSELS_AND_KIDNEYS = tuple(ORGAN_IDS[name] for name in ("aorta", "ivc", "right_kidney", "left_kidney"))
"""Organs whose CT number changes most between contrast phases."""
TISSUE_KNOTS_HU = (-200.0, -100.0, 0.0, 50.0, 100.0, 150.0, 200.0, 300.0)
"""Knots of the random HU remapping: fat, fluid, soft tissue, enhanced tissue, vessels, bone."""
FOURIER_SOURCES = ("labeled", "all", "auto")


@dataclass
class AugmentConfig:
    """Augmentation strengths; probabilities are per sample.

    ``fourier_sources``: where amplitude spectra come from, ``labeled`` (the labeled batch) or
    ``all`` (labeled and unlabeled batches; semi-supervised steps only); ``auto``: ``all`` for the
    CPS methods with pseudo-labels (``semi.weight`` > 0), else ``labeled`` (resolved by the stage config).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # validated by segcore.training.config

    enabled: bool = True
    spatial_probability: float = 0.8
    scale: float = 0.15
    rotation_degrees: float = 10.0
    jitter: float = 0.08
    intensity_probability: float = 0.8
    hu_shift: float = 20.0
    hu_scale: float = 0.1
    organ_contrast_hu: float = 60.0
    vessel_contrast_hu: float = 120.0
    tissue_contrast_hu: float = 40.0
    gamma: float = 0.3
    blur_probability: float = 0.2
    blur_sigma: float = 1.0
    noise_probability: float = 0.5
    noise_hu: float = 40.0
    fourier_probability: float = 0.5
    fourier_beta: float = 0.15
    fourier_sources: str = "auto"

    def __post_init__(self) -> None:
        if self.fourier_sources not in FOURIER_SOURCES:
            raise ValueError(f"augment.fourier_sources={self.fourier_sources!r}: expected one of {FOURIER_SOURCES}")


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


def _chance(generator: torch.Generator, probability: float) -> bool:
    return bool(torch.rand((), generator=generator) < probability)


def random_affines(batch: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``(N, 3, 4)`` affine matrices in ``affine_grid``'s normalised coordinates."""
    thetas = []
    for _ in range(batch):
        theta = torch.zeros(3, 4)
        theta[:, :3] = torch.eye(3)
        if config.enabled and _chance(generator, config.spatial_probability):
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


def organ_shifts(config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``(256,)`` HU shift per label id (0 for background): ±``vessel_contrast_hu`` for vessels and
    kidneys, ±``organ_contrast_hu`` for the other organs."""
    ranges = torch.full((256,), config.organ_contrast_hu)
    ranges[list(VESSELS_AND_KIDNEYS)] = config.vessel_contrast_hu
    ranges[0] = 0.0
    return _uniform(generator, -1, 1, (256,)) * ranges


def remap_hu(image: torch.Tensor, knots_hu: Sequence[float], offsets_hu: torch.Tensor) -> torch.Tensor:
    """Add to each voxel the piecewise-linear interpolation of ``offsets_hu`` at ``knots_hu``
    (constant beyond the end knots): a separate shift per HU range, i.e. per tissue class."""
    knots = torch.tensor(knots_hu, dtype=image.dtype, device=image.device)
    offsets = offsets_hu.to(image)
    index = torch.bucketize(image, knots).clamp(1, len(knots_hu) - 1)
    low, high = knots[index - 1], knots[index]
    t = ((image - low) / (high - low)).clamp(0, 1)
    return image + offsets[index - 1] + t * (offsets[index] - offsets[index - 1])


def apply_gamma(image: torch.Tensor, gamma: float, window: tuple[float, float]) -> torch.Tensor:
    """``v -> v ** gamma`` on the windowed intensity ``v in [0, 1]``; HU outside the window unchanged."""
    low, high = window
    inside = (image > low) & (image < high)
    unit = ((image - low) / (high - low)).clamp(0, 1)
    return torch.where(inside, low + unit.pow(gamma) * (high - low), image)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(1, z, y, x)`` volume, sigma in voxels, edges replicated."""
    radius = max(1, math.ceil(2.5 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = image[None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0]


def augment_intensity(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    config: AugmentConfig,
    generator: torch.Generator,
    window: tuple[float, float] = HU_WINDOW,
) -> torch.Tensor:
    """Contrast, gamma, blur and noise on HU images ``(N, 1, z, y, x)``; ``labels`` ``(N, z, y, x)`` or None."""
    if not config.enabled:
        return images
    out = []
    for i in range(images.shape[0]):
        image = images[i]
        if _chance(generator, config.intensity_probability):
            shift = _uniform(generator, -config.hu_shift, config.hu_shift).item()
            scale = _uniform(generator, 1 - config.hu_scale, 1 + config.hu_scale).item()
            image = image * scale + shift
            if labels is not None:
                image = image + organ_shifts(config, generator).to(image.device)[labels[i]][None]
            offsets = _uniform(generator, -1, 1, (len(TISSUE_KNOTS_HU),)) * config.tissue_contrast_hu
            image = remap_hu(image, TISSUE_KNOTS_HU, offsets)
            log_gamma = _uniform(generator, -1, 1).item() * math.log1p(config.gamma)
            image = apply_gamma(image, math.exp(log_gamma), window)
        if _chance(generator, config.blur_probability):
            image = gaussian_blur(image, _uniform(generator, 0.5, max(0.5, config.blur_sigma)).item())
        if _chance(generator, config.noise_probability):
            sigma = _uniform(generator, 0, config.noise_hu).item()
            seed = int(torch.randint(0, 2**62, (), generator=generator))
            noise_generator = torch.Generator(image.device).manual_seed(seed)
            image = image + sigma * torch.randn(image.shape, generator=noise_generator, device=image.device)
        out.append(image)
    return torch.stack(out)


def augment_views(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    size_zyx: Sequence[int],
    config: AugmentConfig,
    generator: torch.Generator,
    window: tuple[float, float] = HU_WINDOW,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A weak and a strong view of a HU batch on one shared geometry, output at ``size_zyx``.

    Args:
        images: ``(N, 1, z, y, x)`` float HU on the training device.
        labels: ``(N, z, y, x)`` int64 class ids, or None for unlabeled data.
        size_zyx: the network's input size.
        config: strengths; ``enabled=False`` only resizes.
        generator: CPU generator for all random draws.
        window: the HU window (gamma acts inside it).

    Returns:
        ``(weak, strong, labels)``: weak is only resampled (spatial augmentation), strong adds
        the intensity augmentation; both in HU.
    """
    thetas = random_affines(images.shape[0], config, generator)
    weak, labels = resample_batch(images, labels, thetas, size_zyx)
    return weak, augment_intensity(weak, labels, config, generator, window), labels


def fourier_mix(images: torch.Tensor, sources: torch.Tensor, ratios: torch.Tensor, beta: float) -> torch.Tensor:
    """Mix the low-frequency amplitude spectrum of ``images`` with that of ``sources``, phase kept.

    Args:
        images, sources: ``(N, 1, z, y, x)`` float volumes of one shape (normalised intensities).
        ratios: ``(N,)`` share of the source's amplitude, 0 (unchanged) .. 1 (source's amplitude).
        beta: side of the mixed central box of the (shifted) spectrum, as a share of each axis.

    Returns:
        The mixed volumes, float32, same shape.
    """
    dims = (-3, -2, -1)
    spectrum = torch.fft.fftshift(torch.fft.fftn(images.float(), dim=dims), dim=dims)
    source_amplitude = torch.fft.fftshift(torch.fft.fftn(sources.float(), dim=dims), dim=dims).abs()
    amplitude, phase = spectrum.abs(), spectrum.angle()
    box = []
    for size in images.shape[-3:]:
        half = max(1, round(beta * size)) // 2
        centre = size // 2
        box.append(slice(centre - half, centre + half + 1))
    ratio = ratios.to(amplitude).view(-1, 1, 1, 1, 1)
    mixed = amplitude.clone()
    region = (..., *box)
    mixed[region] = (1 - ratio) * amplitude[region] + ratio * source_amplitude[region]
    mixed_spectrum = torch.polar(mixed, phase)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed_spectrum, dim=dims), dim=dims).real


def random_fourier_mix(
    images: torch.Tensor, pool: torch.Tensor, config: AugmentConfig, generator: torch.Generator, offset: int = 0
) -> torch.Tensor:
    """:func:`fourier_mix` with ``fourier_probability`` per sample, the source drawn from ``pool``
    ``(M, 1, z, y, x)``, never the sample itself (``images[i]`` is ``pool[offset + i]``), and the
    ratio uniform in [0, 1]; mixed samples are z-scored again."""
    if not config.enabled or config.fourier_probability <= 0 or pool.shape[0] < 2:
        return images
    count = images.shape[0]
    if offset < 0 or offset + count > pool.shape[0]:
        raise ValueError(f"images[i] must be pool[{offset} + i]: pool of {pool.shape[0]}, {count} images")
    chosen = torch.rand(count, generator=generator) < config.fourier_probability
    picks = torch.randint(0, pool.shape[0] - 1, (count,), generator=generator)
    own = torch.arange(count) + offset
    picks = picks + (picks >= own).long()  # skip the sample's own index
    ratios = torch.rand(count, generator=generator) * chosen
    if not chosen.any():
        return images
    mixed = fourier_mix(images, pool[picks.to(pool.device)], ratios, config.fourier_beta)
    dims = (-3, -2, -1)
    mixed = (mixed - mixed.mean(dims, keepdim=True)) / mixed.std(dims, keepdim=True).clamp_min(1e-3)
    return torch.where(chosen.to(images.device).view(-1, 1, 1, 1, 1), mixed, images)
