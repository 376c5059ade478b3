"""One phantom case: patient, scan, tissue map, organ labels, image."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from segcore.labels import ORGAN_IDS, ORGANS
from segcore.phantom.anatomy import PASSAGES, Organ, Vessel, build_anatomy, organ_z_range
from segcore.phantom.body import build_background, sample_arms
from segcore.phantom.clinical import Findings, draw_clinical, paint_findings
from segcore.phantom.detailed import pelvis_field
from segcore.phantom.imaging import render
from segcore.phantom.patient import detailed_habitus, sample_patient, spine_setback
from segcore.phantom.scanner import Scan, plan_scan
from segcore.phantom.shapes import Grid
from segcore.phantom.tissues import (
    PHASES,
    PhantomDomain,
    Tissue,
    finding_hu,
    hu_lookup,
    sample_domain,
    sample_randomised_domain,
)
from segcore.volumes.geometry import Geometry

SeedLike = int | np.random.SeedSequence | np.random.Generator
"""What :func:`generate_case` accepts as its randomness."""

# The case's independent random streams: changing one (say, forcing the domain) leaves the others alone.
_STREAMS = (
    "patient",
    "anatomy",
    "scan",
    "bowel",
    "domain",
    "hu",
    "noise",
    "variation",
    "arms",
    "habitus",
    "detail",
    "bowel_detail",
    "pelvis",
    "lesions",
    "gallbladder",
    "stomach",
    "ivc",
    "finding_hu",
)
"""Appended only: a stream's seed is its index, so adding one leaves every existing case alone."""

REMOVABLE_ORGANS: dict[str, float] = {"gallbladder": 0.2, "right_kidney": 0.04, "left_kidney": 0.04, "spleen": 0.03}
"""With ``vary``: chance that a case lacks each organ (cholecystectomy, nephrectomy, splenectomy)."""

# Tissues an organ may replace, by tissue code: what lies loose in the cavity; the passages
# (aorta, IVC, esophagus) also lung and heart. Walls, bones and other organs stay.
_SOFT = np.zeros(256, dtype=bool)
_SOFT[[Tissue.VISCERAL_FAT, Tissue.PSOAS, Tissue.BOWEL_WALL, Tissue.BOWEL_CONTENT, Tissue.GAS]] = True
_PASSAGE = _SOFT.copy()
_PASSAGE[[Tissue.LUNG, Tissue.HEART]] = True


@dataclass
class OrganMask:
    """An organ's own shape before merging, on the canonical grid.

    Attributes:
        slices: ``(z, y, x)`` slices of the canonical array holding the box.
        mask: bool array over that box: voxels inside the shape (before other organs and the
            body claimed any).
    """

    slices: tuple[slice, slice, slice]
    mask: np.ndarray


@dataclass
class Phantom:
    """A synthetic abdominal CT and its organ labels.

    Attributes:
        image: int16 ``(z, y, x)`` CT numbers (HU) in the stored orientation of ``geometry``.
        label: uint8 ``(z, y, x)`` FLARE22 organ ids, same grid.
        geometry: the stored grid (size, spacing, origin, direction).
        meta: JSON-friendly description: domain, field of view, organ volumes, patient.
        shapes: with ``keep_shapes``, each organ's own shape on the canonical grid, by organ id.
        tissue: with ``keep_shapes``, the uint8 tissue map on the canonical grid
            (:class:`~segcore.phantom.tissues.Tissue`, :class:`~segcore.phantom.tissues.Finding`).
    """

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    meta: dict
    shapes: dict[int, OrganMask] | None = field(default=None, repr=False)
    tissue: np.ndarray | None = field(default=None, repr=False)


def seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    """The case's root seed sequence (a Generator is reduced to fresh entropy drawn from it)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        return np.random.SeedSequence([int(v) for v in seed.integers(0, 2**63, size=4)])
    return np.random.SeedSequence(int(seed))


def _streams(root: np.random.SeedSequence) -> dict[str, np.random.SeedSequence]:
    # Children are built from the root's key rather than spawned, so that a caller's SeedSequence
    # is not mutated and the same one always gives the same case.
    return {
        name: np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, index), pool_size=root.pool_size)
        for index, name in enumerate(_STREAMS)
    }


def check_phases(phases: tuple[str, ...] | None) -> None:
    """Refuse ``phases`` that are not a non-empty set of :data:`PHASES` (None is any phase)."""
    if phases is not None and (not phases or set(phases) - set(PHASES)):
        raise ValueError(f"phases must be a non-empty subset of {PHASES} (got {tuple(phases)})")


def draw_domain(
    rng: np.random.Generator, randomise: bool = False, phases: tuple[str, ...] | None = None
) -> PhantomDomain:
    """A case's imaging domain drawn from ``rng`` (:func:`sample_randomised_domain` or
    :func:`sample_domain`), drawn again until its phase is one of ``phases`` (None: any)."""
    check_phases(phases)
    sampler = sample_randomised_domain if randomise else sample_domain
    while True:
        domain = sampler(rng)
        if phases is None or domain.phase in phases:
            return domain


def generate_case(
    seed: SeedLike,
    size: str = "small",
    domain: PhantomDomain | None = None,
    *,
    full_field: bool = True,
    geometry: Geometry | None = None,
    keep_shapes: bool = False,
    threads: int | None = None,
    randomise: bool = False,
    vary: bool = False,
    detailed: bool = False,
    clinical: bool = False,
    phases: tuple[str, ...] | None = None,
) -> Phantom:
    """Generate one synthetic abdominal CT with its 13-organ label map.

    Args:
        seed: the case's randomness; the same seed gives identical arrays.
        size: ``"small"`` (about 48-64 voxels in-plane, 5-9 mm voxels; for tests),
            ``"medium"`` (128-160 in-plane, about 2.5-3.5 mm, 2-5 mm slices; CPU training) or
            ``"full"`` (512 x 512 in-plane, 0.6-1.0 mm, 1-5 mm slices).
        domain: imaging domain (contrast phase, noise, HU offset, blur); None draws one from
            the seed. Forcing a domain changes nothing else: same patient, same grid.
        full_field: the field of view holds every organ; otherwise the top or the bottom of
            the abdomen is cut off (some organs missing or partial).
        geometry: impose the stored grid (the patient is centred in it); None draws one.
        keep_shapes: also return each organ's own shape mask (:attr:`Phantom.shapes`).
        threads: worker threads for the volume-wide passes (None: :func:`default_threads`);
            the result does not depend on it.
        randomise: draw a domain-randomised imaging domain (:func:`sample_randomised_domain`)
            instead of a realistic one when ``domain`` is None; the anatomy and grid are the same.
        vary: anatomy and field-of-view variation beyond the realistic cases: organs placed,
            sized and deformed more freely (:func:`~segcore.phantom.anatomy.build_anatomy`),
            some organs removed (:data:`REMOVABLE_ORGANS`), and partial fields of view
            (:func:`~segcore.phantom.scanner.plan_scan`: thin slabs anywhere over the organs,
            in-plane fields narrower than the body). Ignored with ``geometry``.
        detailed: anatomy drawn from anatomical relations rather than fixed places: the spine's
            depth, the back's muscle and fat and the lordosis on their own
            (:func:`~segcore.phantom.patient.detailed_habitus`); aorta and IVC on the spine,
            crura, adrenals against their neighbours, iliac vessels, aortic calcification
            (:mod:`segcore.phantom.detailed`); collapsed bowel loops and mottled faeces. Off, a
            case is voxel for voxel what it was before this option existed.
        clinical: what patients have and the average anatomy lacks
            (:mod:`segcore.phantom.clinical`): lesions counted as their organ (liver cysts,
            metastases and haemangiomas, renal and splenic cysts), the gallbladder contracted to
            distended with stones, the stomach collapsed with rugae to distended with food, the
            IVC's blood by contrast phase and the caudate lobe around it. Its own streams: off, a
            case is voxel for voxel what it was before this option existed.
        phases: with ``domain`` None, the drawn domain's contrast phase is one of these: the domain
            is drawn again from its own stream until it is (the rest of the domain as drawn, the
            patient and the grid unchanged). None: any phase.

    Returns:
        The :class:`Phantom`.
    """
    root = seed_sequence(seed)
    streams = _streams(root)
    threads = default_threads() if threads is None else threads

    def rng(name: str) -> np.random.Generator:
        return np.random.default_rng(streams[name])

    patient, organs, vessels, scan, arms, findings = _draw_anatomy(
        streams, size, full_field, geometry, vary, detailed, clinical
    )
    domain = draw_domain(rng("domain"), randomise, phases) if domain is None else domain

    grid = scan.grid
    bowel_detail = rng("bowel_detail") if detailed else None
    tissue = build_background(grid, patient, rng("bowel"), threads, arms, bowel_detail)
    shapes: dict[int, OrganMask] | None = {} if keep_shapes else None
    label, voxel_counts = _paint_labels(grid, organs, vessels, tissue, shapes)
    hu_table = hu_lookup(domain, rng("hu"))
    if findings is not None:
        for organ, gained in paint_findings(grid, findings, tissue, label).items():
            voxel_counts[organ]["painted"] += gained
        finding_hu(hu_table, domain, rng("finding_hu"))
    spacing_zyx = tuple(reversed(grid.spacing_xyz))
    image = render(tissue, hu_table, domain, spacing_zyx, streams["noise"], threads)

    stored_image = np.ascontiguousarray(scan.reorientation.undo(image))
    stored_label = np.ascontiguousarray(scan.reorientation.undo(label))
    meta = _meta(root, size, domain, scan, patient, grid, voxel_counts)
    meta.update(_variation_meta(organs, scan, arms, patient, vary, detailed))
    if findings is not None:
        meta["clinical"] = findings.meta
    return Phantom(stored_image, stored_label, scan.geometry, meta, shapes, tissue if keep_shapes else None)


def _draw_anatomy(
    streams: dict, size: str, full_field: bool, geometry: Geometry | None, vary: bool, detailed: bool, clinical: bool
):
    """The patient, its organs and vessels on the planned scan, the arms and the clinical findings
    (or None) of one case."""

    def rng(name: str) -> np.random.Generator:
        return np.random.default_rng(streams[name])

    patient = sample_patient(rng("patient"))
    if detailed:
        patient = detailed_habitus(patient, rng("habitus"))

    def detail(name: str) -> np.random.Generator | None:
        return rng(name) if detailed else None

    organs, _ = build_anatomy(patient, rng("anatomy"), vary=vary, detail=detail("detail"))
    if clinical:  # a distended gallbladder may reach lower than the field planned for the average one
        organs, _ = draw_clinical(patient, organs, rng, lesions=False)
    variation = rng("variation") if vary else None
    arms = sample_arms(rng("arms"), patient) if vary else None
    scan = plan_scan(
        rng("scan"), size, patient, organ_z_range(organs), full_field, geometry, variation,
        half_width=None if arms is None else arms.half_width, below_mm=pelvis_field(rng("pelvis")) if detailed else 0.0,
    )  # fmt: skip
    # Same anatomy stream again, now with the grid's thickness floor for thin organs.
    organs, vessels = build_anatomy(patient, rng("anatomy"), scan.min_feature_mm, vary=vary, detail=detail("detail"))
    findings: Findings | None = None
    if clinical:
        organs, findings = draw_clinical(patient, organs, rng, scan.min_feature_mm)
    if variation is not None:
        removed = {name for name, chance in REMOVABLE_ORGANS.items() if variation.random() < chance}
        organs = [organ for organ in organs if organ.name not in removed]
        findings = None if findings is None else findings.without(removed)
    return patient, organs, vessels, scan, arms, findings


def _paint_labels(grid: Grid, organs: list[Organ], vessels: list[Vessel], tissue: np.ndarray, shapes: dict | None):
    """The structures organs lie around, the organs (label map and voxel counts), then the vessels."""
    _paint_first(grid, [vessel for vessel in vessels if vessel.first], tissue)
    label = np.zeros(grid.shape, dtype=np.uint8)
    voxel_counts = _paint_organs(grid, organs, tissue, label, shapes)
    for name in ORGAN_IDS:  # removed organs, in a fixed order (the manifest's bytes stay reproducible)
        voxel_counts.setdefault(name, {"shape": 0, "painted": 0})
    _paint_vessels(grid, [vessel for vessel in vessels if not vessel.first], tissue, label)
    return label, voxel_counts


def _variation_meta(organs: list[Organ], scan: Scan, arms, patient, vary: bool, detailed: bool) -> dict:
    """What ``vary`` and ``detailed`` drew, for the case's meta."""
    meta = {}
    if vary:
        meta["organs_removed"] = sorted(set(ORGAN_IDS) - {organ.name for organ in organs})
        meta["field_of_view"] = {"slab_mm": scan.slab_mm, "narrow": scan.narrow}
        meta["arms"] = None if arms is None else {key: round(value, 2) for key, value in asdict(arms).items()}
    if detailed:
        aorta = next((organ for organ in organs if organ.name == "aorta"), None)
        meta["detailed"] = {
            "spine_setback_mm": round(spine_setback(patient), 2),
            "aorta_calcified": aorta is not None and aorta.plaques is not None,
            "bladder_level_in_field": bool(scan.grid.z[0] < -3.7 * patient.pitch - 110.0 * patient.scale),
        }
    return meta


def _paint_organs(
    grid: Grid, organs: list[Organ], tissue: np.ndarray, label: np.ndarray, shapes: dict | None
) -> dict[str, dict[str, int]]:
    """Paint organs in priority order; a voxel keeps the first organ that claims it."""
    counts = {}
    for organ in organs:
        box = grid.box(*organ.shape.bounds())
        if box is None:
            counts[organ.name] = {"shape": 0, "painted": 0}
            continue
        if organ.gas_above is None:
            field_values, height = organ.shape.evaluate(box), None
        else:
            field_values, height = organ.shape.evaluate_with_height(box, want_height=True)
        inside = field_values <= 0
        tissue_view, label_view = tissue[box.slices], label[box.slices]
        allowed = (_PASSAGE if organ.name in PASSAGES else _SOFT)[tissue_view]
        claimed = inside & allowed & (label_view == 0)
        label_view[claimed] = organ.label
        codes = np.full(box.shape, organ.tissue, dtype=np.uint8)
        if organ.core_tissue is not None:
            codes[field_values < organ.core_below] = organ.core_tissue
        if height is not None:
            codes[(field_values < organ.core_below) & (height < organ.gas_above)] = Tissue.GAS
        if organ.plaques is not None:
            codes[(field_values > organ.plaques.wall_above) & organ.plaques.mask(box)] = organ.plaques.tissue
        tissue_view[claimed] = codes[claimed]
        counts[organ.name] = {"shape": int(inside.sum()), "painted": int(claimed.sum())}
        if shapes is not None:
            shapes[organ.label] = OrganMask(box.slices, inside)
    return counts


def _paint_first(grid: Grid, structures: list[Vessel], tissue: np.ndarray) -> None:
    """Structures the organs lie around (the crura), into loose tissue before any organ."""
    for structure in structures:
        box = grid.box(*structure.shape.bounds())
        if box is None:
            continue
        view = tissue[box.slices]
        view[(structure.shape.evaluate(box) <= 0) & _SOFT[view]] = structure.tissue


def _paint_vessels(grid: Grid, vessels: list[Vessel], tissue: np.ndarray, label: np.ndarray) -> None:
    """Unlabelled vessels: inside their organ (liver veins), or in loose tissue outside every organ."""
    for vessel in vessels:
        box = grid.box(*vessel.shape.bounds())
        if box is None:
            continue
        inside = vessel.shape.evaluate(box) <= 0
        tissue_view, label_view = tissue[box.slices], label[box.slices]
        if vessel.inside is None:
            inside &= (label_view == 0) & _SOFT[tissue_view]
        else:
            inside &= label_view == ORGAN_IDS[vessel.inside]
        tissue_view[inside] = vessel.tissue


def default_threads() -> int:
    """Threads a case uses by default: the CPUs this process may run on, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _meta(root, size, domain, scan: Scan, patient, grid: Grid, voxel_counts) -> dict:
    voxel_ml = float(np.prod(grid.spacing_xyz)) / 1000.0
    painted = {name: voxel_counts[name]["painted"] for name in voxel_counts}
    return {
        "size": size,
        "seed": {"entropy": root.entropy, "spawn_key": list(root.spawn_key)},
        "domain": domain.as_dict(),
        "full_field": scan.full_field,
        "direction": scan.direction_name,
        "includes_chest": bool(grid.z[-1] > max(patient.dome_right, patient.dome_left) + 10.0),
        "includes_pelvis": bool(grid.z[0] < -3.7 * patient.pitch),
        "organs_present": [i for i in ORGANS if painted[ORGANS[i]] > 0],
        "organ_volumes_ml": {ORGANS[i]: round(painted[ORGANS[i]] * voxel_ml, 2) for i in ORGANS},
        "organ_voxels": voxel_counts,
        "patient": {
            "scale": round(patient.scale, 4),
            "subcutaneous_fat_mm": round(patient.fat_mm, 1),
            "patient_origin_mm": [round(v, 3) for v in scan.patient_origin],
        },  # fmt: skip
    }
