"""Focal lesions counted as their organ: liver cysts, metastases and haemangiomas, renal cysts,
splenic cysts (``generate_case(clinical=True)``).

FLARE22's annotators label a lesion as part of the organ that holds it, so here every lesion
voxel keeps its organ's label; a lesion at the surface that bulges the contour (a subcapsular
liver lesion, an exophytic renal cyst) adds the bulge to the organ's label. Rules:

* **liver**: simple cysts are common (a few per cent of adults, several in many), sharp and round;
  metastases are the commonest malignant liver lesions and are usually several, 5 mm to several
  centimetres, hypovascular with a rim or hypervascular; cavernous haemangiomas are the commonest
  benign tumour, one to three, up to "giant" (> 4 cm); lesions at the capsule bulge the contour
  (Federle, Diagnostic Imaging: Abdomen, liver section; Webb, Fundamentals of Body CT, liver);
* **kidneys**: simple cysts in a quarter to a half of adults over 50, one to a few, cortical and
  often exophytic; a minority hyperdense or with a calcified wall (Bosniak II) (Federle, renal
  cysts; Webb, kidneys);
* **spleen**: an occasional (epidermoid or post-traumatic) cyst (Federle, splenic cyst).

Positions are drawn on each organ's own shape, sampled on a grid of :data:`SAMPLE_MM` whatever the
scan, so a case's lesions do not depend on how it is imaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segcore.labels import ORGAN_IDS
from segcore.phantom.detailed import Plaques
from segcore.phantom.shapes import Bumps, Ellipsoid, Grid, Shape, rotation
from segcore.phantom.tissues import Finding, Tissue

SAMPLE_MM = 2.5
"""Grid step on which an organ's shape is sampled to place its lesions."""
MAX_LIVER_LESIONS = 10
DIAMETER_MM = (5.0, 80.0)
"""The smallest and largest lesion diameter drawn."""
LIVER_LESION_SHARE = 0.65
"""Share of livers holding any lesion (cysts, metastases or haemangiomas)."""
LIVER_PATTERNS: dict[str, float] = {
    "cysts": 0.35,
    "hypodense_metastases": 0.25,
    "hyperdense_metastases": 0.1,
    "haemangiomas": 0.15,
    "mixed": 0.15,
}
"""What a liver with lesions holds, with its chance; ``mixed``: metastases beside a cyst or a haemangioma."""
CAPSULAR_SHARE = 0.25
"""Share of liver lesions at the capsule, bulging the contour by 15-45 % of their radius (10 mm at most)."""
RENAL_CYST_SHARE = 0.3
"""Chance that a kidney holds simple cysts."""
EXOPHYTIC_SHARE = 0.5
"""Share of renal cysts centred on the cortex's surface, 20-80 % of their radius outside it."""
COMPLEX_SHARE = 0.2
"""Share of renal cysts that are hyperdense, half of them with calcium in the wall."""
SPLENIC_CYST_SHARE = 0.05


@dataclass
class Lesion:
    """One lesion.

    Attributes:
        organ: the organ holding it (its label).
        kind: ``cyst``, ``metastasis``, ``hypervascular_metastasis``, ``haemangioma``,
            ``complex_cyst``.
        shape: its shape (patient frame, mm).
        diameter_mm: its diameter.
        tissue: its content's tissue code; rim: ``(field above which, tissue)`` of an enhancing
            rim, or None; pattern: nodules or calcium at its periphery, or None.
        surface: at the organ's surface: the part outside the organ's outline, where it meets
            visceral fat, joins the organ's label.
    """

    organ: str
    kind: str
    shape: Ellipsoid
    diameter_mm: float
    tissue: int
    rim: tuple[float, int] | None = None
    pattern: Plaques | None = None
    surface: bool = False


class OrganDepth:
    """An organ's shape sampled on a grid of ``step_mm`` with each point's depth (mm) under its
    surface (0 outside, or minus the distance to it once asked for), and the lesions placed so far."""

    def __init__(self, shape: Shape, step_mm: float = SAMPLE_MM):
        low, high = shape.bounds()
        axes = [np.arange(lo - 3 * step_mm, hi + 3 * step_mm, step_mm, dtype=np.float32)
                for lo, hi in zip(low, high)]  # fmt: skip
        self.grid, self.step = Grid(axes[0], axes[1], axes[2], (step_mm,) * 3), step_mm
        self.inside = shape.evaluate(self.grid.whole) <= 0
        # A sample's distance to the nearest sample outside overstates its depth by half a step.
        self.depth = np.where(self.inside, step_mm * (ndimage.distance_transform_edt(self.inside) - 0.5), 0.0)
        self.signed = False
        self.taken: list[tuple[np.ndarray, float]] = []

    def outside_too(self) -> None:
        """Make :attr:`depth` negative outside the shape (the distance to it), once."""
        if not self.signed:
            self.depth -= np.where(self.inside, 0.0, self.step * (ndimage.distance_transform_edt(~self.inside) - 0.5))
            self.signed = True

    def point(self, index: int) -> np.ndarray:
        z, y, x = np.unravel_index(index, self.depth.shape)
        return np.array([self.grid.x[x], self.grid.y[y], self.grid.z[z]], dtype=np.float64)

    def place(
        self, rng: np.random.Generator, radius: float, low: float, high: float, gap: float = 2.0, where=None
    ) -> np.ndarray | None:
        """A centre whose depth lies in ``[low, high]`` (mm) and, if given, where the ``where`` mask
        (over the sampled grid) holds, ``gap`` mm clear of what was placed before; None if none."""
        if low < 0:
            self.outside_too()
        ok = (self.depth >= low) & (self.depth <= high)
        if where is not None:
            ok &= where
        for index in rng.permutation(np.flatnonzero(ok))[:64]:
            center = self.point(int(index))
            if all(np.linalg.norm(center - other) >= radius + r + gap for other, r in self.taken):
                self.taken.append((center, radius))
                return center
        return None


def _diameter(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform: small lesions are the most common."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _ellipsoid(rng: np.random.Generator, center: np.ndarray, radius: float, bumps: float) -> Ellipsoid:
    semi = radius * rng.uniform(0.85, 1.15, 3)
    semi *= radius / float(np.prod(semi)) ** (1 / 3)  # the drawn diameter is the volume's
    return Ellipsoid(center, semi, rotation(tuple(rng.uniform(0, 180, 3))), Bumps.random(rng, 3, bumps, 2.0))


def _pattern(rng: np.random.Generator, radius: float, threshold: float, wall_above: float, tissue: int) -> Plaques:
    """Blobs about a quarter of the lesion across, in its shell beyond ``wall_above``."""
    return Plaques(rng.normal(0.0, 2.5 / radius, (3, 3)), rng.uniform(0, 2 * np.pi, 3), threshold, wall_above, tissue)


def _liver_lesion(rng: np.random.Generator, kind: str, radius: float) -> dict:
    """Tissue, rim and pattern of a liver lesion of ``kind``."""
    if kind == "cyst":
        return {"tissue": Finding.LIVER_CYST}
    if kind == "metastasis":
        rim = (-rng.uniform(0.12, 0.3), Finding.METASTASIS_RIM) if rng.random() < 0.7 else None
        return {"tissue": Finding.METASTASIS, "rim": rim}
    if kind == "hypervascular_metastasis":
        return {"tissue": Finding.HYPERVASCULAR_METASTASIS}
    return {"tissue": Finding.HAEMANGIOMA,
            "pattern": _pattern(rng, radius, rng.uniform(0.2, 0.8), -0.35, Finding.HAEMANGIOMA_NODULE)}  # fmt: skip


# kind: (diameter range mm, surface bumps): cysts sharp and round, metastases lobulated.
_LIVER_KINDS = {
    "cyst": ((5.0, 60.0), 0.02),
    "metastasis": ((5.0, 50.0), 0.08),
    "hypervascular_metastasis": ((5.0, 45.0), 0.06),
    "haemangioma": ((8.0, 80.0), 0.06),
}


def _liver_kinds(rng: np.random.Generator) -> list[str]:
    """The kinds of the lesions of one liver (at most :data:`MAX_LIVER_LESIONS`)."""
    if rng.random() >= LIVER_LESION_SHARE:
        return []
    pattern = str(rng.choice(list(LIVER_PATTERNS), p=list(LIVER_PATTERNS.values())))
    metastases = int(min(MAX_LIVER_LESIONS, rng.geometric(0.25)))
    if pattern == "cysts":
        return ["cyst"] * int(min(6, rng.geometric(0.5)))
    if pattern == "haemangiomas":
        return ["haemangioma"] * int(rng.integers(1, 4))
    if pattern == "hyperdense_metastases":
        return ["hypervascular_metastasis"] * metastases
    kinds = ["metastasis"] * metastases
    if pattern == "mixed":
        kinds = [str(rng.choice(["cyst", "haemangioma"]))] + kinds[: MAX_LIVER_LESIONS - 1]
    return kinds


def _draw(rng, organ: str, depth: OrganDepth, kind: str, radius: float, bumps: float, surface: bool, extra: dict):
    """One lesion of ``organ`` of about ``radius`` (mm) placed on ``depth`` (smaller where a deep
    one has no room), or None where the organ has none left."""
    if surface:
        if organ == "liver":  # subcapsular: bulging by 15-45 % of the radius, 10 mm at most
            low, high = max(0.55 * radius, radius - 10.0), 0.85 * radius
        else:  # exophytic: 20-80 % of the radius outside the cortex
            low, high = -0.3 * radius, 0.3 * radius
    else:
        radius = min(radius, float(depth.depth.max()) - SAMPLE_MM)
        low, high = radius + SAMPLE_MM, np.inf
    if radius < DIAMETER_MM[0] / 2.0:
        return None
    center = depth.place(rng, radius, low, high)
    if center is None:
        return None
    shape = _ellipsoid(rng, center, radius, bumps)
    return Lesion(organ, kind, shape, round(2.0 * radius, 2), surface=surface, **extra)


def draw_lesions(
    organs: dict[str, Shape], rng: np.random.Generator, liver_depth: OrganDepth | None = None
) -> list[Lesion]:
    """The lesions of one patient's liver, kidneys and spleen (organs missing from ``organs`` hold
    none); ``liver_depth``: the liver's :class:`OrganDepth` if already sampled."""
    lesions = []
    if "liver" in organs:
        depth = OrganDepth(organs["liver"]) if liver_depth is None else liver_depth
        for kind in _liver_kinds(rng):
            diameters, bumps = _LIVER_KINDS[kind]
            radius, surface = _diameter(rng, *diameters) / 2.0, bool(rng.random() < CAPSULAR_SHARE)
            extra = _liver_lesion(rng, kind, radius)
            lesion = _draw(rng, "liver", depth, kind, radius, bumps, surface, extra)
            lesions += [lesion] if lesion is not None else []
    for organ in ("right_kidney", "left_kidney"):
        if organ not in organs or rng.random() >= RENAL_CYST_SHARE:
            continue
        depth = OrganDepth(organs[organ])
        for _ in range(int(rng.integers(1, 4))):
            radius, surface = _diameter(rng, 5.0, 60.0) / 2.0, bool(rng.random() < EXOPHYTIC_SHARE)
            extra, kind = {"tissue": Finding.RENAL_CYST}, "cyst"
            if rng.random() < COMPLEX_SHARE:
                kind, extra = "complex_cyst", {"tissue": Finding.COMPLEX_RENAL_CYST}
                if rng.random() < 0.5:  # calcium flecks in the wall
                    extra["pattern"] = _pattern(rng, radius, rng.uniform(1.2, 1.8), -0.15, Tissue.BONE_CORTEX)
            lesion = _draw(rng, organ, depth, kind, radius, 0.02, surface, extra)
            lesions += [lesion] if lesion is not None else []
    if "spleen" in organs and rng.random() < SPLENIC_CYST_SHARE:
        depth = OrganDepth(organs["spleen"])
        radius, surface = _diameter(rng, 10.0, 50.0) / 2.0, bool(rng.random() < 0.2)
        lesion = _draw(rng, "spleen", depth, "cyst", radius, 0.02, surface, {"tissue": Finding.SPLENIC_CYST})
        lesions += [lesion] if lesion is not None else []
    return lesions


def paint_lesions(grid: Grid, lesions: list[Lesion], tissue: np.ndarray, label: np.ndarray) -> dict[str, int]:
    """Paint the lesions into their organs' voxels (``(z, y, x)`` tissue and label maps, in place).

    A lesion replaces only voxels labelled with its organ (vessels within it included); at the
    surface, also the visceral fat its outline covers, which joins the organ's label.

    Returns:
        Label voxels each organ gained.
    """
    gained = {}
    for lesion in lesions:
        box = grid.box(*lesion.shape.bounds())
        if box is None:
            continue
        field = lesion.shape.evaluate(box)
        inside = field <= 0
        tissue_view, label_view = tissue[box.slices], label[box.slices]
        organ = ORGAN_IDS[lesion.organ]
        if lesion.surface:
            grow = inside & (label_view == 0) & (tissue_view == Tissue.VISCERAL_FAT)
            label_view[grow] = organ
            gained[lesion.organ] = gained.get(lesion.organ, 0) + int(grow.sum())
        own = inside & (label_view == organ)
        codes = np.full(box.shape, lesion.tissue, dtype=np.uint8)
        if lesion.rim is not None:
            codes[field > lesion.rim[0]] = lesion.rim[1]
        if lesion.pattern is not None:
            codes[(field > lesion.pattern.wall_above) & lesion.pattern.mask(box)] = lesion.pattern.tissue
        tissue_view[own] = codes[own]
    return gained
