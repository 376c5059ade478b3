"""Scanner geometry of a phantom: grid size, spacing, field of view and how the volume is stored.

The anatomy is generated on the canonical grid (axes along +x, +y, +z, see
:mod:`segcore.volumes.geometry`); the stored grid is the same voxels under one of several signed
axis permutations (:data:`DIRECTIONS`), so different cases reach the pipeline in different
orientations while their physical content is consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcore.phantom.patient import Patient
from segcore.phantom.shapes import Grid
from segcore.volumes.geometry import Geometry, Reorientation, canonical_reorientation

SIZES = ("small", "medium", "full")
"""``small``: a few dozen voxels per axis, for tests; ``medium``: 128-160 voxels in-plane (about
2.5-3.5 mm), for training small models on a CPU; ``full``: 512 x 512 in-plane, like a clinical CT."""

FULL_IN_PLANE = 512
FULL_SPACING_MM = (0.6, 1.0)
"""In-plane spacing range of full-size cases; the field of view follows the patient's width."""
FULL_SLICE_SPACINGS_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
FULL_SLICE_WEIGHTS = (0.15, 0.15, 0.15, 0.2, 0.2, 0.1, 0.05)
FULL_MAX_SLICES = 350
SMALL_IN_PLANE = (48, 64)
"""In-plane size range of small cases (voxels); spacing 5-9 mm keeps every organ a few voxels big."""
SMALL_MAX_SLICES = 72
MEDIUM_IN_PLANE = (128, 160)
MEDIUM_SLICE_SPACINGS_MM = (2.0, 2.5, 3.0, 4.0, 5.0)
MEDIUM_MAX_SLICES = 160

SLAB_SHARE = 0.5
"""With field-of-view variation: share of cases imaged as a slab anywhere over the organs."""
SLAB_MM = (40.0, 250.0)
"""Their z extent (log-uniform), from a few slices through one level to most of the abdomen."""
NARROW_SHARE = 0.4
"""With field-of-view variation: share of cases whose in-plane field is narrower than the body..."""
NARROW_FRACTION = (0.6, 1.0)
"""...by this factor along x and along y, independently (cut flanks, belly or back)."""
MIN_SLICES = 8

DIRECTIONS: tuple[tuple[str, tuple[float, ...], float], ...] = (
    ("identity (LPS)", (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.3),
    ("x and y flipped (NIfTI from DICOM)", (-1, 0, 0, 0, -1, 0, 0, 0, 1), 0.35),
    ("slices stored top to bottom (left-handed)", (1, 0, 0, 0, 1, 0, 0, 0, -1), 0.1),
    ("x flipped (left-handed)", (-1, 0, 0, 0, 1, 0, 0, 0, 1), 0.05),
    ("x and y swapped", (0, 1, 0, 1, 0, 0, 0, 0, 1), 0.05),
    ("coronal slices", (1, 0, 0, 0, 0, -1, 0, 1, 0), 0.08),
    ("sagittal slices", (0, 0, 1, 1, 0, 0, 0, 1, 0), 0.07),
)
"""(name, row-major direction matrix, probability) of the stored orientations."""


@dataclass(frozen=True)
class Scan:
    """Where and how one phantom is imaged.

    Attributes:
        geometry: the stored grid (what the file carries).
        reorientation: from the stored array to the canonical one; ``undo`` goes back.
        grid: canonical voxel centres in the patient frame (mm).
        patient_origin: LPS position (mm) of the patient frame's origin.
        direction_name: which of :data:`DIRECTIONS` was used (``"given"`` for a caller's grid).
        full_field: the field of view holds every organ whole.
        slab_mm: the z extent drawn for a slab (field-of-view variation), None for none.
        narrow: the in-plane field's fraction of the body-wide one along x and y, None for full.
    """

    geometry: Geometry
    reorientation: Reorientation
    grid: Grid
    patient_origin: tuple[float, float, float]
    direction_name: str
    full_field: bool
    slab_mm: float | None = None
    narrow: tuple[float, float] | None = None

    @property
    def min_feature_mm(self) -> float:
        """Thinnest structure the grid still samples reliably (mm): 0.6 of the coarsest spacing."""
        return 0.6 * max(self.grid.spacing_xyz)


def stored_geometry(size_xyz, spacing_xyz, origin_xyz, direction: tuple[float, ...]) -> Geometry:
    """The stored geometry of a canonical grid (identity direction) under a signed axis permutation.

    Args:
        size_xyz, spacing_xyz, origin_xyz: the canonical grid (origin: LPS mm of voxel 0).
        direction: row-major signed permutation matrix of the stored grid.
    """
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    size, spacing, origin = [0, 0, 0], [0.0, 0.0, 0.0], list(map(float, origin_xyz))
    for axis in range(3):
        physical = int(np.argmax(np.abs(matrix[:, axis])))
        size[axis], spacing[axis] = int(size_xyz[physical]), float(spacing_xyz[physical])
        if matrix[physical, axis] < 0:
            # Stored voxel 0 sits at the far end of this physical axis.
            origin[physical] = float(origin_xyz[physical] + (size_xyz[physical] - 1) * spacing_xyz[physical])
    return Geometry(
        size=tuple(size),
        spacing=tuple(spacing),
        origin=tuple(origin),
        direction=tuple(float(d) for d in matrix.ravel()),
    )


def _grid(reorientation: Reorientation, patient_origin: np.ndarray) -> Grid:
    canonical = reorientation.canonical
    coords = [
        (canonical.origin[axis] - patient_origin[axis] + np.arange(canonical.size[axis]) * canonical.spacing[axis])
        for axis in range(3)
    ]
    return Grid(
        x=coords[0].astype(np.float32),
        y=coords[1].astype(np.float32),
        z=coords[2].astype(np.float32),
        spacing_xyz=tuple(float(s) for s in canonical.spacing),
    )


def plan_scan(
    rng: np.random.Generator,
    size: str,
    patient: Patient,
    organ_z_range: tuple[float, float],
    full_field: bool,
    geometry: Geometry | None = None,
    variation: np.random.Generator | None = None,
    half_width: float | None = None,
    below_mm: float = 0.0,
) -> Scan:
    """Choose the grid and the field of view for one patient.

    Args:
        rng: the case's geometry stream.
        size: ``"small"``, ``"medium"`` or ``"full"``.
        patient: the patient (its trunk extent sets the in-plane field of view).
        organ_z_range: lowest and highest z (mm, patient frame) of any organ.
        full_field: keep every organ whole; otherwise cut the top or the bottom of the abdomen off.
        geometry: impose this stored grid instead of drawing one; the patient is centred in it.
        variation: a stream for partial fields of view beyond ``full_field``'s cuts (None: no
            such variation; ignored with ``geometry``): a share :data:`SLAB_SHARE` of the
            cases are slabs of :data:`SLAB_MM` centred anywhere between the lowest and the
            highest organ, a share :data:`NARROW_SHARE` have an in-plane field narrower than
            the body (:data:`NARROW_FRACTION` per axis), placed anywhere across it.
        half_width: how far from the midline the field must reach (arms at the sides), if
            beyond the trunk.
        below_mm: further field below the drawn one (an abdomen-pelvis scan down to the bladder).
    """
    if size not in SIZES:
        raise ValueError(f"unknown phantom size {size!r}; expected one of {', '.join(SIZES)}")
    x_min, x_max, y_min, y_max = patient.trunk_extent
    if half_width is not None:
        x_min, x_max = min(x_min, -half_width), max(x_max, half_width)
    body_center = np.array([(x_min + x_max) / 2, (y_min + y_max) / 2])
    organ_low, organ_high = organ_z_range
    if geometry is not None:
        return _given_scan(geometry, body_center, organ_low, organ_high)

    n_xy, spacing_xy, spacing_z, max_slices = _in_plane(rng, size, max(x_max - x_min, y_max - y_min))
    z_low, z_high = _z_range(rng, organ_low, organ_high, full_field)
    z_low -= below_mm
    z_low, z_high, n_x, n_y, narrow_shift, slab_mm, narrow = _varied_field(
        variation, organ_low, organ_high, z_low, z_high, n_xy, spacing_xy
    )
    slab = slab_mm is not None
    n_z = int(round((z_high - z_low) / spacing_z)) + 1
    if slab and n_z < MIN_SLICES:
        n_z = MIN_SLICES
        z_low = (z_low + z_high) / 2 - (n_z - 1) * spacing_z / 2
    if n_z > max_slices:
        # Too many slices: trim the margins, keeping the organs centred.
        n_z = max_slices
        middle = (organ_low + organ_high) / 2 if full_field and not slab else (z_low + z_high) / 2
        z_low = middle - (n_z - 1) * spacing_z / 2
    fov_xy = n_xy * spacing_xy
    center_xy = body_center + rng.uniform(-0.04, 0.04, 2) * fov_xy + narrow_shift
    origin_in_patient = np.array([center_xy[0] - (n_x - 1) * spacing_xy / 2,
                                  center_xy[1] - (n_y - 1) * spacing_xy / 2, z_low])  # fmt: skip
    # Scanners put the patient anywhere on their axes: table height, table position along z.
    patient_origin = np.array([rng.uniform(-15, 15), rng.uniform(-40, 20), rng.uniform(-700, 200)])
    names, directions, weights = zip(*DIRECTIONS)
    choice = int(rng.choice(len(DIRECTIONS), p=np.asarray(weights) / np.sum(weights)))
    stored = stored_geometry(
        (n_x, n_y, n_z), (spacing_xy, spacing_xy, spacing_z), origin_in_patient + patient_origin, directions[choice]
    )
    reorientation = canonical_reorientation(stored)
    covered = (z_low <= organ_low) and (z_low + (n_z - 1) * spacing_z >= organ_high)
    return Scan(
        geometry=stored,
        reorientation=reorientation,
        grid=_grid(reorientation, patient_origin),
        patient_origin=tuple(float(v) for v in patient_origin),
        direction_name=names[choice],
        full_field=bool(covered),
        slab_mm=slab_mm,
        narrow=narrow,
    )


def _in_plane(rng: np.random.Generator, size: str, width: float) -> tuple[int, float, float, int]:
    """Voxels across, in-plane spacing, slice spacing and the most slices of a ``size`` grid for a
    body ``width`` mm across."""
    if size == "full":
        n_xy = FULL_IN_PLANE
        spacing_xy = float(np.clip(width * rng.uniform(1.05, 1.3) / n_xy, *FULL_SPACING_MM))
        spacing_z = float(rng.choice(FULL_SLICE_SPACINGS_MM, p=FULL_SLICE_WEIGHTS))
        max_slices = FULL_MAX_SLICES
    elif size == "medium":
        n_xy = int(rng.integers(MEDIUM_IN_PLANE[0], MEDIUM_IN_PLANE[1] + 1))
        spacing_xy = width * rng.uniform(1.05, 1.3) / n_xy
        spacing_z = float(rng.choice(MEDIUM_SLICE_SPACINGS_MM))
        max_slices = MEDIUM_MAX_SLICES
    else:
        n_xy = int(rng.integers(SMALL_IN_PLANE[0], SMALL_IN_PLANE[1] + 1))
        spacing_xy = width * rng.uniform(1.05, 1.25) / n_xy
        spacing_z = spacing_xy * rng.uniform(0.9, 1.3)
        max_slices = SMALL_MAX_SLICES
    return n_xy, spacing_xy, spacing_z, max_slices


def _z_range(rng: np.random.Generator, organ_low: float, organ_high: float, full_field: bool) -> tuple[float, float]:
    # z field of view: the organs plus margins (some scans reach into the chest or the pelvis).
    below, above = rng.uniform(10.0, 110.0), rng.uniform(15.0, 90.0)
    z_low, z_high = organ_low - below, organ_high + above
    if not full_field:
        if rng.random() < 0.5:
            z_high = rng.uniform(organ_low + 0.45 * (organ_high - organ_low), organ_high - 25.0)
        else:
            z_low = rng.uniform(organ_low + 25.0, organ_low + 0.45 * (organ_high - organ_low))
    return z_low, z_high


def _varied_field(variation, organ_low, organ_high, z_low, z_high, n_xy, spacing_xy):
    """With ``variation``: a slab anywhere over the organs, an in-plane field narrower than the body."""
    n_x = n_y = n_xy
    narrow_shift, slab_mm, narrow = np.zeros(2), None, None
    if variation is not None:
        if variation.random() < SLAB_SHARE:
            slab_mm = float(np.exp(variation.uniform(*np.log(SLAB_MM))))
            middle = variation.uniform(organ_low, organ_high)
            z_low, z_high = middle - slab_mm / 2, middle + slab_mm / 2
        if variation.random() < NARROW_SHARE:
            narrow = tuple(float(variation.uniform(*NARROW_FRACTION)) for _ in range(2))
            n_x, n_y = (int(round(n_xy * fraction)) for fraction in narrow)
            narrow_shift = variation.uniform(-0.5, 0.5, 2) * (n_xy - np.array([n_x, n_y])) * spacing_xy
    return z_low, z_high, n_x, n_y, narrow_shift, slab_mm, narrow


def _given_scan(geometry: Geometry, body_center: np.ndarray, organ_low: float, organ_high: float) -> Scan:
    """An imposed grid with the patient centred in it."""
    reorientation = canonical_reorientation(geometry)
    canonical = reorientation.canonical
    extent = (np.asarray(canonical.size) - 1) * np.asarray(canonical.spacing)
    fov_center = np.asarray(canonical.origin) + extent / 2
    wanted_center = np.array([*body_center, (organ_low + organ_high) / 2])
    patient_origin = fov_center - wanted_center
    fits = extent[2] >= organ_high - organ_low
    return Scan(geometry, reorientation, _grid(reorientation, patient_origin), tuple(patient_origin), "given", fits)
