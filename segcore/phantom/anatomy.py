"""The 13 labelled organs and the unlabelled vessels, as deformed shapes in the patient frame.

Positions follow adult anatomy (see :mod:`segcore.phantom.patient` for the frame): liver in
the right upper quadrant under the right dome, spleen against the left posterolateral
wall, kidneys beside the spine with their upper poles tilted medially and posteriorly,
adrenals above and medial to them, aorta in front of and left of the vertebral bodies, IVC
to its right, pancreas across the midline in front of the aorta with its head in the
duodenal C-loop, stomach in the left upper quadrant joined by the esophagus at the cardia,
gallbladder under the liver. Each organ's size and position vary per patient, and its
surface carries a smooth random deformation.

Organs are painted in :data:`PAINT_ORDER` and a voxel keeps the first organ that claims it,
so the small organs (adrenals, esophagus, gallbladder, vessels) are never eaten by the
large ones that surround them (liver, stomach, spleen).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcore.labels import ORGAN_IDS
from segcore.phantom.detailed import DetailedBuilder, Plaques
from segcore.phantom.patient import Patient
from segcore.phantom.shapes import Bumps, Difference, Ellipsoid, Shape, Tube, Union, rotation, smooth_path
from segcore.phantom.tissues import ORGAN_BASE, Tissue

PAINT_ORDER: tuple[str, ...] = (
    "right_adrenal_gland",
    "left_adrenal_gland",
    "esophagus",
    "gallbladder",
    "aorta",
    "ivc",
    "pancreas",
    "duodenum",
    "right_kidney",
    "left_kidney",
    "spleen",
    "stomach",
    "liver",
)
"""Painting priority: smallest and most enclosed first."""

PASSAGES = frozenset({"aorta", "ivc", "esophagus"})
"""Organs that continue through the diaphragm into the chest (they may replace lung and heart)."""

TUBE_STEP_MM = 10.0
"""Centreline sampling step of tubular organs (mm); coarser grids use a coarser step."""

VARIED_SPREAD = 2.5
"""With ``vary``: how many times wider organ positions and sizes scatter around the average anatomy."""
VARIED_BUMPS = 1.8
"""With ``vary``: how many times stronger each organ's surface deformation is."""


@dataclass
class Organ:
    """One labelled organ.

    Attributes:
        name: FLARE22 organ name (:data:`segcore.labels.ORGAN_IDS`).
        shape: its shape in the patient frame.
        core_tissue: tissue of its inner part (kidney medulla, stomach content...), or None.
        core_below: field value under which a voxel is core (the field is -1 on the axis or centre).
        gas_above: for hollow organs, core voxels whose height over the centreline is below this
            (anterior, in radii) hold gas instead of ``core_tissue``.
        plaques: calcium in the organ's wall (tissue only: the voxels keep the organ's label), or None.
    """

    name: str
    shape: Shape
    core_tissue: int | None = None
    core_below: float = -1.0
    gas_above: float | None = None
    plaques: Plaques | None = None

    @property
    def label(self) -> int:
        return ORGAN_IDS[self.name]

    @property
    def tissue(self) -> int:
        return ORGAN_BASE + self.label


@dataclass
class Vessel:
    """An unlabelled vessel: image only. ``inside`` names the organ it runs in (None: outside organs).
    ``first``: a structure painted into loose tissue before the organs, which then lie around it
    (the diaphragmatic crura)."""

    shape: Shape
    tissue: int
    inside: str | None = None
    first: bool = False


class _Builder:
    """Draws one patient's organs; every random number comes from ``rng`` in a fixed order.

    ``spread`` widens every position and size draw around its mean and ``bumps`` scales the
    surface deformation; both act on the same draws, so ``1.0`` gives the average anatomy's
    cases exactly and a varied case is the same patient's organs, moved and reshaped further.
    """

    def __init__(
        self, patient: Patient, rng: np.random.Generator, min_radius_mm: float, spread: float = 1.0, bumps: float = 1.0
    ):
        self.p, self.rng, self.min_radius = patient, rng, min_radius_mm
        self.spread, self.bumps = spread, bumps
        self.step = max(TUBE_STEP_MM, 2.0 * min_radius_mm)
        p = patient
        self.k = p.scale
        self.aorta_y = p.spine_y - p.spine_ry - 11.0 * p.scale - 3.0
        self.ivc_y = p.spine_y - p.spine_ry - 10.0 * p.scale
        self.aorta_x, self.ivc_x = 12 * p.scale, -25 * p.scale  # where the renal vessels join them

    def detail(self, organs: dict[str, Organ], rng: np.random.Generator) -> list[Vessel]:
        """Replace the aorta, IVC and adrenals by :mod:`segcore.phantom.detailed`'s and return the
        crura and iliac vessels; the renal vessels then join the new aorta and IVC."""
        kidneys = (organs["right_kidney"].shape, organs["left_kidney"].shape)
        retro = DetailedBuilder(self.p, rng, self.min_radius, self.step, kidneys).build(self.p.dome_right + 400.0)
        organs["aorta"] = Organ("aorta", retro.aorta, plaques=retro.plaques)
        organs["ivc"] = Organ("ivc", retro.ivc)
        for name, shape in retro.adrenals.items():
            organs[name] = Organ(name, shape)
        self.aorta_x, self.ivc_x, self.ivc_y = retro.renal
        crura = [Vessel(crus, Tissue.MUSCLE, first=True) for crus in retro.crura]
        return crura + [Vessel(tube, tissue) for tube, tissue in retro.iliac]

    def jitter(self, point, sd: float = 4.0) -> np.ndarray:
        return np.asarray(point, dtype=np.float64) + self.spread * self.rng.normal(0.0, sd, 3)

    def widen(self, values, middle: float, floor: float):
        """Draws moved ``spread`` times further from ``middle``, not below ``floor`` (as drawn when 1)."""
        if self.spread == 1.0:
            return values
        return np.maximum(floor, middle + self.spread * (np.asarray(values) - middle))

    def factor(self, low: float, high: float) -> float:
        return float(self.widen(self.rng.uniform(low, high), (low + high) / 2, 0.5 * low))

    def tube(self, control, radii, sd: float = 3.0, radius_jitter: float = 0.1) -> Tube:
        control = np.array([self.jitter(point, sd) for point in control])
        scatter = self.widen(self.rng.uniform(1 - radius_jitter, 1 + radius_jitter, len(radii)), 1.0, 0.5)
        radii = np.asarray(radii, dtype=np.float64) * scatter
        points, radii = smooth_path(control, np.maximum(radii, self.min_radius), self.step)
        return Tube(points, radii)

    def ellipsoid(self, center, semi_axes, angles, bump: float = 0.08, frequency: float = 2.0) -> Ellipsoid:
        semi = np.maximum(np.asarray(semi_axes, dtype=np.float64), self.min_radius)
        angles = np.asarray(angles, dtype=np.float64) + self.spread * self.rng.normal(0.0, 4.0, 3)
        center = self.jitter(center)  # drawn before the bumps: the realistic cases' order
        return Ellipsoid(center, semi, rotation(tuple(angles)), Bumps.random(self.rng, 4, self.bumps * bump, frequency))

    def organs(self) -> dict[str, Organ]:
        """Every labelled organ, by name: the solid organs, then the tubular ones (in this order of draws)."""
        organs: dict[str, Organ] = {}
        self._solid_organs(organs)
        self._tubular_organs(organs)
        return organs

    def _solid_organs(self, organs: dict[str, Organ]) -> None:
        """Liver, gallbladder, kidneys, spleen and adrenals."""
        p, k = self.p, self.k
        a, b, pitch = p.cavity_a, p.cavity_b, p.pitch
        h_right, h_left, sy = p.dome_right, p.dome_left, p.spine_y

        # The liver's size varies less than the patient's: big patients are mostly bigger by fat and muscle.
        size = self.factor(0.84, 1.0) / k**0.4
        # Right lobe tilted so that its tip hangs low at the side; the visceral cut hollows the
        # underside towards the midline, leaving the wedge a coronal slice shows.
        right_lobe = self.ellipsoid((-0.5 * a, -0.05 * b, h_right - 80 * k),
                                    np.array([0.55 * a, 0.8 * b, 95 * k]) * size, (0, 20, 0), 0.08, 2.0)  # fmt: skip
        left_lobe = self.ellipsoid((0.12 * a, -0.55 * b, h_right - 48 * k),
                                   np.array([0.48 * a, 0.30 * b, 40 * k]) * size, (0, -12, 8), 0.08, 2.5)  # fmt: skip
        visceral = self.ellipsoid((-0.1 * a, 0.1 * b, h_right - 175 * k), np.array([0.45 * a, 0.7 * b, 75 * k]),
                                  (0, 0, 0), 0.05, 1.5)  # fmt: skip
        organs["liver"] = Organ("liver", Difference(Union([right_lobe, left_lobe]), visceral))

        size = self.factor(0.8, 1.2)
        organs["gallbladder"] = Organ(
            "gallbladder",
            self.ellipsoid((-0.42 * a, -0.62 * b, h_right - 128 * k), np.array([14, 16, 38]) * k * size, (30, -15, 0)),
            core_tissue=Tissue.BILE,
            core_below=-0.15,
        )

        for name, side, level in (("right_kidney", -1.0, -1.3), ("left_kidney", 1.0, -0.8)):
            size = self.factor(0.88, 1.12)
            semi = np.array([25, 22, 54]) * k * size
            center = np.array([side * (p.spine_rx + 46 * k), sy - 13 * k, level * pitch])
            # Upper pole medial (about y) and posterior (about x); hilum facing forwards and inwards.
            kidney = self.ellipsoid(center, semi, (-15, -side * 12, side * 30), 0.05, 1.5)
            sinus_center = kidney.center + np.array([-side * 0.75 * semi[0], -0.35 * semi[1], 0.0])
            sinus = Ellipsoid(sinus_center, semi * np.array([0.45, 0.4, 0.42]), kidney.axes)
            organs[name] = Organ(name, Difference(kidney, sinus), core_tissue=Tissue.KIDNEY_MEDULLA, core_below=-0.35)

        size = self.factor(0.85, 1.2)
        wall_angle = float(np.degrees(np.arctan2(0.45 * b, 0.8 * a)))
        organs["spleen"] = Organ(
            "spleen",
            self.ellipsoid(
                (0.76 * a, 0.38 * b, h_left - 58 * k), np.array([20, 38, 55]) * k * size, (-20, 0, wall_angle), 0.1, 2.0
            ),  # fmt: skip
        )

        adrenal = 4.0 * k
        for name, side, apex, medial, lateral in (
            ("right_adrenal_gland", -1.0, (34, -10, 1.35), (28, -4, 0.45), (46, 4, 0.55)),
            ("left_adrenal_gland", 1.0, (32, -14, 1.1), (30, -8, 0.2), (44, -4, 0.35)),
        ):
            apex_point = (side * apex[0] * k, sy + apex[1] * k, apex[2] * pitch)
            limbs = [self.tube([apex_point, (side * end[0] * k, sy + end[1] * k, end[2] * pitch)],
                               [adrenal * 1.2, adrenal * 0.8], sd=1.5) for end in (medial, lateral)]  # fmt: skip
            organs[name] = Organ(name, Union(limbs))

    def _tubular_organs(self, organs: dict[str, Organ]) -> None:
        """Aorta, IVC, esophagus, stomach, duodenum and pancreas."""
        p, k = self.p, self.k
        pitch = p.pitch
        h_right, h_left, ay, iy, sy = p.dome_right, p.dome_left, self.aorta_y, self.ivc_y, p.spine_y
        top = h_right + 400.0  # beyond any field of view: tubes are cut by the grid, not by their ends
        organs["aorta"] = Organ("aorta", self.tube(
            [(26 * k, sy - 12 * k, top), (20 * k, sy - 20 * k, h_right + 20), (12 * k, ay, 2.5 * pitch),
             (12 * k, ay, -1.5 * pitch), (8 * k, ay + 2, -3.1 * pitch)],
            np.array([12.5, 12.0, 11.5, 10.5, 9.5]) * k * self.factor(0.9, 1.15),
            sd=2.0, radius_jitter=0.03))  # fmt: skip
        organs["ivc"] = Organ("ivc", self.tube(
            [(-20 * k, iy - 20 * k, h_right + 30), (-22 * k, iy - 8 * k, h_right - 30), (-25 * k, iy, -0.5 * pitch),
             (-22 * k, iy + 2, -3.1 * pitch)],
            np.array([13, 12, 11, 10.5]) * k * self.factor(0.85, 1.15), sd=2.0, radius_jitter=0.05))  # fmt: skip
        cardia = (28 * k, ay - 20 * k, h_left - 38 * k)
        organs["esophagus"] = Organ("esophagus", self.tube(
            [(0, sy - p.spine_ry - 14 * k, top), (4 * k, sy - p.spine_ry - 22 * k, h_right + 30),
             (20 * k, sy - p.spine_ry - 40 * k, h_left - 15 * k), cardia],
            np.array([8, 9, 9, 11]) * k, sd=2.0))  # fmt: skip

        filling = self.factor(0.75, 1.2)
        organs["stomach"] = Organ("stomach", self.tube(
            [cardia, (55 * k, 8 * k, h_left - 35 * k), (70 * k, -28 * k, h_left - 60 * k),
             (52 * k, -55 * k, -0.0 * pitch), (12 * k, -62 * k, -0.6 * pitch), (-22 * k, -45 * k, -0.35 * pitch)],
            np.array([14, 32, 33, 28, 22, 12]) * k * np.array([1, filling, filling, filling, 1, 1]), sd=5.0),
            core_tissue=Tissue.STOMACH_CONTENT, core_below=-0.15, gas_above=self.factor(-0.9, -0.2))  # fmt: skip

        organs["duodenum"] = Organ("duodenum", self.tube(
            [(-22 * k, -45 * k, -0.35 * pitch), (-45 * k, -28 * k, -0.35 * pitch), (-70 * k, ay - 40 * k, -0.7 * pitch),
             (-68 * k, ay - 30 * k, -2.1 * pitch), (-35 * k, ay - 27 * k, -2.85 * pitch),
             (5 * k, ay - 26 * k, -2.9 * pitch), (30 * k, ay - 30 * k, -2.3 * pitch),
             (38 * k, ay - 36 * k, -1.4 * pitch)],
            np.array([11, 13, 13, 13, 12, 12, 12, 11]) * k, sd=3.0),
            core_tissue=Tissue.BOWEL_CONTENT, core_below=-0.25, gas_above=-0.8)  # fmt: skip

        organs["pancreas"] = Organ("pancreas", self.tube(
            [(-30 * k, ay - 25 * k, -1.3 * pitch), (-40 * k, ay - 38 * k, -0.85 * pitch),
             (-8 * k, ay - 42 * k, -0.45 * pitch), (30 * k, ay - 36 * k, -0.1 * pitch),
             (62 * k, ay - 18 * k, 0.35 * pitch), (82 * k, ay - 12 * k, 0.45 * pitch)],
            np.array([11, 15, 11, 11, 9.5, 8]) * k * self.factor(0.85, 1.15), sd=3.0))  # fmt: skip

    def vessels(self) -> list[Vessel]:
        p, k = self.p, self.k
        pitch, h_right, ay, iy, sy = p.pitch, p.dome_right, self.aorta_y, self.ivc_y, p.spine_y
        ax, ix = self.aorta_x, self.ivc_x
        confluence = (-5 * k, ay - 24 * k, -0.4 * pitch)
        porta = (-35 * k, 10 * k, 0.5 * pitch)
        hepatic_root = (-22 * k, iy - 8 * k, h_right - 25 * k)
        kidney_x = p.spine_rx + 25 * k
        specs = [
            ([confluence, porta, (-70 * k, 0, 1.0 * pitch), (-95 * k, -10 * k, 1.5 * pitch)], [7, 6.5, 5, 3],
             Tissue.PORTAL_VEIN, "liver"),
            ([porta, (-10 * k, -30 * k, 1.2 * pitch), (30 * k, -55 * k, 1.5 * pitch)], [5, 4, 3], Tissue.PORTAL_VEIN,
             "liver"),
            ([hepatic_root, (-60 * k, 10 * k, h_right - 40 * k), (-100 * k, 25 * k, h_right - 50 * k)], [6, 4, 2.5],
             Tissue.HEPATIC_VEIN, "liver"),
            ([hepatic_root, (-35 * k, -25 * k, h_right - 45 * k), (-45 * k, -50 * k, h_right - 60 * k)], [5, 4, 2.5],
             Tissue.HEPATIC_VEIN, "liver"),
            ([hepatic_root, (-5 * k, -25 * k, h_right - 30 * k), (15 * k, -50 * k, h_right - 40 * k)], [5, 3.5, 2.5],
             Tissue.HEPATIC_VEIN, "liver"),
            ([confluence, (30 * k, ay - 20 * k, -0.05 * pitch), (62 * k, ay - 6 * k, 0.35 * pitch),
              (88 * k, ay - 2 * k, 1.0 * pitch)], [6, 5, 4.5, 4], Tissue.PORTAL_VEIN, None),
            ([confluence, (-10 * k, ay - 32 * k, -2.0 * pitch), (-12 * k, ay - 40 * k, -3.5 * pitch)], [6, 5, 4],
             Tissue.PORTAL_VEIN, None),
            ([(ax, ay - 10 * k, -0.3 * pitch), (10 * k, ay - 20 * k, -0.8 * pitch),
              (4 * k, ay - 28 * k, -2.2 * pitch), (0, ay - 35 * k, -3.6 * pitch)], [3.5, 3.5, 3, 2.5],
             Tissue.ARTERY, None),
            ([(ax, ay - 10 * k, 0.5 * pitch), (14 * k, ay - 25 * k, 0.6 * pitch)], [3.5, 3], Tissue.ARTERY, None),
            ([(kidney_x, sy - 12 * k, -0.8 * pitch), (ax, ay - 16 * k, -0.55 * pitch),
              (ix, iy, -0.55 * pitch)], [5, 4.5, 5], Tissue.RENAL_VEIN, None),
            ([(-kidney_x, sy - 12 * k, -1.3 * pitch), (ix, iy, -1.1 * pitch)], [4.5, 5], Tissue.RENAL_VEIN, None),
            ([(ax, ay, -0.7 * pitch), (kidney_x, sy - 5 * k, -0.8 * pitch)], [3, 2.5], Tissue.ARTERY, None),
            ([(ax, ay, -0.8 * pitch), (-kidney_x, sy - 5 * k, -1.3 * pitch)], [3, 2.5], Tissue.ARTERY, None),
        ]  # fmt: skip
        vessels = []
        for control, radii, tissue, inside in specs:
            control = np.array([self.jitter(point, 2.0) for point in control])
            points, radii = smooth_path(control, np.asarray(radii, dtype=np.float64) * k, self.step)
            vessels.append(Vessel(Tube(points, radii), tissue, inside))
        return vessels


def build_anatomy(
    patient: Patient,
    rng: np.random.Generator,
    min_radius_mm: float = 0.0,
    vary: bool = False,
    detail: np.random.Generator | None = None,
) -> tuple[list[Organ], list[Vessel]]:
    """The organs in :data:`PAINT_ORDER` and the unlabelled vessels of one patient.

    Args:
        patient: the patient.
        rng: the case's anatomy stream (the same stream gives the same organs).
        min_radius_mm: thinnest allowed tube radius / ellipsoid half-axis, so that coarse grids
            still sample thin organs (adrenals, esophagus); 0 for the true anatomy.
        vary: scatter positions and sizes :data:`VARIED_SPREAD` times wider and deform surfaces
            :data:`VARIED_BUMPS` times more (the same random draws, so the same patient).
        detail: the case's detail stream: draw the aorta, IVC, adrenals, crura and iliac vessels
            from their anatomical relations (:mod:`segcore.phantom.detailed`); None: the average
            anatomy's.
    """
    spread, bumps = (VARIED_SPREAD, VARIED_BUMPS) if vary else (1.0, 1.0)
    builder = _Builder(patient, rng, min_radius_mm, spread, bumps)
    organs = builder.organs()
    extra = builder.detail(organs, detail) if detail is not None else []
    vessels = builder.vessels() + extra
    return [organs[name] for name in PAINT_ORDER], vessels


def organ_z_range(organs: list[Organ]) -> tuple[float, float]:
    """Lowest and highest z (mm) a full field of view must hold: every organ, the chest passages' abdominal part."""
    lows, highs = [], []
    for organ in organs:
        low, high = organ.shape.bounds()
        lows.append(low[2])
        if organ.name not in PASSAGES:
            highs.append(high[2])
    return float(min(lows)), float(max(highs))
