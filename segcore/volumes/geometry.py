"""The geometry record of a volume and its canonical reorientation.

Contract: inside the pipeline a volume is a numpy array in ``(z, y, x)`` order
(the order of ``SimpleITK.GetArrayFromImage``) plus a :class:`Geometry`.
The geometry record keeps ITK's conventions, so it maps one-to-one onto the file:

* ``spacing``: voxel size in mm, ordered ``(x, y, z)``;
* ``origin``: physical position of voxel ``(0, 0, 0)`` in mm, LPS, ordered ``(x, y, z)``;
* ``direction``: the 3x3 direction cosine matrix, row-major (9 floats); column ``i``
  is the physical direction of index axis ``i`` (``x``, ``y``, ``z``).

The canonical orientation is the one whose direction matrix is closest to the identity
(LPS): array axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2
right -> left. Any scan is brought there by an axis permutation plus flips, no
resampling; :class:`Reorientation` records them so that the inverse is exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a voxel grid (ITK conventions, see the module docstring).

    Attributes:
        size: number of voxels ``(x, y, z)``.
        spacing: voxel size in mm ``(x, y, z)``.
        origin: LPS position of voxel (0, 0, 0) in mm ``(x, y, z)``.
        direction: row-major 3x3 direction cosines (9 floats).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)`` of a volume on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in array order ``(z, y, x)``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction cosines as a 3x3 array (columns = index axes x, y, z)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """LPS position in mm of (possibly fractional) voxel indices ``(..., 3)`` in x, y, z order."""
        index_xyz = np.asarray(index_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing)) @ self.direction_matrix.T

    def same_grid(self, other: Geometry, tolerance: float = 1e-4) -> bool:
        """Whether two grids coincide: same size, and spacing, origin, direction within ``tolerance``.

        The tolerance is relative to the spacing for spacing and origin (a fraction of a voxel),
        absolute for the direction cosines.
        """
        if tuple(self.size) != tuple(other.size):
            return False
        spacing, other_spacing = np.asarray(self.spacing), np.asarray(other.spacing)
        return bool(
            np.allclose(spacing, other_spacing, rtol=tolerance, atol=0)
            and np.all(np.abs(np.subtract(self.origin, other.origin)) <= tolerance * spacing.max() * 10)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )


@dataclass(frozen=True)
class Reorientation:
    """How an array was brought to the canonical orientation, and the geometry it came from.

    Attributes:
        original: geometry of the volume as read.
        axes_zyx: ``np.transpose`` order applied to the original ``(z, y, x)`` array.
        flips_zyx: for each canonical array axis, whether it was reversed after the transpose.
    """

    original: Geometry
    axes_zyx: tuple[int, int, int]
    flips_zyx: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Original ``(z, y, x)`` array (optionally with leading channel axes) -> canonical array."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes_zyx))
        flip_axes = tuple(lead + a for a, flip in enumerate(self.flips_zyx) if flip)
        return np.flip(out, axis=flip_axes) if flip_axes else out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Canonical array -> original ``(z, y, x)`` array; exact inverse of :meth:`apply`."""
        lead = array.ndim - 3
        flip_axes = tuple(lead + a for a, flip in enumerate(self.flips_zyx) if flip)
        out = np.flip(array, axis=flip_axes) if flip_axes else array
        inverse = np.argsort(self.axes_zyx)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(a) for a in inverse))

    @property
    def canonical(self) -> Geometry:
        """Geometry of the canonical array (same physical voxels, permuted and flipped axes)."""
        original = self.original
        direction = original.direction_matrix
        # Index axes in x, y, z order: canonical x,y,z axis i comes from original axis perm_xyz[i].
        perm_xyz = [2 - self.axes_zyx[2 - i] for i in range(3)]
        flips_xyz = [self.flips_zyx[2 - i] for i in range(3)]
        columns, spacing, size = [], [], []
        corner = np.zeros(3)
        for axis, flip in zip(perm_xyz, flips_xyz):
            columns.append(-direction[:, axis] if flip else direction[:, axis])
            spacing.append(original.spacing[axis])
            size.append(original.size[axis])
            if flip:
                corner[axis] = original.size[axis] - 1
        origin = original.index_to_physical(corner)
        return Geometry(
            size=tuple(int(s) for s in size),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(float(d) + 0.0 for d in np.stack(columns, axis=1).ravel()),
        )


def canonical_reorientation(geometry: Geometry) -> Reorientation:
    """Choose the axis permutation and flips that bring a grid closest to the identity direction.

    The permutation maximises the summed absolute cosines between each index axis and the
    physical axis it is assigned to (all 6 permutations are tried), so oblique scans get
    the nearest one; flips then make every assigned cosine positive. Left-handed direction
    matrices are handled like any other (an odd number of flips).

    Args:
        geometry: the grid as read from the file.

    Returns:
        The :class:`Reorientation` to apply to the ``(z, y, x)`` array.
    """
    direction = geometry.direction_matrix
    # best[p] = index axis (x=0, y=1, z=2) that becomes physical axis p.
    best = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(abs(direction[p, perm[p]]) for p in range(3)),
    )
    # Canonical array axis a (z=0, y=1, x=2) corresponds to physical axis 2 - a.
    axes_zyx = tuple(2 - best[2 - a] for a in range(3))
    flips_zyx = tuple(bool(direction[2 - a, best[2 - a]] < 0) for a in range(3))
    return Reorientation(original=geometry, axes_zyx=axes_zyx, flips_zyx=flips_zyx)


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Reorientation]:
    """Reorient a ``(z, y, x)`` array to the canonical orientation (a view, no copy).

    Returns:
        The canonical array and the :class:`Reorientation` whose :meth:`~Reorientation.undo` inverts it.
    """
    reorientation = canonical_reorientation(geometry)
    return reorientation.apply(array), reorientation
