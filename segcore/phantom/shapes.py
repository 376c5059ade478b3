"""Implicit shapes in patient coordinates and their evaluation on an axis-aligned voxel grid.

Every shape has a *field*: a float32 value per voxel that is ``<= 0`` inside the shape and
about ``-1`` on its core (centre of an ellipsoid, axis of a tube), so thresholds such as
``field < -0.3`` pick an inner layer (kidney medulla, stomach lumen). Shapes are evaluated
only inside their own bounding box, from separable 1-D voxel-centre coordinates, so a
shape costs in proportion to its size, never to the whole volume.

Points are ``(x, y, z)`` in mm in the patient frame (LPS axes: +x patient's left,
+y posterior, +z superior); grids and fields are ``(z, y, x)`` arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OUTSIDE = np.float32(1.0)
"""Field value written where a shape was not evaluated (anything > 0 means outside)."""


@dataclass(frozen=True)
class Box:
    """A box of voxels of a :class:`Grid`: array slices and broadcastable voxel-centre coordinates.

    Attributes:
        slices: ``(z, y, x)`` slices into the grid's array.
        x: shape ``(1, 1, nx)``, mm.
        y: shape ``(1, ny, 1)``, mm.
        z: shape ``(nz, 1, 1)``, mm.
    """

    slices: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])

    def sub(self, low_xyz: np.ndarray, high_xyz: np.ndarray) -> tuple[tuple[slice, slice, slice], Box] | None:
        """The part of this box inside ``[low, high]`` (mm): slices relative to this box, and that box."""
        ranges = []
        for coords, low, high in ((self.z.ravel(), low_xyz[2], high_xyz[2]),
                                  (self.y.ravel(), low_xyz[1], high_xyz[1]),
                                  (self.x.ravel(), low_xyz[0], high_xyz[0])):  # fmt: skip
            start, stop = np.searchsorted(coords, low, "left"), np.searchsorted(coords, high, "right")
            if stop <= start:
                return None
            ranges.append(slice(int(start), int(stop)))
        local = tuple(ranges)
        absolute = tuple(slice(outer.start + inner.start, outer.start + inner.stop)
                         for outer, inner in zip(self.slices, local))  # fmt: skip
        box = Box(
            slices=absolute,
            x=self.x[:, :, local[2]],
            y=self.y[:, local[1], :],
            z=self.z[local[0], :, :],
        )
        return local, box


@dataclass(frozen=True)
class Grid:
    """The canonical voxel grid in patient coordinates: voxel centres along each array axis, increasing.

    Attributes:
        x, y, z: 1-D float32 voxel-centre coordinates in mm (patient frame).
        spacing_xyz: voxel size in mm.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing_xyz: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return (self.z.size, self.y.size, self.x.size)

    @property
    def whole(self) -> Box:
        return Box(
            slices=(slice(0, self.z.size), slice(0, self.y.size), slice(0, self.x.size)),
            x=self.x.reshape(1, 1, -1),
            y=self.y.reshape(1, -1, 1),
            z=self.z.reshape(-1, 1, 1),
        )

    def box(self, low_xyz: np.ndarray, high_xyz: np.ndarray) -> Box | None:
        """Voxels whose centres lie in ``[low, high]`` (mm), or None when there are none."""
        found = self.whole.sub(low_xyz, high_xyz)
        return None if found is None else found[1]


class Shape:
    """Base class: a bounded implicit shape."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low_xyz, high_xyz)`` in mm: a box holding the whole shape."""
        raise NotImplementedError

    def evaluate(self, box: Box) -> np.ndarray:
        """The field on every voxel of ``box`` (float32, ``(z, y, x)``), the box lying within :meth:`bounds`."""
        raise NotImplementedError

    def field_in(self, box: Box) -> np.ndarray:
        """The field on ``box``; voxels outside :meth:`bounds` get :data:`OUTSIDE` without being evaluated."""
        out = np.full(box.shape, OUTSIDE, dtype=np.float32)
        found = box.sub(*self.bounds())
        if found is not None:
            local, inner = found
            out[local] = self.evaluate(inner)
        return out


@dataclass
class Bumps:
    """Low-frequency surface deformation: a sum of sinusoids of the shape's local coordinates.

    The shape's boundary moves outwards by ``sum(amplitudes * sin(frequencies @ local + phases))``
    (a fraction of its size), so the surface is smooth and the shape stays one piece.
    """

    amplitudes: np.ndarray
    frequencies: np.ndarray
    phases: np.ndarray

    @staticmethod
    def random(rng: np.random.Generator, count: int = 4, amplitude: float = 0.08, frequency: float = 2.0) -> Bumps:
        """``count`` sinusoids with amplitudes up to ``amplitude`` and frequencies up to ``frequency`` rad/unit."""
        return Bumps(
            amplitudes=rng.uniform(0.3, 1.0, count) * amplitude / np.sqrt(count / 2),
            frequencies=rng.normal(0.0, frequency / np.sqrt(3), (count, 3)),
            phases=rng.uniform(0, 2 * np.pi, count),
        )

    @property
    def reach(self) -> float:
        """The largest outward displacement (fraction of the size)."""
        return float(np.abs(self.amplitudes).sum())

    def displacement(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        total = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
        for amplitude, (fu, fv, fw), phase in zip(self.amplitudes, self.frequencies, self.phases):
            total += np.float32(amplitude) * np.sin(np.float32(fu) * u + np.float32(fv) * v + np.float32(fw) * w
                                                    + np.float32(phase))  # fmt: skip
        return total


def rotation(angles_xyz_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, then y, then z; columns are the local axes."""
    ax, ay, az = np.deg2rad(angles_xyz_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Ellipsoid(Shape):
    """A rotated, smoothly deformed ellipsoid.

    Attributes:
        center: ``(x, y, z)`` mm.
        semi_axes: half-lengths along the local axes, mm.
        axes: 3x3 rotation; column ``i`` is local axis ``i`` in patient coordinates.
        bumps: optional surface deformation.
    """

    center: np.ndarray
    semi_axes: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    bumps: Bumps | None = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = 1.0 + (self.bumps.reach if self.bumps else 0.0)
        half = np.sqrt(((self.axes * np.asarray(self.semi_axes)[None, :]) ** 2).sum(axis=1)) * reach
        return np.asarray(self.center) - half, np.asarray(self.center) + half

    def local(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local coordinates ``(u, v, w)`` in units of the semi-axes, each ``(z, y, x)`` float32."""
        dx = (box.x - np.float32(self.center[0])).astype(np.float32)
        dy = (box.y - np.float32(self.center[1])).astype(np.float32)
        dz = (box.z - np.float32(self.center[2])).astype(np.float32)
        out = []
        for i in range(3):
            scale = 1.0 / self.semi_axes[i]
            ex, ey, ez = (np.float32(self.axes[j, i] * scale) for j in range(3))
            # The x and y terms are combined in 2-D first so that only one add touches the 3-D box.
            out.append((ex * dx + ey * dy) + ez * dz)
        return out[0], out[1], out[2]

    def evaluate(self, box: Box) -> np.ndarray:
        u, v, w = self.local(box)
        radius = np.sqrt(u * u + v * v + w * w)
        radius -= np.float32(1.0)
        if self.bumps is not None:
            # Only the shell the surface can move within needs the deformation: inside and outside
            # it the sign of the field is already certain.
            reach = np.float32(self.bumps.reach + 0.02)
            shell = np.flatnonzero(np.abs(radius) <= reach)
            flat = radius.reshape(-1)
            flat[shell] -= self.bumps.displacement(u.reshape(-1)[shell], v.reshape(-1)[shell], w.reshape(-1)[shell])
        return radius


@dataclass
class Tube(Shape):
    """A tube along a polyline with a radius that varies linearly along each segment.

    Attributes:
        points: ``(n, 3)`` centreline points ``(x, y, z)`` in mm.
        radii: ``(n,)`` radius at each point, mm.
    """

    points: np.ndarray
    radii: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = float(np.max(self.radii))
        return self.points.min(axis=0) - reach, self.points.max(axis=0) + reach

    def evaluate(self, box: Box) -> np.ndarray:
        return self.evaluate_with_height(box)[0]

    def evaluate_with_height(self, box: Box, want_height: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """The field, and optionally each voxel's height above the centreline in radii.

        The height is ``(y - centre_y) / radius`` of the nearest segment: negative is anterior
        (up, in a patient lying supine), where gas collects.
        """
        field_out = np.full(box.shape, OUTSIDE, dtype=np.float32)
        height_out = np.zeros(box.shape, dtype=np.float32) if want_height else None
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]):
            reach = max(ra, rb)
            found = box.sub(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
            if found is None:
                continue
            local, seg = found
            field, center_y, radius = _segment_field(seg, a, b, ra, rb, want_height)
            view = field_out[local]
            closer = field < view
            view[closer] = field[closer]
            if want_height:
                height = (seg.y - center_y) / radius
                height_out[local][closer] = np.broadcast_to(height, field.shape)[closer]
        return field_out, height_out


def _segment_field(box: Box, a: np.ndarray, b: np.ndarray, ra: float, rb: float, want_center: bool):
    """Normalised distance to a segment whose radius goes linearly from ``ra`` to ``rb``."""
    dx = (box.x - np.float32(a[0])).astype(np.float32)
    dy = (box.y - np.float32(a[1])).astype(np.float32)
    dz = (box.z - np.float32(a[2])).astype(np.float32)
    ex, ey, ez = (np.float32(v) for v in (b - a))
    length2 = np.float32(max(float(np.dot(b - a, b - a)), 1e-6))
    projection = (ex * dx + ey * dy) + ez * dz
    t = np.clip(projection / length2, 0.0, 1.0)
    distance2 = (dx * dx + dy * dy) + dz * dz
    distance2 -= t * (2 * projection - t * length2)
    np.maximum(distance2, 0.0, out=distance2)
    radius = np.float32(ra) + np.float32(rb - ra) * t
    field = np.sqrt(distance2) / radius - np.float32(1.0)
    center_y = np.float32(a[1]) + ey * t if want_center else None
    return field, center_y, radius


@dataclass
class Union(Shape):
    """Points inside any part (field: the minimum)."""

    parts: list[Shape]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lows, highs = zip(*(part.bounds() for part in self.parts))
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def evaluate(self, box: Box) -> np.ndarray:
        out = self.parts[0].field_in(box)
        for part in self.parts[1:]:
            found = box.sub(*part.bounds())
            if found is not None:
                local, inner = found
                np.minimum(out[local], part.evaluate(inner), out=out[local])
        return out


@dataclass
class Difference(Shape):
    """Points inside ``base`` and outside ``cut`` (field: ``max(base, -cut)``)."""

    base: Shape
    cut: Shape

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base.bounds()

    def evaluate(self, box: Box) -> np.ndarray:
        out = self.base.evaluate(box)
        found = box.sub(*self.cut.bounds())
        if found is not None:
            local, inner = found
            np.maximum(out[local], -self.cut.evaluate(inner), out=out[local])
        return out


def smooth_path(control: np.ndarray, radii: np.ndarray, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Catmull-Rom curve through ``control`` points ``(n, 3)``, sampled about every ``step_mm``.

    Radii are interpolated linearly between control points. Returns ``(points, radii)``.
    """
    control = np.asarray(control, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    padded = np.vstack([2 * control[0] - control[1], control, 2 * control[-1] - control[-2]])
    points, out_radii = [control[:1]], [radii[:1]]
    for i in range(len(control) - 1):
        p0, p1, p2, p3 = padded[i : i + 4]
        count = max(1, int(np.ceil(np.linalg.norm(p2 - p1) / step_mm)))
        t = (np.arange(1, count + 1) / count)[:, None]
        segment = 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                         + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3)  # fmt: skip
        points.append(segment)
        out_radii.append(radii[i] + (radii[i + 1] - radii[i]) * t[:, 0])
    return np.vstack(points), np.concatenate(out_radii)
