"""What patients have and the average anatomy lacks (``generate_case(clinical=True)``): lesions
counted as their organ (:mod:`segcore.phantom.lesions`), the gallbladder from contracted to
distended with stones, the stomach from collapsed to distended with food, and the IVC as contrast
shows it, its retrohepatic part enclosed by the caudate lobe.

Rules and their sources:

* **gallbladder**: pear-shaped, 7-10 cm long and about 3 cm wide, holding 30-50 mL; its neck turns
  towards the porta hepatis, its fundus points forwards, down and to the right and often projects
  below the liver's inferior border (Gray's Anatomy, the gallbladder). After a meal it contracts to
  a few millilitres and its wall looks thick (over 3 mm); fasting it distends (over 50 mL, hydrops
  when larger); bile is 0-25 HU; stones in 10-15 % of adults, a minority calcified, lying in the
  dependent (posterior, supine) part (Webb, Fundamentals of Body CT, gallbladder; Federle,
  Diagnostic Imaging: Abdomen, cholelithiasis);
* **stomach**: empty, it collapses: a thick wall (up to 10-15 mm at the antrum) thrown into rugal
  folds around a slit of lumen; full, the wall thins to 2-5 mm, the folds efface, and fluid, food
  and gas fill it, gas uppermost (anterior, supine) (Webb, stomach; Gray's Anatomy, the stomach);
* **IVC**: in the arterial phase only the renal veins have returned contrast, so the infrarenal IVC
  is unenhanced and the suprarenal enhanced; at and above the renal veins enhanced and unenhanced
  blood mix in streams for a few centimetres (a flow artefact, not a thrombus) (Webb,
  retroperitoneum; Federle, IVC flow artefacts); the retrohepatic IVC runs in a groove of the bare
  area with the caudate lobe in front of and to the left of it, and in many patients a bridge of
  liver tissue closes the groove behind it (Gray's Anatomy, the liver, caudate lobe).

Each part draws from its own stream of the case (``lesions``, ``gallbladder``, ``stomach``,
``ivc``), so the average anatomy's organs stay the same patient's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from segcore.labels import ORGAN_IDS
from segcore.phantom.anatomy import Organ
from segcore.phantom.detailed import Plaques, center_at
from segcore.phantom.lesions import Lesion, OrganDepth, draw_lesions, paint_lesions
from segcore.phantom.patient import Patient
from segcore.phantom.shapes import Bumps, Ellipsoid, Grid, Shape, Tube, Union, rotation, smooth_path
from segcore.phantom.tissues import Finding, Tissue

GALLBLADDER_STATES: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "contracted": (0.15, (2.0, 10.0), (3.0, 6.0)),
    "normal": (0.65, (15.0, 50.0), (1.5, 3.0)),
    "distended": (0.2, (50.0, 85.0), (1.0, 2.5)),
}
"""state: (chance, volume mL, wall thickness mm)."""
FUNDUS_BELOW_LIVER_SHARE = 0.6
"""Share of gallbladders whose fundus reaches below the liver's edge (the usual case, Gray's Anatomy)."""
STONE_SHARE = 0.15
CALCIFIED_STONE_SHARE = 0.3

STOMACH_STATES: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "collapsed": (0.35, (0.4, 0.55), (6.0, 12.0)),
    "moderate": (0.4, (0.85, 1.1), (3.0, 5.0)),
    "distended": (0.25, (1.2, 1.45), (2.0, 4.0)),
}
"""state: (chance, radius factor over the average stomach's body, wall thickness mm)."""
FOOD_SHARE = {"collapsed": 0.0, "moderate": 0.3, "distended": 0.6}
"""Chance that a stomach of each state holds food."""

MIXING_MM = (15.0, 45.0)
"""How far above the renal veins enhanced and unenhanced blood mix in the IVC."""
ENCLOSED_SHARE = 0.5
"""Share of patients in whom liver tissue closes the IVC's groove behind it."""


@dataclass
class Flow:
    """How contrast reaches the IVC: unenhanced below ``renal_z``, mixed up to ``mixing_top``
    (unenhanced where ``pattern`` holds), enhanced above (z in mm)."""

    renal_z: float
    mixing_top: float
    pattern: Plaques


@dataclass
class Findings:
    """One patient's clinical findings.

    Attributes:
        lesions: lesions and gallstones, painted into their organs.
        food: the stomach's shape and the food and gas-bubble patterns of its content, or None.
        ivc: the IVC's shape and its :class:`Flow`, or None without an IVC.
        meta: JSON-friendly description.
    """

    lesions: list[Lesion]
    food: tuple[Shape, Plaques, Plaques] | None
    ivc: tuple[Shape, Flow] | None
    meta: dict

    def without(self, removed: set[str]) -> Findings:
        """The findings of a patient who lacks the ``removed`` organs."""
        lesions = [lesion for lesion in self.lesions if lesion.organ not in removed]
        meta = dict(self.meta, lesions=[entry for entry in self.meta["lesions"] if entry["organ"] not in removed])
        for organ in removed & {"gallbladder", "stomach"}:
            meta[organ] = None
        food = None if "stomach" in removed else self.food
        return Findings(lesions, food, None if "ivc" in removed else self.ivc, meta)


def _choose(rng: np.random.Generator, states: dict) -> str:
    return str(rng.choice(list(states), p=[entry[0] for entry in states.values()]))


def _frame(direction: np.ndarray) -> np.ndarray:
    """A rotation whose third column is ``direction`` (unit)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = np.cross(helper, direction)
    first /= np.linalg.norm(first)
    return np.column_stack([first, np.cross(direction, first), direction])


def _liver_column(liver: OrganDepth, point: np.ndarray) -> np.ndarray:
    """Whether each sampled level of the liver holds liver in the column (5 mm across) through ``point``."""
    x = int(np.clip(np.searchsorted(liver.grid.x, point[0]), 0, liver.grid.x.size - 1))
    y = int(np.clip(np.searchsorted(liver.grid.y, point[1]), 0, liver.grid.y.size - 1))
    return liver.inside[:, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].any(axis=(1, 2))


def fundus_below_liver(liver: OrganDepth, tip: np.ndarray) -> bool:
    """Whether ``tip`` lies below the liver in its column (or where no liver is above or below it)."""
    column = _liver_column(liver, tip)
    return not column.any() or bool(tip[2] < liver.grid.z[np.flatnonzero(column)[0]])


def draw_gallbladder(rng: np.random.Generator, drawn: Ellipsoid, liver: OrganDepth, patient: Patient):
    """The gallbladder in its state, from the average one's place, and its stones; meta."""
    k = patient.scale
    state = _choose(rng, GALLBLADDER_STATES)
    _, volume_range, wall_range = GALLBLADDER_STATES[state]
    volume_ml, wall = float(rng.uniform(*volume_range)), float(rng.uniform(*wall_range))
    # The neck in the fossa on the liver's visceral surface, towards the porta hepatis.
    neck = np.asarray(drawn.center, dtype=np.float64) + np.array([8.0, 25.0, 0.0]) * k
    column = _liver_column(liver, neck)
    liver_low = float(liver.grid.z[np.flatnonzero(column)[0]]) if column.any() else float(drawn.center[2])
    below = bool(rng.random() < FUNDUS_BELOW_LIVER_SHARE)
    # Tries of (elongation, neck above the liver's edge mm, the axis's course); the first that puts
    # the fundus where it was drawn to be wins (else the last).
    tries = zip(rng.uniform(1.6, 3.2, 16), rng.uniform(0.0, 60.0, 16), rng.uniform(0.3, 0.8, 16),
                rng.uniform(0.0, 0.7, 16))  # fmt: skip
    scatter = rng.normal(0.0, 0.08, 3)
    for elongation, rise, forward, fall in tries:
        direction = np.array([-0.2, -forward, -fall]) + scatter  # the fundus forwards, down and right
        direction /= np.linalg.norm(direction)
        half_length = elongation * (3.0 * 1000.0 * volume_ml / (4.0 * np.pi * elongation)) ** (1 / 3)
        neck[2] = liver_low + rise
        if fundus_below_liver(liver, neck + 2.0 * half_length * direction) == below:
            break
    width = (3.0 * 1000.0 * volume_ml / (4.0 * np.pi * elongation)) ** (1 / 3)
    semi = np.array([width, width, elongation * width])
    shape = Ellipsoid(neck + semi[2] * direction, semi, _frame(direction), Bumps.random(rng, 3, 0.03, 1.5))
    organ = Organ("gallbladder", shape, core_tissue=Finding.BILE, core_below=-min(0.8, wall / width))
    stones = _stones(rng, shape, wall) if rng.random() < STONE_SHARE else []
    tip = neck + 2.0 * semi[2] * direction
    meta = {"state": state, "volume_ml": round(volume_ml, 1), "wall_mm": round(wall, 2), "stones": len(stones),
            "fundus_below_liver": fundus_below_liver(liver, tip)}  # fmt: skip
    return organ, stones, meta


def _stones(rng: np.random.Generator, shape: Ellipsoid, wall: float) -> list[Lesion]:
    """1-12 stones, faceted against each other, in the lumen's dependent (posterior) half."""
    depth = OrganDepth(shape, 1.0)
    lumen = depth.depth - wall
    if lumen.max() < 2.0:
        return []
    ys = np.broadcast_to(depth.grid.y[None, :, None], lumen.shape)
    dependent = ys >= np.median(ys[lumen > 1.5])
    tissue = Finding.CALCIFIED_STONE if rng.random() < CALCIFIED_STONE_SHARE else Finding.SOFT_STONE
    stones = []
    for _ in range(int(min(12, rng.geometric(0.35)))):
        radius = float(rng.uniform(1.5, min(10.0, lumen.max() - 0.5)))
        center = depth.place(rng, radius, radius + wall, np.inf, gap=0.0, where=dependent)
        if center is not None:
            stone = Ellipsoid(center, radius * rng.uniform(0.85, 1.15, 3), rotation(tuple(rng.uniform(0, 180, 3))))
            stones.append(Lesion("gallbladder", "stone", stone, round(2.0 * radius, 2), tissue))
    return stones


def draw_stomach(rng: np.random.Generator, drawn: Organ, min_radius_mm: float):
    """The stomach in its state, along the average one's course; food patterns or None; meta."""
    state = _choose(rng, STOMACH_STATES)
    _, factors, wall_range = STOMACH_STATES[state]
    tube: Tube = drawn.shape
    factor, wall = float(rng.uniform(*factors)), float(rng.uniform(*wall_range))
    weight = tube.radii / tube.radii.max()  # the body and fundus change most, the cardia and pylorus least
    radii = np.maximum(tube.radii * (1.0 + (factor - 1.0) * weight), min_radius_mm)
    body = float(np.median(radii[weight > 0.6]))
    core_below = -min(0.8, wall / body)
    gas = {"collapsed": (-0.97, -0.85), "moderate": (-0.9, -0.3), "distended": (-0.9, 0.1)}[state]
    folds = None
    if state != "distended":  # rugae: folds 3-6 mm high into the lumen (collapsed: most of it)
        height = rng.uniform(3.0, 6.0) * (1.5 if state == "collapsed" else 1.0)
        folds = Plaques(rng.normal(0.0, 0.35, (3, 3)), rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.0, 0.6),
                        core_below - height / body, drawn.tissue)  # fmt: skip
    shape = Tube(tube.points, radii)
    organ = Organ("stomach", shape, Tissue.STOMACH_CONTENT, core_below, float(rng.uniform(*gas)), folds)
    food = None
    if rng.random() < FOOD_SHARE[state]:
        # Six waves each, so that the patterns are blobs rather than stripes: food lumps about
        # 15 mm across, gas bubbles a few millimetres across in them.
        food = (shape,
                Plaques(rng.normal(0.0, 0.2, (6, 3)), rng.uniform(0, 2 * np.pi, 6), rng.uniform(-0.8, 0.4),
                        -np.inf, Finding.FOOD),
                Plaques(rng.normal(0.0, 0.5, (6, 3)), rng.uniform(0, 2 * np.pi, 6), rng.uniform(2.4, 3.0),
                        -np.inf, Tissue.GAS))  # fmt: skip
    meta = {"state": state, "radius_factor": round(factor, 3), "wall_mm": round(wall, 2), "food": food is not None}
    return organ, food, meta


def centreline(shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Centre points ``(n, 3)`` and radii of a tube, or of the detailed IVC's two flattened lobes."""
    if isinstance(shape, Tube):
        return shape.points, shape.radii
    points = np.mean([part.points for part in shape.parts], axis=0)
    return points, np.mean([part.radii for part in shape.parts], axis=0) * 1.2


def draw_ivc(rng: np.random.Generator, ivc: Shape, liver: Organ, patient: Patient):
    """The liver with its caudate lobe around the retrohepatic IVC, and the IVC's :class:`Flow`; meta."""
    k, pitch = patient.scale, patient.pitch
    line = centreline(ivc)
    levels = np.linspace(0.4 * pitch, patient.dome_right - 30.0 * k, 6)
    enclosed = bool(rng.random() < ENCLOSED_SHARE)
    behind = rng.uniform(2.0, 6.0) if enclosed else rng.uniform(-8.0, -2.0)  # liver behind the IVC (mm)
    front = rng.uniform(10.0, 22.0) * k  # the caudate lobe in front of it
    points, radii = [], []
    for z in levels:
        center, radius = center_at(line, float(z))
        shift = 0.5 * (front - behind)
        points.append(center + np.array([0.5 * shift, -shift, 0.0]))  # forwards and to the left
        radii.append(radius + 0.5 * (front + behind))
    caudate = Tube(*smooth_path(np.array(points), np.array(radii), 10.0))
    renal_z = -1.1 * pitch  # the right renal vein's entry, the lower of the two
    streams = Plaques(rng.normal(0.0, 0.3, (3, 3)), rng.uniform(0, 2 * np.pi, 3), rng.uniform(-0.5, 0.5))
    flow = Flow(renal_z, renal_z + float(rng.uniform(*MIXING_MM)), streams)
    meta = {"caudate_encloses": enclosed, "mixing_mm": round(flow.mixing_top - renal_z, 1)}
    return Organ("liver", Union([liver.shape, caudate])), flow, meta


def draw_clinical(
    patient: Patient,
    organs: list[Organ],
    rng: Callable[[str], np.random.Generator],
    min_radius_mm: float = 0.0,
    lesions: bool = True,
) -> tuple[list[Organ], Findings]:
    """One patient's organs as the clinic sees them, and the findings to paint into them.

    Args:
        patient: the patient.
        organs: the average anatomy's organs (paint order); the liver, gallbladder and stomach are
            replaced, the others kept.
        rng: the case's stream of each part, by name (``lesions``, ``gallbladder``, ``stomach``, ``ivc``).
        min_radius_mm: the grid's floor for thin shapes.
        lesions: also draw the lesions (not needed to plan the field of view).
    """
    by_name = {organ.name: organ for organ in organs}
    liver, flow, ivc_meta = draw_ivc(rng("ivc"), by_name["ivc"].shape, by_name["liver"], patient)
    by_name["liver"] = liver
    liver_depth = OrganDepth(liver.shape)
    gallbladder, stones, gallbladder_meta = draw_gallbladder(rng("gallbladder"), by_name["gallbladder"].shape,
                                                             liver_depth, patient)  # fmt: skip
    stomach, food, stomach_meta = draw_stomach(rng("stomach"), by_name["stomach"], min_radius_mm)
    by_name.update(gallbladder=gallbladder, stomach=stomach)
    found = draw_lesions({name: by_name[name].shape for name in ("liver", "right_kidney", "left_kidney", "spleen")},
                         rng("lesions"), liver_depth) if lesions else []  # fmt: skip
    meta = {
        "lesions": [
            {"organ": lesion.organ, "kind": lesion.kind, "diameter_mm": lesion.diameter_mm, "surface": lesion.surface}
            for lesion in found
        ],  # fmt: skip
        "gallbladder": gallbladder_meta,
        "stomach": stomach_meta,
        "ivc": ivc_meta,
    }
    findings = Findings(found + stones, food, (by_name["ivc"].shape, flow), meta)
    return [by_name[organ.name] for organ in organs], findings


def paint_findings(grid: Grid, findings: Findings, tissue: np.ndarray, label: np.ndarray) -> dict[str, int]:
    """Paint the findings into the organs' voxels (``(z, y, x)`` maps, in place): lesions and
    stones, food in the stomach's content, the IVC's blood by level. Returns the label voxels each
    organ gained (lesions bulging at its surface)."""
    gained = paint_lesions(grid, findings.lesions, tissue, label)
    if findings.food is not None:
        shape, food, bubbles = findings.food
        box = grid.box(*shape.bounds())
        if box is not None:
            view = tissue[box.slices]
            content = (label[box.slices] == ORGAN_IDS["stomach"]) & (view == Tissue.STOMACH_CONTENT)
            pattern = food.mask(box)
            view[content & pattern] = food.tissue
            view[content & pattern & bubbles.mask(box)] = bubbles.tissue
    if findings.ivc is not None:
        shape, flow = findings.ivc
        box = grid.box(*shape.bounds())
        if box is not None:
            ivc = label[box.slices] == ORGAN_IDS["ivc"]
            z = np.broadcast_to(box.z, ivc.shape)
            unenhanced = (z < flow.renal_z) | ((z < flow.mixing_top) & flow.pattern.mask(box))
            codes = np.where(unenhanced, np.uint8(Finding.IVC_INFRARENAL), np.uint8(Finding.IVC_RENAL_RETURN))
            tissue[box.slices][ivc] = codes[ivc]
    return gained
