"""Axis-aligned boxes on ``(z, y, x)`` arrays: organ bounding boxes, margins in mm, and their
mapping back to the original file's voxel indices.

A box is a tuple of three half-open ``(start, stop)`` pairs in array order ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segcore.volumes.geometry import Reorientation

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

DEFAULT_MARGIN_MM = 20.0
"""Margin added on every side of the organs' box before the fine crop (data preparation and inference alike)."""


def foreground_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the non-zero voxels of a ``(z, y, x)`` array, or None when there are none."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        if present.size == 0:
            return None
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def expand_box(box: Box, margin_mm: float, spacing_zyx: Sequence[float], shape_zyx: Sequence[int]) -> Box:
    """Grow a box by ``margin_mm`` on every side (rounded up to whole voxels), clipped to the array."""
    grown = []
    for (start, stop), spacing, size in zip(box, spacing_zyx, shape_zyx):
        margin = int(np.ceil(margin_mm / spacing))
        grown.append((max(0, start - margin), min(int(size), stop + margin)))
    return tuple(grown)


def scale_box(box: Box, from_shape_zyx: Sequence[int], to_shape_zyx: Sequence[int]) -> Box:
    """Map a box on one grid to the smallest box covering the same extent on another grid of the same field of view.

    Voxel ``i`` of an axis of ``n`` voxels covers ``[i, i + 1) * m / n`` on the axis of ``m`` voxels (the
    ``align_corners=False`` convention of the resizes in :mod:`segcore.volumes.resample`), so a box found on a
    coarse grid maps to whole fine-grid voxels that hold all of it.
    """
    scaled = []
    for (start, stop), source, target in zip(box, from_shape_zyx, to_shape_zyx):
        source, target = int(source), int(target)
        # Integer floor / ceiling division: exact, no rounding at box edges.
        scaled.append((max(0, start * target // source), min(target, -(-stop * target // source))))
    return tuple(scaled)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The part of a ``(..., z, y, x)`` array inside ``box`` (a view)."""
    return array[(..., *(slice(start, stop) for start, stop in box))]


def box_to_original(box: Box, reorientation: Reorientation) -> list[list[int]]:
    """A canonical-array box as half-open voxel ranges of the original file.

    Returns:
        ``[[x0, x1], [y0, y1], [z0, z1]]`` in ITK axis order.
    """
    original_zyx: list[list[int]] = [[0, 0], [0, 0], [0, 0]]
    shape = reorientation.original.shape_zyx
    for canonical_axis, original_axis in enumerate(reorientation.axes_zyx):
        start, stop = box[canonical_axis]
        if reorientation.flips_zyx[canonical_axis]:
            start, stop = shape[original_axis] - stop, shape[original_axis] - start
        original_zyx[original_axis] = [int(start), int(stop)]
    return original_zyx[::-1]
