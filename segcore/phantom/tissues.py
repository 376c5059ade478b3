"""Tissue classes, their CT numbers per contrast phase, and the imaging domain of a case.

A phantom is first built as a map of tissue codes (uint8, one per voxel); the image is the
per-case HU table looked up on that map, then blurred and made noisy (see
:mod:`segcore.phantom.imaging`). The domain (contrast phase, noise, HU offset, sharpness)
is what changes between scanners and protocols while the anatomy stays the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum

import numpy as np

from segcore.labels import ORGAN_IDS, ORGANS


class Tissue(IntEnum):
    """Tissue codes of the tissue map. Organ codes are ``ORGAN_BASE + organ id``."""

    AIR = 0
    SKIN = 1
    SUBCUTANEOUS_FAT = 2
    MUSCLE = 3
    VISCERAL_FAT = 4
    PSOAS = 5
    LUNG = 6
    HEART = 7
    BONE_CORTEX = 8
    BONE_MARROW = 9
    DISC = 10
    SPINAL_CANAL = 11
    CARTILAGE = 12
    BOWEL_WALL = 13
    BOWEL_CONTENT = 14
    GAS = 15
    TABLE = 16
    KIDNEY_MEDULLA = 17
    STOMACH_CONTENT = 18
    BILE = 19
    PORTAL_VEIN = 20
    HEPATIC_VEIN = 21
    ARTERY = 22
    RENAL_VEIN = 23


ORGAN_BASE = 32
"""Tissue code of organ ``k`` is ``ORGAN_BASE + k`` (its main tissue, e.g. kidney cortex)."""

PHASES = ("non_contrast", "arterial", "portal_venous")
"""Contrast phases, in the order of the columns of :data:`HU_TABLE`."""

HU_TABLE: dict[int, tuple[float, float, float]] = {
    Tissue.AIR: (-1000, -1000, -1000),
    Tissue.SKIN: (25, 30, 35),
    Tissue.SUBCUTANEOUS_FAT: (-105, -105, -100),
    Tissue.MUSCLE: (48, 55, 62),
    Tissue.VISCERAL_FAT: (-95, -92, -88),
    Tissue.PSOAS: (48, 55, 62),
    Tissue.LUNG: (-860, -860, -855),
    Tissue.HEART: (42, 250, 140),
    Tissue.BONE_CORTEX: (850, 850, 850),
    Tissue.BONE_MARROW: (220, 225, 230),
    Tissue.DISC: (85, 90, 95),
    Tissue.SPINAL_CANAL: (15, 18, 22),
    Tissue.CARTILAGE: (120, 125, 130),
    Tissue.BOWEL_WALL: (35, 60, 90),
    Tissue.BOWEL_CONTENT: (15, 15, 15),
    Tissue.GAS: (-960, -960, -960),
    Tissue.TABLE: (150, 150, 150),
    Tissue.KIDNEY_MEDULLA: (28, 85, 150),
    Tissue.STOMACH_CONTENT: (12, 12, 12),
    Tissue.BILE: (8, 8, 10),
    Tissue.PORTAL_VEIN: (42, 110, 175),
    Tissue.HEPATIC_VEIN: (40, 50, 160),
    Tissue.ARTERY: (42, 280, 160),
    Tissue.RENAL_VEIN: (40, 150, 160),
    ORGAN_BASE + ORGAN_IDS["liver"]: (58, 75, 115),
    ORGAN_BASE + ORGAN_IDS["right_kidney"]: (32, 190, 165),
    ORGAN_BASE + ORGAN_IDS["spleen"]: (47, 125, 120),
    ORGAN_BASE + ORGAN_IDS["pancreas"]: (42, 115, 95),
    ORGAN_BASE + ORGAN_IDS["aorta"]: (42, 280, 160),
    ORGAN_BASE + ORGAN_IDS["ivc"]: (40, 80, 140),
    ORGAN_BASE + ORGAN_IDS["right_adrenal_gland"]: (28, 70, 65),
    ORGAN_BASE + ORGAN_IDS["left_adrenal_gland"]: (28, 70, 65),
    ORGAN_BASE + ORGAN_IDS["gallbladder"]: (35, 55, 70),
    ORGAN_BASE + ORGAN_IDS["esophagus"]: (40, 60, 75),
    ORGAN_BASE + ORGAN_IDS["stomach"]: (40, 65, 95),
    ORGAN_BASE + ORGAN_IDS["duodenum"]: (38, 65, 90),
    ORGAN_BASE + ORGAN_IDS["left_kidney"]: (32, 190, 165),
}
"""Mean CT number (HU) of each tissue in each phase of :data:`PHASES`; sources: typical adult values."""

ORAL_CONTRAST_HU = 250.0
"""Bowel and stomach content with positive oral contrast."""
HU_MIN, HU_MAX = -1024, 3071
"""The range a scanner stores (12-bit CT numbers)."""
# Tissues whose CT number the case-to-case jitter leaves alone (air and gas are physics, not biology).
_FIXED = {Tissue.AIR, Tissue.GAS, Tissue.TABLE}

assert set(ORGANS) == {code - ORGAN_BASE for code in HU_TABLE if code >= ORGAN_BASE}


@dataclass(frozen=True)
class PhantomDomain:
    """How a case is imaged: what differs between scanners and protocols, not the anatomy.

    Attributes:
        phase: one of :data:`PHASES`.
        noise_sigma_hu: standard deviation of the image noise after blurring, HU.
        hu_offset: added to every CT number (calibration drift), HU.
        blur_mm: sigma of the scanner's point spread function (reconstruction kernel), mm.
        enhancement: contrast-agent strength; 1 gives the tabulated enhancement.
        oral_contrast: stomach and bowel filled with positive oral contrast.
        randomised: every tissue's CT number drawn from a wide range instead of the phase's
            table (domain randomisation: a net trained on such cases can only learn shape,
            :func:`hu_lookup`); organs sometimes swap their order of brightness.
        bias_hu: amplitude of a smooth additive field across the volume (inhomogeneity), HU.
        slice_mm: reconstructed slice thickness to simulate (an extra blur along z), 0 for none.
    """

    phase: str = "portal_venous"
    noise_sigma_hu: float = 15.0
    hu_offset: float = 0.0
    blur_mm: float = 0.6
    enhancement: float = 1.0
    oral_contrast: bool = False
    randomised: bool = False
    bias_hu: float = 0.0
    slice_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"unknown contrast phase {self.phase!r}; expected one of {', '.join(PHASES)}")
        if min(self.noise_sigma_hu, self.blur_mm, self.bias_hu, self.slice_mm) < 0:
            raise ValueError("noise_sigma_hu, blur_mm, bias_hu and slice_mm must not be negative")

    def as_dict(self) -> dict:
        return asdict(self)


def sample_domain(rng: np.random.Generator) -> PhantomDomain:
    """A random domain: phase (portal venous most often, as in abdominal routine), noise 5-40 HU, etc."""
    return PhantomDomain(
        phase=str(rng.choice(PHASES, p=[0.25, 0.25, 0.5])),
        # Log-uniform: low-dose noisy scans are as common as smooth ones in a multi-centre set.
        noise_sigma_hu=float(np.exp(rng.uniform(np.log(5.0), np.log(40.0)))),
        hu_offset=float(np.clip(rng.normal(0.0, 6.0), -20.0, 20.0)),
        blur_mm=float(rng.uniform(0.4, 1.0)),
        enhancement=float(rng.uniform(0.8, 1.2)),
        oral_contrast=bool(rng.random() < 0.15),
    )


def sample_randomised_domain(rng: np.random.Generator) -> PhantomDomain:
    """A domain-randomised case (SynthSeg's idea, for CT): random tissue values (:func:`hu_lookup`),
    noise 5-60 HU, offset up to ±40 HU, blur 0.3-1.5 mm, an inhomogeneity field up to 60 HU, and
    half the cases reconstructed as thick slices (1-5 mm)."""
    return PhantomDomain(
        phase=str(rng.choice(PHASES)),
        noise_sigma_hu=float(np.exp(rng.uniform(np.log(5.0), np.log(60.0)))),
        hu_offset=float(rng.uniform(-40.0, 40.0)),
        blur_mm=float(rng.uniform(0.3, 1.5)),
        enhancement=float(rng.uniform(0.5, 1.5)),
        oral_contrast=bool(rng.random() < 0.2),
        randomised=True,
        bias_hu=float(rng.uniform(0.0, 60.0)),
        slice_mm=float(rng.uniform(1.0, 5.0)) if rng.random() < 0.5 else 0.0,
    )


RANDOMISED_MARGIN_HU = 80.0
"""A randomised tissue's value is drawn within this of the range its phases span."""
SOFT_TISSUE_HU = (-60.0, 320.0)
"""Where a randomised organ may land when it leaves its own range (contrast reversed)."""


def _randomised_value(code: int, values: tuple[float, float, float], rng: np.random.Generator) -> float:
    if code in _FIXED or code in (Tissue.LUNG,):
        return float(values[0])  # air, gas, table, aerated lung: physics, not contrast
    low, high = min(values) - RANDOMISED_MARGIN_HU, max(values) + RANDOMISED_MARGIN_HU
    if code >= ORGAN_BASE and rng.random() < 0.25:
        low, high = SOFT_TISSUE_HU  # sometimes brighter or darker than its neighbours usually are
    if code == Tissue.BONE_CORTEX:
        low, high = 400.0, 1500.0
    return float(rng.uniform(low, high))


def hu_lookup(domain: PhantomDomain, rng: np.random.Generator) -> np.ndarray:
    """The case's CT number of every tissue code: a float32 table of 256 entries (HU).

    Each tissue's value is its tabulated mean for the phase, with the contrast enhancement
    scaled by ``domain.enhancement``, a per-case jitter (patients differ), and the offset. In a
    ``randomised`` domain each value is drawn uniformly within :data:`RANDOMISED_MARGIN_HU` of
    the range the tissue spans over the phases (an organ in a quarter of the cases anywhere in
    :data:`SOFT_TISSUE_HU`), air, gas, lung and the table kept.
    """
    column = PHASES.index(domain.phase)
    table = np.full(256, HU_MIN, dtype=np.float32)
    if domain.randomised:
        for code, values in sorted(HU_TABLE.items()):
            table[code] = _randomised_value(code, values, rng)
        table[[code for code in range(256) if code != Tissue.AIR]] += domain.hu_offset
        return table
    for code, values in sorted(HU_TABLE.items()):
        unenhanced = values[0]
        value = unenhanced + domain.enhancement * (values[column] - unenhanced)
        jitter = 0.0 if code in _FIXED else rng.normal(0.0, 40.0 if code == Tissue.BONE_CORTEX else 5.0)
        table[code] = value + jitter
    if domain.oral_contrast:
        for code in (Tissue.BOWEL_CONTENT, Tissue.STOMACH_CONTENT):
            table[code] = ORAL_CONTRAST_HU + rng.normal(0.0, 30.0)
    table[[code for code in range(256) if code != Tissue.AIR]] += domain.hu_offset
    return table


class Finding(IntEnum):
    """Tissue codes of what patients have and the average anatomy lacks (``generate_case(clinical=True)``,
    :mod:`segcore.phantom.clinical`): lesions, bile of varied density, gallstones, food, the IVC's
    blood as contrast reaches it. Above the organ codes, outside :data:`HU_TABLE`, so that the
    realistic cases' CT numbers and their draws stay as they were."""

    LIVER_CYST = 64
    METASTASIS = 65
    METASTASIS_RIM = 66
    HYPERVASCULAR_METASTASIS = 67
    HAEMANGIOMA = 68
    HAEMANGIOMA_NODULE = 69
    RENAL_CYST = 70
    COMPLEX_RENAL_CYST = 71
    SPLENIC_CYST = 72
    BILE = 73
    CALCIFIED_STONE = 74
    SOFT_STONE = 75
    FOOD = 76
    IVC_RENAL_RETURN = 77
    IVC_INFRARENAL = 78


WATER = ((0.0, 20.0),) * 3
FINDING_HU: dict[int, tuple[tuple[float, float], ...]] = {
    # Simple cysts (liver, kidney, spleen): water, 0-20 HU, no enhancement (Webb, Fundamentals of
    # Body CT, liver, kidney and spleen chapters; Bosniak I).
    Finding.LIVER_CYST: WATER,
    Finding.RENAL_CYST: WATER,
    Finding.SPLENIC_CYST: WATER,
    # Hypovascular metastases (colon, lung, pancreas, stomach): below the liver in every phase, most
    # of all in the portal venous one, with a thin enhancing rim (Federle, Diagnostic Imaging:
    # Abdomen, hepatic metastases).
    Finding.METASTASIS: ((25.0, 45.0), (35.0, 60.0), (45.0, 80.0)),
    Finding.METASTASIS_RIM: ((35.0, 50.0), (80.0, 130.0), (85.0, 125.0)),
    # Hypervascular metastases (neuroendocrine, renal cell, melanoma, breast): brighter than the
    # liver in the arterial phase, washing out to iso- or hypodense in the portal venous one (ibid.).
    Finding.HYPERVASCULAR_METASTASIS: ((35.0, 50.0), (110.0, 170.0), (80.0, 115.0)),
    # Cavernous haemangioma: unenhanced like blood; peripheral, discontinuous nodules as bright as
    # the aorta in the arterial phase, filling in towards the centre later (Federle, hepatic
    # cavernous haemangioma; Webb, liver).
    Finding.HAEMANGIOMA: ((30.0, 45.0), (40.0, 60.0), (75.0, 125.0)),
    Finding.HAEMANGIOMA_NODULE: ((35.0, 45.0), (180.0, 270.0), (130.0, 170.0)),
    # Hyperdense (proteinaceous or haemorrhagic) renal cyst, Bosniak II: 40-90 HU, no enhancement
    # (Federle, renal cysts; Webb, kidneys).
    Finding.COMPLEX_RENAL_CYST: ((40.0, 90.0),) * 3,
    # Bile, 0-25 HU, denser when concentrated in a contracted gallbladder (Webb, gallbladder).
    Finding.BILE: ((0.0, 25.0),) * 3,
    # Gallstones: calcified ones bright; cholesterol and pigment stones from below bile to a little
    # above soft tissue (Federle, cholelithiasis).
    Finding.CALCIFIED_STONE: ((250.0, 900.0),) * 3,
    Finding.SOFT_STONE: ((-40.0, 90.0),) * 3,
    # Food in the stomach: heterogeneous, between fat-laden and dense meals (Webb, stomach).
    Finding.FOOD: ((15.0, 70.0),) * 3,
    # IVC blood: in the arterial phase only the kidneys have returned contrast, so the IVC above
    # the renal veins is enhanced and the infrarenal IVC is not (blood from the legs arrives last);
    # in the portal venous phase the infrarenal IVC is still less enhanced (Webb, retroperitoneum;
    # Federle, IVC flow artefacts).
    Finding.IVC_RENAL_RETURN: ((35.0, 45.0), (100.0, 160.0), (125.0, 165.0)),
    Finding.IVC_INFRARENAL: ((35.0, 45.0), (35.0, 60.0), (70.0, 140.0)),
}
"""Range of the CT number (HU) of each :class:`Finding` in each phase of :data:`PHASES`; a case
draws one quantile per finding and reads every phase's range at it."""


def finding_hu(table: np.ndarray, domain: PhantomDomain, rng: np.random.Generator) -> None:
    """Write the CT number (HU) of every :class:`Finding` into a case's :func:`hu_lookup` table.

    Each finding's value is its range for the phase read at one quantile drawn per case, the
    enhancement scaled by ``domain.enhancement``, plus the offset; in a ``randomised`` domain it is
    drawn as :func:`hu_lookup` draws the tabulated tissues'.
    """
    column = PHASES.index(domain.phase)
    for code, ranges in sorted(FINDING_HU.items()):
        if domain.randomised:
            value = _randomised_value(code, tuple(float(np.mean(bounds)) for bounds in ranges), rng)
        else:
            quantile = rng.random()
            unenhanced, phase = (low + quantile * (high - low) for low, high in (ranges[0], ranges[column]))
            value = unenhanced + domain.enhancement * (phase - unenhanced)
        table[code] = value + domain.hu_offset


NOISY_HU = 15.0
"""Noise above this makes a domain "noisy" in :func:`domain_group`."""


def domain_group(domain: dict | PhantomDomain) -> str:
    """A short name of a domain's group: the phase, ``+noisy`` above :data:`NOISY_HU`, ``+oral``
    with oral contrast (``portal_venous`` is the routine, low-noise group)."""
    values = domain.as_dict() if isinstance(domain, PhantomDomain) else domain
    name = values["phase"]
    if values["noise_sigma_hu"] > NOISY_HU:
        name += "+noisy"
    if values.get("oral_contrast"):
        name += "+oral"
    return name
