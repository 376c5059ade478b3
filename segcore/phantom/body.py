"""Everything that is not a labelled organ: trunk layers, lungs and heart, bones, psoas, bowel, table.

The trunk is built slice by slice from 2-D polar fields computed once per case (the
outline at L1 scaled by a smooth function of z), so its cost is a handful of uint8/float32
operations per voxel. Bones, bowel and muscles are shapes evaluated in their own boxes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from segcore.phantom.detailed import bladder, bowel_detail
from segcore.phantom.patient import Patient
from segcore.phantom.shapes import Ellipsoid, Grid, Tube, rotation, smooth_path
from segcore.phantom.tissues import Tissue

Z_CHUNK = 16
"""Slices per block of the trunk pass: keeps temporaries small and in cache."""

_LAYER_TISSUE = np.array(
    [Tissue.VISCERAL_FAT, Tissue.MUSCLE, Tissue.SUBCUTANEOUS_FAT, Tissue.SKIN, Tissue.AIR], dtype=np.uint8
)
"""Tissue of trunk layer 0 (inside the cavity) .. 4 (outside the skin)."""

RIB_GAP_MM = 1.0
"""Ribs start this far outside the cavity outline, inside the muscle wall."""


ARMS_AT_SIDES_SHARE = 0.3
"""Share of varied cases scanned with the arms at the sides. Abdominal CT is done with the arms
raised above the head (out of the field, no streaks across the abdomen); patients who cannot
raise them (trauma, frailty, restraints) keep them at their sides (e.g. Seeram, *Computed
Tomography*, patient positioning for abdominal scans)."""


@dataclass(frozen=True)
class Arms:
    """Both forearms or elbows beside the trunk, straight along z (mm, patient frame).

    Attributes:
        x: distance of each arm's centre from the midline; y: its antero-posterior position.
        rx, ry: half width and half depth (adult forearm girth 24-30 cm, anthropometric tables).
        fat_mm: subcutaneous fat; bone_mm: radius of the bone (radius and ulna as one, cortex 2 mm).
    """

    x: float
    y: float
    rx: float
    ry: float
    fat_mm: float
    bone_mm: float

    @property
    def half_width(self) -> float:
        """How far from the midline the arms reach."""
        return self.x + self.rx


def sample_arms(rng: np.random.Generator, patient: Patient) -> Arms | None:
    """Arms at the sides for a share :data:`ARMS_AT_SIDES_SHARE` of the patients, else None (raised)."""
    if rng.random() >= ARMS_AT_SIDES_SHARE:
        return None
    k = patient.scale
    rx, ry = k * rng.uniform(34.0, 44.0), k * rng.uniform(38.0, 48.0)
    gap = rng.uniform(0.0, 15.0)  # 0: resting on the flank
    x_min, x_max, _, _ = patient.trunk_extent
    flank = max(-x_min, x_max)  # the trunk's widest half width
    return Arms(
        x=flank + gap + rx, y=rng.uniform(-15.0, 25.0), rx=rx, ry=ry,
        fat_mm=rng.uniform(3.0, 3.0 + 0.4 * patient.fat_mm), bone_mm=k * rng.uniform(9.0, 12.0),
    )  # fmt: skip


def _arms(grid: Grid, tissue: np.ndarray, arms: Arms) -> None:
    """Paint both arms (skin, fat, muscle, bone) into the air and table voxels of every slice."""
    x, y = grid.x[None, :], grid.y[:, None]
    section = np.zeros(tissue.shape[1:], dtype=np.uint8)
    for side in (-1.0, 1.0):
        dx, dy = x - side * arms.x, y - arms.y
        for shrink, code in ((0.0, Tissue.SKIN), (2.0, Tissue.SUBCUTANEOUS_FAT), (2.0 + arms.fat_mm, Tissue.MUSCLE)):
            inside = (dx / (arms.rx - shrink)) ** 2 + (dy / (arms.ry - shrink)) ** 2 <= 1.0
            section[inside] = code
        radius = np.hypot(dx, dy)
        section[radius <= arms.bone_mm] = Tissue.BONE_CORTEX
        section[radius <= arms.bone_mm - 2.0] = Tissue.BONE_MARROW
    where = section > 0
    if not where.any():
        return
    view = tissue[:, where]
    free = (view == Tissue.AIR) | (view == Tissue.TABLE)
    tissue[:, where] = np.where(free, section[where][None, :], view)


def build_background(
    grid: Grid,
    patient: Patient,
    rng: np.random.Generator,
    threads: int = 1,
    arms: Arms | None = None,
    detail: np.random.Generator | None = None,
) -> np.ndarray:
    """The tissue map of everything but the labelled organs.

    Args:
        grid: canonical grid in the patient frame.
        patient: the patient.
        rng: the case's bowel stream (bowel loops differ between patients).
        threads: worker threads for the slice-block pass.
        arms: arms at the sides (:func:`sample_arms`), or None.
        detail: the case's bowel-detail stream (:func:`~segcore.phantom.detailed.bowel_detail`:
            collapsed loops, varied fluid, mottled faeces), or None for smooth fluid-filled loops.

    Returns:
        uint8 ``(z, y, x)`` tissue codes (:class:`~segcore.phantom.tissues.Tissue`).
    """
    tissue = _trunk(grid, patient, threads)
    _paint(grid, tissue, _heart(patient), Tissue.HEART, allowed=(Tissue.LUNG,))
    for psoas in _psoas(patient):
        _paint(grid, tissue, psoas, Tissue.PSOAS, allowed=(Tissue.VISCERAL_FAT,))
    loops = _bowel(patient, rng)
    if detail is None:
        for loop, gas_level in loops:
            _paint_hollow(grid, tissue, loop, gas_level)
    else:
        for (loop, _), how in zip(loops, bowel_detail(detail, len(loops))):
            tube = Tube(loop.points, loop.radii * how.radius_factor)
            _paint_hollow(grid, tissue, tube, how.gas_level, -1.01 if how.collapsed else -0.25, how.mottle)
        _paint(grid, tissue, bladder(detail, patient), Tissue.BILE, allowed=(Tissue.VISCERAL_FAT,))  # urine
    _spine(grid, tissue, patient)
    _pelvis(grid, tissue, patient)
    if arms is not None:
        _arms(grid, tissue, arms)
    return tissue


def _trunk(grid: Grid, p: Patient, threads: int) -> np.ndarray:
    """Skin, fat, muscle wall, cavity, lungs, ribs and the table, slice block by slice block."""
    x, y = grid.x[None, :], grid.y[:, None]
    theta = np.arctan2(y, x)
    radius = np.hypot(x, y).astype(np.float32)
    cavity = p.cavity_radius(theta).astype(np.float32)
    wall = p.wall_thickness(theta).astype(np.float32)
    outer = [wall, wall + p.fat_thickness(theta).astype(np.float32)]
    outer.append(outer[1] + np.float32(p.skin_mm))
    diaphragm = p.diaphragm(x, y).astype(np.float32)
    inverse_scale = (1.0 / p.z_scale(grid.z)).astype(np.float32)

    # Ribs run in the muscle wall; only pixels that can hold one are visited.
    rib_thickness = 9.0 * p.scale
    scales = p.z_scale(grid.z)
    excess_low = radius / scales.max() - cavity
    excess_high = radius / scales.min() - cavity
    band = np.flatnonzero((excess_high >= RIB_GAP_MM) & (excess_low <= RIB_GAP_MM + rib_thickness))
    from_back = np.abs(np.angle(np.exp(1j * (theta.ravel()[band] - np.pi / 2)))).astype(np.float32)

    table = _table(grid, p)
    tissue = np.empty(grid.shape, dtype=np.uint8)

    def fill(start: int) -> None:
        stop = min(start + Z_CHUNK, grid.z.size)
        z = grid.z[start:stop]
        excess = radius[None] * inverse_scale[start:stop, None, None] - cavity[None]
        layer = (excess > 0).view(np.uint8)
        for threshold in outer:
            layer += (excess > threshold).view(np.uint8)
        block = tissue[start:stop]
        np.take(_LAYER_TISSUE, layer, out=block)
        if z[-1] > diaphragm.min():
            block[(layer == 0) & (z[:, None, None] > diaphragm[None])] = Tissue.LUNG
        if table is not None:
            block[:, table] = np.where(block[:, table] == Tissue.AIR, np.uint8(Tissue.TABLE), block[:, table])
        flat = block.reshape(block.shape[0], -1)
        flat[:, band] = _ribs(p, z, excess.reshape(block.shape[0], -1)[:, band], from_back, flat[:, band])

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(fill, range(0, grid.z.size, Z_CHUNK)))
    return tissue


def _ribs(p: Patient, z: np.ndarray, excess: np.ndarray, from_back: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Ribs and costal cartilage on the wall pixels: oblique hoops falling towards the front.

    Args:
        z: ``(nz,)`` slice heights; excess: ``(nz, n)`` distance outside the cavity outline (mm);
        from_back: ``(n,)`` angle from the posterior midline (rad); current: ``(nz, n)`` tissue codes.
    """
    k = p.scale
    rib_thickness, rib_height, rib_pitch = 9.0 * k, 9.0 * k, 27.0 * k
    # A rib descends about 200 mm from its back end to its front end.
    height = z[:, None] + (200.0 * k / np.pi) * from_back[None, :]
    position = (height - 2.0 * p.pitch) / rib_pitch
    index = np.floor(position)
    within = position - index
    # Rib 12 is short and floating, rib 11 a little longer, the rest reach the costal cartilage.
    reach = np.array([0.45, 0.6, 0.8, 0.9]) * np.pi
    cartilage_from = np.array([1.0, 1.0, 0.68, 0.72]) * np.pi
    which = np.clip(index, 0, 3).astype(np.intp)
    radial = (excess - RIB_GAP_MM) / rib_thickness
    is_rib = ((index >= 0) & (within < rib_height / rib_pitch) & (radial >= 0) & (radial <= 1)
              & (from_back[None, :] > 0.16 * np.pi) & (from_back[None, :] < reach[which]))  # fmt: skip
    section = (2 * within * rib_pitch / rib_height - 1) ** 2 + (2 * radial - 1) ** 2
    bone = np.where(section > 0.4, np.uint8(Tissue.BONE_CORTEX), np.uint8(Tissue.BONE_MARROW))
    code = np.where(from_back[None, :] > cartilage_from[which], np.uint8(Tissue.CARTILAGE), bone)
    sternum = ((from_back[None, :] > 0.94 * np.pi) & (z[:, None] > p.dome_right - 25 * k)
               & (radial >= 0) & (radial <= 1))  # fmt: skip
    out = np.where(is_rib, code, current)
    return np.where(sternum, np.uint8(Tissue.BONE_MARROW), out)


def _table(grid: Grid, p: Patient) -> np.ndarray | None:
    """In-plane mask of the scanner table under the patient's back (None when outside the field)."""
    back = p.trunk_extent[3]
    x, y = grid.x[None, :], grid.y[:, None]
    surface = back + 12.0 + 0.0006 * x * x
    thickness = max(6.0, 1.2 * grid.spacing_xyz[1])
    mask = (y >= surface) & (y <= surface + thickness) & (np.abs(x) < 0.8 * np.abs(grid.x).max())
    return mask if mask.any() else None


def _paint(grid: Grid, tissue: np.ndarray, shape, code: int, allowed: tuple[int, ...]) -> None:
    box = grid.box(*shape.bounds())
    if box is None:
        return
    view = tissue[box.slices]
    inside = (shape.evaluate(box) <= 0) & np.isin(view, allowed)
    view[inside] = code


def _paint_hollow(
    grid: Grid, tissue: np.ndarray, tube: Tube, gas_level: float, lumen_below: float = -0.25, mottle=None
) -> None:
    """A bowel loop: wall, fluid content, gas in its anterior part; only into visceral fat.
    ``lumen_below``: the field under which the lumen starts (below -1: no lumen, a collapsed loop);
    ``mottle``: a :class:`~segcore.phantom.detailed.Plaques` pattern of gas bubbles in the content."""
    box = grid.box(*tube.bounds())
    if box is None:
        return
    field, height = tube.evaluate_with_height(box, want_height=True)
    view = tissue[box.slices]
    inside = (field <= 0) & (view == Tissue.VISCERAL_FAT)
    lumen = field < lumen_below
    gas = height < gas_level
    if mottle is not None:
        gas |= mottle.mask(box)
    code = np.where(lumen, np.where(gas, np.uint8(Tissue.GAS), np.uint8(Tissue.BOWEL_CONTENT)),
                    np.uint8(Tissue.BOWEL_WALL))  # fmt: skip
    view[inside] = code[inside]


def _heart(p: Patient) -> Ellipsoid:
    k = p.scale
    return Ellipsoid(np.array([15 * k, -0.3 * p.cavity_b, p.dome_left + 55 * k]),
                     np.array([70, 52, 55]) * k, rotation((0, 0, -30)))  # fmt: skip


def _psoas(p: Patient) -> list[Tube]:
    k, rx, sy, pitch = p.scale, p.spine_rx, p.spine_y, p.pitch
    tubes = []
    for side in (-1.0, 1.0):
        control = [
            (side * 0.8 * rx, sy - 2, 0.4 * pitch),
            (side * (rx + 10 * k), sy - 10 * k, -1.5 * pitch),
            (side * (rx + 22 * k), sy - 18 * k, -3.5 * pitch),
            (side * (rx + 32 * k), sy - 28 * k, -5 * pitch),
        ]
        points, radii = smooth_path(np.array(control), np.array([5, 15, 22, 24]) * k, 10.0)
        tubes.append(Tube(points, radii))
    return tubes


def _bowel(p: Patient, rng: np.random.Generator) -> list[tuple[Tube, float]]:
    """Colon (a frame around the abdomen, gas-filled in part) and random small-bowel loops."""
    a, b, k, pitch = p.cavity_a, p.cavity_b, p.scale, p.pitch
    colon = np.array([(-0.6 * a, -0.1 * b, -4.2 * pitch), (-0.72 * a, 0.1 * b, -2.5 * pitch),
                      (-0.68 * a, -0.2 * b, -1.2 * pitch), (-0.3 * a, -0.7 * b, -1.6 * pitch),
                      (0.2 * a, -0.72 * b, -1.8 * pitch), (0.72 * a, -0.1 * b, 0.2 * pitch),
                      (0.76 * a, 0.15 * b, -1.5 * pitch), (0.72 * a, 0.1 * b, -3.5 * pitch),
                      (0.4 * a, -0.3 * b, -5.0 * pitch), (0.0, 0.2 * b, -5.5 * pitch)])  # fmt: skip
    colon = colon + rng.normal(0.0, 6.0, colon.shape)
    radii = np.array([28, 25, 24, 22, 22, 22, 20, 20, 18, 18]) * k * rng.uniform(0.8, 1.2, len(colon))
    loops = [(Tube(*smooth_path(colon, radii, 12.0)), float(rng.uniform(-0.8, 0.2)))]
    low = np.array([-0.55 * a, -0.8 * b, -5.0 * pitch])
    high = np.array([0.55 * a, 0.3 * b, -1.3 * pitch])
    for _ in range(int(rng.integers(4, 8))):
        point = rng.uniform(low, high)
        direction = rng.normal(0.0, 1.0, 3)
        control = [point]
        for _ in range(int(rng.integers(5, 9))):
            direction = direction / np.linalg.norm(direction) + rng.normal(0.0, 0.8, 3)
            point = np.clip(point + 30.0 * k * direction / np.linalg.norm(direction), low, high)
            control.append(point)
        radius = rng.uniform(10.0, 14.0) * k
        loops.append((Tube(*smooth_path(np.array(control), np.full(len(control), radius), 12.0)), -0.97))
    return loops


def _spine(grid: Grid, tissue: np.ndarray, p: Patient) -> None:
    """Vertebral bodies (cortex, marrow), discs, spinal canal and posterior elements, every slice."""
    k = p.scale
    rx, ry, pitch = p.spine_rx, p.spine_ry, p.pitch
    canal_r, arch = 8.5 * k, 6.0 * k
    y_low = float(np.min(p.spine_y_at(grid.z))) - ry - 2
    y_high = float(np.max(p.spine_y_at(grid.z))) + ry + 2 * canal_r + 45 * k
    box = grid.box(np.array([-rx - 40 * k, y_low, grid.z[0]]), np.array([rx + 40 * k, y_high, grid.z[-1]]))
    if box is None:
        return
    x, y, z = box.x, box.y, box.z
    center_y = p.spine_y_at(z).astype(np.float32)
    phase = np.mod(z / pitch + 0.5, 1.0)
    disc = np.abs(phase - 0.5) > 0.39
    body = (x / rx) ** 2 + ((y - center_y) / ry) ** 2
    endplate = np.abs(phase - 0.5) > 0.35
    canal_y = center_y + ry + canal_r + 2 * k
    canal = np.hypot(x, y - canal_y)
    ring = (canal >= canal_r) & (canal <= canal_r + arch) & (y > center_y + ry - 2) & (np.abs(phase - 0.55) < 0.3)
    spinous = (
        (np.abs(x) < 4 * k) & (y > canal_y + canal_r) & (y < canal_y + canal_r + 38 * k) & (np.abs(phase - 0.58) < 0.22)
    )
    transverse = ((np.abs(x) > canal_r) & (np.abs(x) < canal_r + 26 * k) & (np.abs(y - canal_y + 3 * k) < 3.5 * k)
                  & (np.abs(phase - 0.55) < 0.12) & (z < 0.7 * pitch))  # fmt: skip
    view = tissue[box.slices]
    bone_shell = (body > (1 - 2.5 / rx) ** 2) | endplate
    body_code = np.where(disc, np.uint8(Tissue.DISC),
                         np.where(bone_shell, np.uint8(Tissue.BONE_CORTEX), np.uint8(Tissue.BONE_MARROW)))  # fmt: skip
    inside_body = body <= 1
    view[inside_body] = np.broadcast_to(body_code, view.shape)[inside_body]
    view[np.broadcast_to(canal < canal_r, view.shape)] = Tissue.SPINAL_CANAL
    view[ring | spinous | transverse] = Tissue.BONE_CORTEX


def _pelvis(grid: Grid, tissue: np.ndarray, p: Patient) -> None:
    """The iliac wings: curved bony plates at the sides, below the iliac crest (about L4)."""
    k, crest = p.scale, -3.7 * p.pitch
    if grid.z[0] > crest:
        return
    for side in (-1.0, 1.0):
        center = np.array([side * 0.42 * p.cavity_a, p.spine_y - 0.3 * p.cavity_b, crest - 75 * k])
        semi_axes = np.array([0.5 * p.cavity_a, 0.6 * p.cavity_b, 85 * k])
        wing = Ellipsoid(center, semi_axes, rotation((0, 0, side * 25)))
        low, high = wing.bounds()
        high[2] = min(high[2], crest)
        box = grid.box(low, high)
        if box is None:
            continue
        field = wing.evaluate(box)
        shell = (
            (field > -0.1) & (field <= 0) & (side * box.x > 0.5 * p.cavity_a) & (box.y > p.spine_y - 0.7 * p.cavity_b)
        )
        view = tissue[box.slices]
        shell &= (view != Tissue.AIR) & (view != Tissue.SKIN) & (view != Tissue.SUBCUTANEOUS_FAT)
        code = np.where((field > -0.03) | (field < -0.07), np.uint8(Tissue.BONE_CORTEX), np.uint8(Tissue.BONE_MARROW))
        view[shell] = code[shell]
