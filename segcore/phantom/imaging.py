"""From a tissue map to a CT image: CT numbers, partial-volume blur, correlated noise, int16.

Noise is added before the blur, so that it comes out spatially correlated like reconstructed
CT noise; its amplitude is raised by the blur's exact noise gain, so the final standard
deviation is the domain's ``noise_sigma_hu``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from scipy import ndimage

from segcore.phantom.tissues import HU_MAX, HU_MIN, PhantomDomain

PARTIAL_VOLUME_SIGMA_VOXELS = 0.4
"""Blur (voxels) standing in for the averaging over each voxel's extent (a box of width 1 has sd 0.29)."""
KERNEL_TRUNCATE = 2.5
Z_CHUNK = 16
FWHM_PER_SIGMA = 2.3548


def blur_kernels(domain: PhantomDomain, spacing_zyx: tuple[float, float, float]) -> list[np.ndarray]:
    """One normalised 1-D Gaussian per array axis ``(z, y, x)``: scanner PSF plus partial volume."""
    kernels = []
    for axis, spacing in enumerate(spacing_zyx):
        sigma = float(np.hypot(domain.blur_mm / spacing, PARTIAL_VOLUME_SIGMA_VOXELS))
        if axis == 0 and domain.slice_mm > 0:  # a thick slice: its profile (FWHM = thickness) along z
            sigma = float(np.hypot(sigma, domain.slice_mm / FWHM_PER_SIGMA / spacing))
        radius = max(1, int(np.ceil(KERNEL_TRUNCATE * sigma)))
        offsets = np.arange(-radius, radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
        kernels.append((kernel / kernel.sum()).astype(np.float32))
    return kernels


def bias_field(shape: tuple[int, int, int], amplitude_hu: float, seed: np.random.SeedSequence) -> list[np.ndarray]:
    """A smooth additive inhomogeneity, separable: one slow cosine per axis (``(z,)``, ``(y,)``,
    ``(x,)`` float32 profiles whose sum peaks near ``amplitude_hu``), from the noise stream's own child."""
    rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, 1 << 20)))
    weights = rng.dirichlet(np.ones(3)) * amplitude_hu
    profiles = []
    for size, weight in zip(shape, weights, strict=True):
        t = np.linspace(0.0, 1.0, size, dtype=np.float64)
        cycles, phase = rng.uniform(0.25, 1.0), rng.uniform(0.0, 2 * np.pi)
        profiles.append((weight * np.cos(2 * np.pi * cycles * t + phase)).astype(np.float32))
    return profiles


def noise_gain(kernels: list[np.ndarray]) -> float:
    """Standard deviation of white unit noise after the separable blur."""
    return float(np.prod([np.sqrt(np.sum(kernel.astype(np.float64) ** 2)) for kernel in kernels]))


def render(
    tissue: np.ndarray,
    hu_table: np.ndarray,
    domain: PhantomDomain,
    spacing_zyx: tuple[float, float, float],
    seed: np.random.SeedSequence,
    threads: int = 1,
) -> np.ndarray:
    """The CT image of a tissue map.

    Args:
        tissue: uint8 ``(z, y, x)`` tissue codes.
        hu_table: float32 CT number (HU) of each code (:func:`~segcore.phantom.tissues.hu_lookup`).
        domain: blur and noise settings.
        spacing_zyx: voxel size in mm in array order.
        seed: the case's noise stream; block ``i`` of :data:`Z_CHUNK` slices draws from its
            child ``i``, so the image does not depend on ``threads``.
        threads: worker threads (numpy and scipy release the GIL in these loops).

    Returns:
        int16 ``(z, y, x)`` HU, clipped to the scanner range.
    """
    kernels = blur_kernels(domain, spacing_zyx)
    raw_sigma = np.float32(domain.noise_sigma_hu / noise_gain(kernels))
    image = np.empty(tissue.shape, dtype=np.float32)
    out = np.empty(tissue.shape, dtype=np.int16)
    starts = range(0, tissue.shape[0], Z_CHUNK)

    field = bias_field(tissue.shape, domain.bias_hu, seed) if domain.bias_hu > 0 else None

    def fill(start: int) -> None:
        # Block by block, so that the noise never needs a second full-size float array.
        block = image[start : start + Z_CHUNK]
        np.take(hu_table, tissue[start : start + Z_CHUNK], out=block)
        if field is not None:
            block += field[0][start : start + Z_CHUNK, None, None] + field[1][None, :, None] + field[2][None, None, :]
        if raw_sigma > 0:
            key = (*seed.spawn_key, start // Z_CHUNK)
            rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=key))
            noise = rng.standard_normal(block.shape, dtype=np.float32)
            noise *= raw_sigma
            block += noise

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(fill, starts))
        for axis, kernel in enumerate(kernels):
            list(pool.map(partial(_blur, image, axis, kernel), _parts(image.shape, axis, threads)))
        list(pool.map(partial(_store, image, out), starts))
    return out


def _blur(image: np.ndarray, axis: int, kernel: np.ndarray, part: tuple[slice, ...]) -> None:
    view = image[part]
    # In place: scipy buffers each line before writing it back.
    ndimage.correlate1d(view, kernel, axis=axis, output=view, mode="nearest")


def _store(image: np.ndarray, out: np.ndarray, start: int) -> None:
    """Round and clip one block of slices into the int16 output."""
    block = image[start : start + Z_CHUNK]
    np.rint(block, out=block)
    np.clip(block, HU_MIN, HU_MAX, out=block)
    out[start : start + Z_CHUNK] = block


def _parts(shape: tuple[int, ...], axis: int, count: int) -> list[tuple[slice, ...]]:
    """Split an array into ``count`` slabs along an axis other than ``axis`` (the one being filtered)."""
    across = 1 if axis == 0 else 0
    edges = np.linspace(0, shape[across], max(1, count) + 1).astype(int)
    parts = []
    for low, high in zip(edges[:-1], edges[1:]):
        part = [slice(None)] * len(shape)
        part[across] = slice(int(low), int(high))
        parts.append(tuple(part))
    return parts
