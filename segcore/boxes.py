"""Axis-aligned boxes on ``(z, y, x)`` arrays: organ bounding boxes, margins in mm, and their
mapping back to the original file's voxel indices.

A box is a tuple of three half-open ``(start, stop)`` pairs in array order ``(z, y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segcore.geometry import Reorientation

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


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
