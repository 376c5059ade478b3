"""The patient's body in a CT volume: what the coarse stage should look at, and nothing else.

A CT of the abdomen holds more than the patient's trunk: the table, cushions, straps, arms at
the sides, sometimes another body part. :func:`body_mask` finds the trunk as the largest
connected region of body density after an opening that cuts thin contacts (an arm resting on
the flank, the table under the back), with the air inside it (lungs, bowel gas) filled slice by
slice. :func:`keep_body` sets everything else to air, so that neither stage sees it: an arm can
neither widen the organs' box nor be taken for an organ.

Both work on the canonical ``(z, y, x)`` volume (axial slices along the first axis); the mask is
found on a grid of about 4 mm (the outline does not need more) and grown by one of its voxels on
the way back, so that the skin is never cut.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_THRESHOLD_HU = -500.0
"""Above this is body (fat, soft tissue, bone); below, air and lung."""
OPENING_MM = 6.0
"""Radius of the opening that separates arms and the table from the trunk."""
GRID_MM = 4.0
"""The mask's grid: every axis subsampled to about this voxel size (never below the scan's)."""
FOREIGN_SHARE = 0.01
"""An opened component this share of the trunk's size or larger is something else (an arm, the
table); smaller ones are pieces of the trunk the opening cut off (a thin chest wall)."""
AIR_HU = -1024.0


def _ball(radius_zyx: tuple[float, float, float]) -> np.ndarray:
    """An ellipsoidal structuring element of these radii (voxels, at least one voxel each way)."""
    radii = [max(1.0, r) for r in radius_zyx]
    grid = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grid, radii)) <= 1.0


def _filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes of every axial slice filled (lungs, bowel gas)."""
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def body_mask(
    canonical_image: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    threshold_hu: float = BODY_THRESHOLD_HU,
) -> np.ndarray | None:
    """Boolean ``(z, y, x)`` mask of the trunk, at ``canonical_image``'s shape; None without any body.

    On a grid of about :data:`GRID_MM`: the voxels above ``threshold_hu``; an opening of
    :data:`OPENING_MM` splits them into the trunk (the largest part), other large parts (arms,
    the table) and fragments; every dense voxel belongs to the part nearest to it, so a thin
    wall the opening erased stays with the trunk and an arm resting on the flank goes with the
    arm; the trunk is then what its part holds, connected, with each axial slice's holes filled.

    Args:
        canonical_image: HU in the canonical orientation (axial slices along axis 0).
        spacing_zyx: its voxel size in mm.
        threshold_hu: body density.
    """
    strides = [max(1, round(GRID_MM / s)) for s in spacing_zyx]
    coarse = np.asarray(canonical_image[:: strides[0], :: strides[1], :: strides[2]]) > threshold_hu
    if not coarse.any():
        return None
    coarse_spacing = [s * k for s, k in zip(spacing_zyx, strides)]
    opened = ndimage.binary_opening(coarse, _ball(tuple(OPENING_MM / s for s in coarse_spacing)))
    parts, count = ndimage.label(opened if opened.any() else coarse)
    sizes = np.bincount(parts.ravel())
    largest = int(np.argmax(sizes[1:])) + 1
    foreign = [p for p in range(1, count + 1) if p != largest and sizes[p] >= FOREIGN_SHARE * sizes[largest]]
    if foreign:
        nearest = ndimage.distance_transform_edt(parts == 0, sampling=coarse_spacing, return_indices=True)[1]
        owner = parts[tuple(nearest)]
        candidates = coarse & ~np.isin(owner, foreign)
    else:
        candidates = coarse
    pieces, _ = ndimage.label(candidates)
    kept = np.unique(pieces[(parts == largest) & candidates])
    trunk = _filled(np.isin(pieces, kept[kept > 0]))
    trunk = ndimage.binary_dilation(trunk, np.ones((3, 3, 3), dtype=bool))  # one grid voxel: never cut skin
    for axis, stride in enumerate(strides):
        trunk = np.repeat(trunk, stride, axis)
    return trunk[tuple(slice(0, n) for n in canonical_image.shape)]


def keep_body(canonical_image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A copy of ``canonical_image`` with every voxel outside ``mask`` set to air (the image itself without a mask)."""
    if mask is None:
        return canonical_image
    return np.where(mask, canonical_image, np.asarray(AIR_HU, dtype=canonical_image.dtype))
