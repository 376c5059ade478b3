"""Segmentation metrics of the FLARE22 challenge: Dice (DSC) and normalized surface Dice (NSD).

:func:`score_case` follows the official evaluation script ``FLARE22_DSC_NSD_Eval.py``
(github.com/JunMa11/FLARE) organ by organ:

* both masks empty -> DSC 1, NSD 1; exactly one empty -> DSC 0, NSD 0;
* aorta, IVC and esophagus are scored only on the slices where the ground truth holds
  that organ (see :func:`scored_slices`);
* NSD is the surface Dice at the organ's tolerance (:data:`TOLERANCE_MM`).

Where it differs from the official script: an organ the ground truth holds on a single slice
of a z-range organ is scored on that slice (the script fails there), and ``nsd_min_dsc`` (off
by default, as in the script) can set NSD to 0 below a DSC (:data:`NSD_MIN_DSC`).

:func:`surface_dice` is the surface Dice at tolerance of DeepMind's ``surface-distance``
package (Nikolov et al., 2018), which the official script uses: surface elements are the
marching-cubes faces of every 2x2x2 voxel neighbourhood, weighted by their area in mm²,
and a surface element counts as overlapping when its distance to the other surface is
within the tolerance. All arrays here are ``(z, y, x)`` and spacings are in mm in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from segcore.labels import ORGANS

TOLERANCE_MM: dict[int, float] = {
    1: 5.0,  # liver
    2: 3.0,  # right kidney
    3: 3.0,  # spleen
    4: 5.0,  # pancreas
    5: 2.0,  # aorta
    6: 2.0,  # IVC
    7: 2.0,  # right adrenal gland
    8: 2.0,  # left adrenal gland
    9: 2.0,  # gallbladder
    10: 3.0,  # esophagus
    11: 5.0,  # stomach
    12: 7.0,  # duodenum
    13: 3.0,  # left kidney
}
"""Organ id -> NSD tolerance in mm, as in the FLARE22 evaluation."""

Z_RANGE_ORGANS: frozenset[int] = frozenset({5, 6, 10})
"""Organs scored only within the ground truth's slice range (aorta, IVC, esophagus): their
annotations stop at arbitrary slices, so prediction beyond them is not counted as error."""

NSD_MIN_DSC = 0.2
"""A DSC below which NSD may be set to 0 (``score_case(..., nsd_min_dsc=NSD_MIN_DSC)``): a
prediction that barely overlaps the organ can still lie near parts of its surface and earn
surface credit for it. The FLARE22 script has no such rule (the default, 0, follows it); the
FLARE23 script applies it below DSC 0.1; ``experiments.ssl_gain`` uses 0.2."""

# Marching-cubes surface of each 2x2x2 neighbourhood code, from DeepMind's surface-distance
# lookup table (Apache-2.0), the table the FLARE evaluation relies on: using the very same
# triangulation is what makes the areas, and so NSD, identical to the official figures.
# One entry per code 0..127, triangles separated by ".", each triangle given by the absolute
# values of its area-scaled normal times 8 along axes (0, 1, 2) ("-": no surface). Only
# magnitudes are kept because only the area is used; codes 128..255 are the complements of
# 127..0 and have the same surface.
_TRIANGLE_NORMALS_X8 = (
    "- 111 111 220.220 111 202.202 111.111 400.222.111 111 111.111 202.202 400.222.111 220.220 "
    "400.222.111 400.222.111 400.400 111 022.022 111.111 040.222.111 111.111 004.222.111 111.111.111 "
    "111.222.222.111 111.111 022.022.111 202.202.111 111.333.022.202 111.220.220 333.022.111.220 "
    "400.111.222.111 400.111.222 111 111.111 022.022 040.111.222 111.111 111.202.202 022.022.111 "
    "333.022.111.202 111.111 111.111.111 004.222.111 222.222.111.111 111.220.220 400.222.111.111 "
    "022.333.111.220 400.222.111 220.220 040.222.111 040.111.222 040.040 220.220.111 333.202.111.220 "
    "111.040.222.111 040.222.111 111.220.220 040.222.111.111 333.220.111.202 040.222.111 220.220.220.220 "
    "220.220.111 111.220.220 220.220 111 111.111 111.111 111.220.220 022.022 004.222.111 022.022.111 "
    "333.022.111.220 111.111 111.111.111 111.202.202 400.222.111.111 040.222.111 222.222.111.111 "
    "202.333.022.111 400.222.111 202.202 004.222.111 111.202.202 202.333.220.111 004.222.111 004.004 "
    "111.111.222.004 111.222.004 202.202.111 004.222.111.111 202.202.202.202 111.202.202 202.333.220.111 "
    "004.222.111 111.202.202 202.202 111.111 111.111.111 111.022.022 040.111.222.111 022.022.111 "
    "004.222.111.111 022.022.022.022 022.022.111 111.111.111 111.111.111.111 004.222.111.111 111.111.111 "
    "040.222.111.111 111.111.111 022.022.111 111.111 400.222.111 222.111.222.111 333.022.111.202 "
    "040.222.111 333.220.022.111 111.222.004 111.022.022 022.022 400.222.111.111 111.111.111 202.202.111 "
    "111.111 220.220.111 111.111 111.111 111"
)


@dataclass(frozen=True)
class OrganScore:
    """DSC and NSD of one organ in one case, both in [0, 1]."""

    dsc: float
    nsd: float


@dataclass(frozen=True)
class SurfaceDistances:
    """Surface elements of two masks and their distances to the other mask's surface.

    Attributes:
        distances_gt_to_pred: distance in mm from each ground-truth surface element to the
            predicted surface (``inf`` where the prediction has no surface).
        distances_pred_to_gt: the same from each predicted surface element to the ground truth.
        areas_gt: area in mm² of each ground-truth surface element (same order).
        areas_pred: area in mm² of each predicted surface element (same order).
    """

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    areas_gt: np.ndarray
    areas_pred: np.ndarray


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1 when both are empty (FLARE22 convention)."""
    total = int(np.count_nonzero(gt)) + int(np.count_nonzero(pred))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(gt & pred)) / total


def surface_area_table(spacing_mm: Sequence[float]) -> np.ndarray:
    """Area in mm² of the surface inside a 2x2x2 neighbourhood, for each of the 256 codes.

    Args:
        spacing_mm: voxel size along array axes (0, 1, 2), e.g. ``(z, y, x)``.

    Returns:
        Read-only ``(256,)`` float64 array indexed by neighbourhood code (see
        :func:`_neighbourhood_codes`).
    """
    return _surface_area_table(tuple(float(s) for s in spacing_mm))


@lru_cache(maxsize=64)
def _surface_area_table(spacing_mm: tuple[float, ...]) -> np.ndarray:
    s0, s1, s2 = spacing_mm
    # A triangle scaled by diag(s0, s1, s2) has its normal scaled by the cofactors.
    cofactors = np.array([s1 * s2, s0 * s2, s0 * s1])
    half = np.zeros(128)
    for code, entry in enumerate(_TRIANGLE_NORMALS_X8.split(" ")):
        if entry != "-":
            normals = np.array([[int(digit) for digit in triangle] for triangle in entry.split(".")]) / 8.0
            half[code] = np.linalg.norm(normals * cofactors, axis=1).sum()
    table = np.concatenate([half, half[::-1]])
    table.setflags(write=False)
    return table


def _neighbourhood_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every 2x2x2 neighbourhood of a mask padded by one empty voxel on each side.

    Returns a uint8 array one larger than ``mask`` along each axis: entry ``(i, j, k)`` sits at
    the voxel corner shared by voxels ``(i-1..i, j-1..j, k-1..k)`` of ``mask``; the voxel at
    offset ``(a, b, c)`` in {0, 1}³ sets bit ``7 - (4a + 2b + c)``, DeepMind's encoding.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    shape = tuple(n + 1 for n in mask.shape)
    codes = np.zeros(shape, np.uint8)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                corner = padded[a : a + shape[0], b : b + shape[1], c : c + shape[2]]
                codes |= corner << np.uint8(7 - (4 * a + 2 * b + c))
    return codes


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    return boxes[0] if boxes else None


def surface_distances(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float]) -> SurfaceDistances:
    """Surface elements of both masks with their areas and distances to the other surface.

    Works on the bounding box of ``gt | pred`` padded by one voxel: the surfaces lie inside
    it, so distances between them are the same as on the whole volume.

    Args:
        gt: ``(z, y, x)`` boolean ground-truth mask.
        pred: boolean predicted mask on the same grid.
        spacing_mm: voxel size in mm in array order ``(z, y, x)``.

    Returns:
        The :class:`SurfaceDistances`; its arrays are empty for a mask without surface.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"masks differ in shape: {gt.shape} vs {pred.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    box = _bounding_box(gt | pred)
    if box is None:
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    codes_gt = _neighbourhood_codes(gt[box])
    codes_pred = _neighbourhood_codes(pred[box])
    # Corners whose neighbourhood is neither all outside (0) nor all inside (255) carry surface.
    border_gt = (codes_gt != 0) & (codes_gt != 255)
    border_pred = (codes_pred != 0) & (codes_pred != 255)
    areas = surface_area_table(spacing)
    return SurfaceDistances(
        distances_gt_to_pred=_distances_to(border_pred, border_gt, spacing),
        distances_pred_to_gt=_distances_to(border_gt, border_pred, spacing),
        areas_gt=areas[codes_gt[border_gt]],
        areas_pred=areas[codes_pred[border_pred]],
    )


def _distances_to(surface: np.ndarray, points: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance in mm from each ``points`` corner to the nearest ``surface`` corner."""
    if not surface.any():
        return np.full(int(np.count_nonzero(points)), np.inf)
    return ndimage.distance_transform_edt(~surface, sampling=spacing)[points]


def surface_dice(gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice at tolerance (NSD) of two boolean ``(z, y, x)`` masks.

    The area of both surfaces lying within ``tolerance_mm`` of the other surface, over the
    total area of both. 1 when both masks are empty, 0 when exactly one is (FLARE22 convention).

    Args:
        gt: ground-truth mask.
        pred: predicted mask on the same grid.
        spacing_mm: voxel size in mm in array order ``(z, y, x)``.
        tolerance_mm: largest distance in mm at which surface counts as overlapping.
    """
    distances = surface_distances(gt, pred, spacing_mm)
    total = distances.areas_gt.sum() + distances.areas_pred.sum()
    if total == 0:
        return 1.0
    overlap = (
        distances.areas_gt[distances.distances_gt_to_pred <= tolerance_mm].sum()
        + distances.areas_pred[distances.distances_pred_to_gt <= tolerance_mm].sum()
    )
    return float(overlap / total)


def scored_slices(gt_organ_box: tuple[slice, ...]) -> slice:
    """Slices along array axis 0 on which a z-range organ is scored, from its ground-truth box.

    The official script indexes nibabel arrays ``(x, y, z)`` as ``[:, :, z_lower:z_upper]``
    with ``z_upper`` the *last* slice holding the organ, so that slice itself is left out (an
    exclusive bound); this is reproduced here on our axis 0, the file's third voxel axis.
    Where the organ lies on a single slice the official slice is empty (and the script
    fails); that one slice is scored instead.
    """
    z_lower, z_last = gt_organ_box[0].start, gt_organ_box[0].stop - 1
    return slice(z_lower, max(z_last, z_lower + 1))


def score_case(
    gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], nsd_min_dsc: float = 0.0
) -> dict[int, OrganScore]:
    """DSC and NSD of every FLARE22 organ in one case, by the official protocol.

    Args:
        gt: ``(z, y, x)`` ground-truth label array (FLARE22 ids, 0 background).
        pred: predicted label array on the same grid.
        spacing_mm: voxel size in mm in array order ``(z, y, x)`` (the ground truth's).
        nsd_min_dsc: NSD is 0 where DSC is below this (0, the official script: never).

    Returns:
        Organ id (1..13) -> :class:`OrganScore`.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"label arrays differ in shape: {gt.shape} vs {pred.shape}")
    if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"label arrays must hold integers, not {gt.dtype} and {pred.dtype}")
    # One pass per array finds every organ's box; masks are then built inside boxes only.
    gt_boxes = ndimage.find_objects(gt, max(ORGANS))
    pred_boxes = ndimage.find_objects(pred, max(ORGANS))
    scores = {}
    for organ in ORGANS:
        gt_box, pred_box = gt_boxes[organ - 1], pred_boxes[organ - 1]
        if gt_box is None or pred_box is None:
            both_empty = gt_box is None and pred_box is None
            scores[organ] = OrganScore(float(both_empty), float(both_empty))
            continue
        box = [slice(min(g.start, p.start), max(g.stop, p.stop)) for g, p in zip(gt_box, pred_box)]
        if organ in Z_RANGE_ORGANS:
            box[0] = scored_slices(gt_box)
        box = tuple(box)
        gt_mask, pred_mask = gt[box] == organ, pred[box] == organ
        dsc = dice(gt_mask, pred_mask)
        nsd = 0.0 if dsc < nsd_min_dsc else surface_dice(gt_mask, pred_mask, spacing_mm, TOLERANCE_MM[organ])
        scores[organ] = OrganScore(dsc, nsd)
    return scores
