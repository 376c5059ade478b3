"""Detailed retroperitoneal anatomy: great vessels on the spine, diaphragmatic crura, adrenals
against their neighbours, aortic wall calcification (``generate_case(detailed=True)``).

The average anatomy (:mod:`segcore.phantom.anatomy`) places the aorta and the IVC at fixed
depths and the adrenals in fat. Here they are drawn from their relations, after Gray's Anatomy
(abdominal aorta, inferior vena cava, diaphragm, suprarenal glands) and Netter's Atlas of Human
Anatomy (posterior abdominal wall plates):

* **aorta**: enters the abdomen through the aortic hiatus at T12, descends on the front of the
  lumbar vertebral bodies (on the anterior longitudinal ligament), slightly left of the midline,
  following the lordosis; bifurcates into the common iliac arteries at L4 (range L3-L5);
* **IVC**: formed by the common iliac veins in front of L5, right of the midline; ascends to the
  right of the aorta and in front of its plane, flattened antero-posteriorly; its upper
  (retrohepatic) segment lies in a groove of the liver's bare area and leaves through the
  diaphragm at T8;
* **crura**: the right crus arises from the bodies of L1-L3, the left from L1-L2; both ascend
  beside the aorta and meet in front of it as the median arcuate ligament (T12/L1) before
  embracing the oesophageal hiatus;
* **adrenals**: thin limbs (3-6 mm) in an inverted Y or V; the right one above the upper pole of
  the right kidney, directly behind the IVC, its medial limb against the right crus; the left one
  in front of and medial to the upper pole of the left kidney, its medial limb against the left
  crus, behind the pancreas and the splenic vein;
* **calcification**: patchy calcium in the aortic wall, common in adults over 50.

Every random number comes from the case's own ``detail`` stream, so the average anatomy's
organs (liver, spleen, kidneys, stomach, pancreas, bowel) are the same patient's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcore.phantom.patient import Patient
from segcore.phantom.shapes import Box, Bumps, Ellipsoid, Shape, Tube, Union, rotation, smooth_path
from segcore.phantom.tissues import Tissue

CALCIFIED_SHARE = 0.35
"""Share of detailed cases with calcified plaque in the aortic wall."""


@dataclass
class Plaques:
    """Patchy calcium in an organ's wall: where ``sum(sin(f . x + phase)) > threshold`` (x in mm)
    and the organ's field is above ``wall_above`` (its outer shell)."""

    frequencies: np.ndarray
    phases: np.ndarray
    threshold: float
    wall_above: float = -0.3
    tissue: int = Tissue.BONE_CORTEX

    def mask(self, box: Box) -> np.ndarray:
        total = np.zeros(box.shape, dtype=np.float32)
        for (fx, fy, fz), phase in zip(self.frequencies, self.phases):
            total += np.sin(np.float32(fx) * box.x + np.float32(fy) * box.y + np.float32(fz) * box.z
                            + np.float32(phase))  # fmt: skip
        return total > self.threshold


@dataclass
class RetroPeritoneum:
    """The detailed structures of one patient.

    Attributes:
        aorta, ivc: their labelled shapes; aorta_line, ivc_line: centrelines ``(n, 3)`` (mm) with
            radii (the IVC's is the middle of its flattened section).
        crura: right and left crus (muscle, painted before the organs).
        adrenals: right and left gland shapes.
        iliac: the common iliac arteries and veins (unlabelled).
        plaques: calcium in the aortic wall, or None.
        renal: ``(aorta_x, ivc_x, ivc_y)`` at the renal veins' level, where the renal vessels join.
    """

    aorta: Tube
    ivc: Shape
    aorta_line: tuple[np.ndarray, np.ndarray]
    ivc_line: tuple[np.ndarray, np.ndarray]
    crura: list[Tube]
    adrenals: dict[str, Shape]
    iliac: list[tuple[Tube, int]]
    plaques: Plaques | None
    renal: tuple[float, float, float]


def center_at(line: tuple[np.ndarray, np.ndarray], z: float) -> tuple[np.ndarray, float]:
    """Centre ``(x, y, z)`` and radius of a centreline where it crosses height ``z`` (its lowest
    crossing above the line's bottom; the ends when ``z`` is outside it)."""
    points, radii = line
    order = np.argsort(points[:, 2], kind="stable")
    zs = points[order, 2]
    center = np.array([np.interp(z, zs, points[order, axis]) for axis in range(3)])
    return center, float(np.interp(z, zs, radii[order]))


class DetailedBuilder:
    """Draws one patient's detailed retroperitoneum from ``rng`` (fixed order of draws).

    Args:
        patient: the patient.
        rng: the case's detail stream.
        min_radius_mm: thinnest tube radius (the grid's floor for thin organs).
        step_mm: centreline sampling step.
        kidneys: the right and left kidney shapes (their upper poles place the adrenals).
    """

    def __init__(self, patient: Patient, rng: np.random.Generator, min_radius_mm: float, step_mm: float, kidneys):
        self.p, self.rng, self.min_radius, self.step = patient, rng, min_radius_mm, step_mm
        self.kidneys = kidneys

    def tube(self, control, radii) -> Tube:
        radii = np.maximum(np.asarray(radii, dtype=np.float64), self.min_radius)
        return Tube(*smooth_path(np.asarray(control, dtype=np.float64), radii, self.step))

    def front_of_spine(self, z: float) -> float:
        """y (mm) of the front of the vertebral body at height ``z`` on the midline."""
        return float(self.p.spine_y_at(np.array(z))) - self.p.spine_ry

    def build(self, top: float) -> RetroPeritoneum:
        p, k, rng = self.p, self.p.scale, self.rng
        pitch, h_right, sy = p.pitch, p.dome_right, p.spine_y
        # Aorta: thoracic part behind the heart, then on the spine from the hiatus to L4.
        bifurcation = (-3.0 + rng.uniform(-0.35, 0.25)) * pitch
        levels = np.array([2.5 * pitch, 0.8 * pitch, 0.0, -1.5 * pitch, bifurcation])
        left = k * np.array([rng.uniform(10, 20), rng.uniform(6, 16), rng.uniform(4, 14), rng.uniform(2, 12),
                             rng.uniform(-2, 8)])  # fmt: skip
        a_radii = np.array([12.0, 11.5, 11.0, 10.5, 9.5]) * k * rng.uniform(0.85, 1.15)
        gap = rng.uniform(0.5, 3.0, levels.size)  # the anterior longitudinal ligament and a little fat
        a_y = np.array([self.front_of_spine(z) for z in levels]) - gap - a_radii
        control = [(26 * k, sy - 12 * k, top), (20 * k, sy - 20 * k, h_right + 20)]
        control += [(x, y, z) for x, y, z in zip(left, a_y, levels)]
        radii = np.concatenate([[12.5 * k, 12.0 * k], a_radii])
        aorta = self.tube(control, radii)

        # IVC: right of the aorta, in front of its plane, flattened; retrohepatic part forward in the liver.
        i_levels = np.array([0.8 * pitch, 0.0, -1.5 * pitch, -3.0 * pitch])
        i_base = 11.5 * k * rng.uniform(0.85, 1.15)
        i_radii = np.array([1.05, 1.0, 0.95, 0.9]) * i_base
        flatten = rng.uniform(0.15, 0.4)  # half-distance of the two lobes, in radii: depth/width 0.67-0.84
        centers = []
        for z, radius in zip(i_levels, i_radii):
            a_center, a_radius = center_at((aorta.points, aorta.radii), z)
            half_width = radius * (0.8 + flatten)
            x = a_center[0] - a_radius - half_width - rng.uniform(2.0, 10.0)
            y = a_center[1] - rng.uniform(2.0, 12.0) * k
            centers.append((x, y, z))
        floor = (-4.0 + rng.uniform(-0.2, 0.3)) * pitch  # the iliac veins join in front of L5
        low = (centers[-1][0] + 4 * k, centers[-1][1] + 4 * k, floor)
        x1, y1, _ = centers[0]
        upper = [(x1 + 3 * k, y1 - rng.uniform(18, 28) * k, h_right + 30),
                 (x1, y1 - rng.uniform(8, 16) * k, h_right - 30)]  # fmt: skip
        i_control = np.array([*upper, *centers, low])
        i_radii_all = np.concatenate([[13 * k, 12.5 * k], i_radii, [0.9 * i_base]])
        line = smooth_path(i_control, i_radii_all, self.step)
        lobes = []
        for side in (-1.0, 1.0):
            offset = np.array([side * flatten, 0.0, 0.0])[None, :] * line[1][:, None]
            lobes.append(Tube(line[0] + offset, np.maximum(0.8 * line[1], self.min_radius)))
        ivc = Union(lobes)

        crura = self._crura(aorta, pitch)
        adrenals = self._adrenals((line[0], line[1] * (0.8 + flatten)), flatten, crura)
        iliac = self._iliac(aorta, line, bifurcation, floor)
        plaques = None
        if rng.random() < CALCIFIED_SHARE:
            plaques = Plaques(rng.normal(0.0, 0.25, (3, 3)), rng.uniform(0, 2 * np.pi, 3), rng.uniform(1.2, 2.2))
        renal_z = -0.6 * pitch
        renal_ivc, _ = center_at(line, renal_z)
        renal = (float(center_at((aorta.points, aorta.radii), renal_z)[0][0]), float(renal_ivc[0]), float(renal_ivc[1]))
        return RetroPeritoneum(aorta, ivc, (aorta.points, aorta.radii), line, crura, adrenals, iliac, plaques, renal)

    def _crura(self, aorta: Tube, pitch: float) -> list[Tube]:
        """Right crus from L3, left from L2, up beside the aorta, meeting in front of it at T12/L1."""
        k, rng, line = self.p.scale, self.rng, (aorta.points, aorta.radii)
        arcuate = rng.uniform(0.5, 1.0) * pitch  # the median arcuate ligament
        radius = rng.uniform(3.0, 5.0) * k
        crura = []
        for side, origin in ((-1.0, -2.4 * pitch), (1.0, -1.5 * pitch)):
            points = []
            for z in (origin, 0.5 * (origin + arcuate) - 0.3 * pitch, arcuate - 0.45 * pitch):
                center, a_radius = center_at(line, z)
                x = center[0] + side * (a_radius + radius + rng.uniform(0.5, 2.5))
                points.append((x, max(center[1], self.front_of_spine(z) - radius), z))
            center, a_radius = center_at(line, arcuate)
            front = center[1] - a_radius - radius - 0.5
            points.append((center[0] + side * 0.3 * a_radius, front, arcuate))
            points.append((center[0] + side * 0.6 * a_radius, front, arcuate + 0.4 * pitch))
            crura.append(self.tube(points, np.full(len(points), radius)))
        return crura

    def _adrenals(self, ivc_line, flatten: float, crura: list[Tube]) -> dict[str, Shape]:
        """Glands of thin limbs, an inverted Y in each axial section (an anterior ridge, a medial
        and a lateral limb running backwards), stacked over 20-35 mm above each kidney's upper
        pole: the right ridge against the back of the IVC, each medial limb against its crus."""
        k, rng = self.p.scale, self.rng
        thickness = max(rng.uniform(1.5, 2.5) * k, self.min_radius)  # limb radius: limbs 3-5 mm thick
        step = 1.5 * thickness
        shapes = {}
        for name, side, kidney, crus in (("right_adrenal_gland", -1.0, self.kidneys[0], crura[0]),
                                         ("left_adrenal_gland", 1.0, self.kidneys[1], crura[1])):  # fmt: skip
            low, high = kidney.bounds()
            pole = high[2] - 0.12 * (high[2] - low[2])
            height = rng.uniform(20.0, 35.0) * k
            lateral_len, lateral_back = rng.uniform(10, 16) * k, rng.uniform(8, 16) * k
            limbs = []
            for z in np.arange(pole - 0.1 * height, pole + height, step):
                taper = 0.45 + 0.55 * np.sin(np.pi * (z - pole + 0.1 * height) / (1.1 * height))
                crus_center, crus_radius = center_at((crus.points, crus.radii), z)
                beside = crus_center[0] + side * (crus_radius + thickness + 0.5)
                if side < 0:  # right: the ridge directly behind the IVC
                    ivc_center, half_width = center_at(ivc_line, z)
                    depth = half_width / (0.8 + flatten) * 0.8
                    ridge = np.array([ivc_center[0] + 0.2 * half_width, ivc_center[1] + depth + thickness + 0.5, z])
                else:  # left: beside the crus, in front of the kidney's upper pole
                    ridge = np.array([beside + side * 5 * k, crus_center[1] - 5 * k, z])
                medial = np.array([beside, crus_center[1], z])  # against the crus's lateral side
                lateral = ridge + taper * np.array([side * lateral_len, lateral_back, 0.0])
                limbs += [Tube(np.array([ridge, medial]), np.full(2, thickness)),
                          Tube(np.array([ridge, lateral]), np.full(2, thickness))]  # fmt: skip
            shapes[name] = Union(limbs)
        return shapes

    def _iliac(self, aorta: Tube, ivc_line, bifurcation: float, floor: float) -> list[tuple[Tube, int]]:
        """Common iliac arteries from the bifurcation and veins into the IVC's lower end."""
        p, k = self.p, self.p.scale
        end, radius = aorta.points[-1], float(aorta.radii[-1])
        vein_end, vein_radius = ivc_line[0][-1], float(ivc_line[1][-1])
        vessels = []
        for side in (-1.0, 1.0):
            target = (side * 0.35 * p.cavity_a, self.front_of_spine(bifurcation) + 10 * k, floor - 1.5 * p.pitch)
            vessels.append((self.tube([end, target], [0.65 * radius, 0.6 * radius]), Tissue.ARTERY))
            vein_target = (target[0] - side * 6 * k, target[1] + 8 * k, target[2])
            vessels.append((self.tube([vein_end, vein_target], [0.7 * vein_radius, 0.65 * vein_radius]),
                            Tissue.RENAL_VEIN))  # fmt: skip
        return vessels


@dataclass
class BowelDetail:
    """How one bowel loop departs from the average anatomy's smooth, fluid-filled tube.

    Attributes:
        collapsed: an empty loop: wall only, narrower (``radius_factor``).
        radius_factor: its radius relative to the drawn one.
        gas_level: gas above this height (radii; -1 none, 1 all).
        mottle: gas bubbles through the content (faeces in the colon), or None.
    """

    collapsed: bool
    radius_factor: float
    gas_level: float
    mottle: Plaques | None


COLLAPSED_SHARE = 0.35
"""Share of small-bowel loops drawn collapsed (empty loops are the rule between meals)."""
MOTTLED_COLON_SHARE = 0.8
"""Share of cases whose colon holds mottled faeces with gas bubbles rather than fluid."""


def bowel_detail(rng: np.random.Generator, loops: int) -> list[BowelDetail]:
    """Per loop (the colon first, then the small-bowel loops): collapse, fluid and gas, faeces."""
    mottle = None
    if rng.random() < MOTTLED_COLON_SHARE:
        # Bubbles a few millimetres across: wave numbers of about 2 pi / 12 mm.
        mottle = Plaques(rng.normal(0.0, 0.35, (4, 3)), rng.uniform(0, 2 * np.pi, 4), rng.uniform(0.8, 1.6))
    details = [BowelDetail(False, 1.0, float(rng.uniform(-0.6, 0.4)), mottle)]
    for _ in range(loops - 1):
        collapsed = bool(rng.random() < COLLAPSED_SHARE)
        details.append(BowelDetail(collapsed, 0.55 if collapsed else 1.0, float(rng.uniform(-0.97, -0.3)), None))
    return details


ABDOMEN_PELVIS_SHARE = 0.5
"""With ``detailed``: share of the cases scanned abdomen and pelvis, down to the bladder (the
common clinical protocol; FLARE22's scans include both kinds)."""
PELVIS_EXTRA_MM = (80.0, 170.0)
"""How much further below the lowest organ such a scan reaches."""


def pelvis_field(rng: np.random.Generator) -> float:
    """How far (mm) below the usual field this case's scan reaches: 0, or an abdomen-pelvis scan."""
    return float(rng.uniform(*PELVIS_EXTRA_MM)) if rng.random() < ABDOMEN_PELVIS_SHARE else 0.0


def bladder(rng: np.random.Generator, patient: Patient):
    """The urinary bladder: in the lesser pelvis behind the pubic symphysis, low in front of the
    rectum, its size with its filling (Gray's Anatomy, the urinary bladder); urine-filled."""
    k, pitch = patient.scale, patient.pitch
    filling = rng.uniform(0.2, 1.0)
    semi = np.array([40.0, 30.0, 30.0]) * k * (0.45 + 0.55 * filling)
    crest = -3.7 * pitch
    center = np.array([rng.normal(0.0, 6.0), -0.35 * patient.cavity_b, crest - rng.uniform(110.0, 140.0) * k + semi[2]])
    return Ellipsoid(center, semi, rotation((rng.normal(0, 8), 0, 0)), Bumps.random(rng, 3, 0.05, 1.5))
