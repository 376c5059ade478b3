"""The patient's body in a CT volume: what the coarse stage should look at, and nothing else.

A CT of the abdomen holds more than the patient's trunk: the table, cushions, straps, arms at
the sides, sometimes another body part. :func:`body_mask` finds the trunk as the largest
connected region of body density after an opening that cuts thin contacts (an arm resting on
the flank, the table under the back), with the air inside it (lungs, bowel gas) filled slice by
slice. :func:`keep_body` sets everything else to air, so that neither stage sees it: an arm can
neither widen the organs' box nor be taken for an organ.

Both work on the canonical ``(z, y, x)`` volume (axial slices along the first axis) on a grid
subsampled ``stride`` times (the outline does not need more), and the mask is grown by one
subsampled voxel on the way back so that the skin is never cut.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_THRESHOLD_HU = -500.0
"""Above this is body (fat, soft tissue, bone); below, air and lung."""
OPENING_MM = 6.0
"""Radius of the opening that separates arms and the table from the trunk."""
STRIDE = 4
"""Subsampling of the mask's grid (a 512 x 512 x 300 CT: 128 x 128 x 75)."""
AIR_HU = -1024.0


def _ball(radius_zyx: tuple[float, float, float]) -> np.ndarray:
    """An ellipsoidal structuring element of these radii (voxels, at least one voxel each way)."""
    radii = [max(1.0, r) for r in radius_zyx]
    grid = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radii)]
    return sum((g / r) ** 2 for g, r in zip(grid, radii)) <= 1.0


def body_mask(
    canonical_image: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    threshold_hu: float = BODY_THRESHOLD_HU,
    stride: int = STRIDE,
) -> np.ndarray | None:
    """Boolean ``(z, y, x)`` mask of the trunk, at ``canonical_image``'s shape; None without any body.

    Args:
        canonical_image: HU in the canonical orientation (axial slices along axis 0).
        spacing_zyx: its voxel size in mm.
        threshold_hu: body density.
        stride: subsampling of the mask's grid.
    """
    coarse = np.asarray(canonical_image[::stride, ::stride, ::stride]) > threshold_hu
    if not coarse.any():
        return None
    coarse_spacing = [s * stride for s in spacing_zyx]
    opened = ndimage.binary_opening(coarse, _ball(tuple(OPENING_MM / s for s in coarse_spacing)))
    if not opened.any():  # thinner than the opening everywhere: keep what there is
        opened = coarse
    components, count = ndimage.label(opened)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    trunk = components == largest
    # Back to what the threshold saw near the trunk (the opening rounded its edges), then the air inside.
    trunk = coarse & ndimage.binary_dilation(trunk, _ball(tuple(OPENING_MM / s for s in coarse_spacing)))
    for z in range(trunk.shape[0]):
        trunk[z] = ndimage.binary_fill_holes(trunk[z])
    trunk = ndimage.binary_dilation(trunk, np.ones((3, 3, 3), dtype=bool))  # one coarse voxel: never cut skin
    full = np.repeat(np.repeat(np.repeat(trunk, stride, 0), stride, 1), stride, 2)
    return full[tuple(slice(0, n) for n in canonical_image.shape)]


def keep_body(canonical_image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A copy of ``canonical_image`` with every voxel outside ``mask`` set to air (the image itself without a mask)."""
    if mask is None:
        return canonical_image
    return np.where(mask, canonical_image, np.asarray(AIR_HU, dtype=canonical_image.dtype))
