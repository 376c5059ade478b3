"""How far to trust one segmentation: measures the predictor already has, and a verdict.

Measures (:func:`assess`), all from one inference, no extra network run:

* ``entropy``: the fine net's mean normalised entropy ``-sum_c p_c log p_c / log C`` (0..1) over
  the voxels it gives to an organ or doubts about (organs together at least
  :data:`FOREGROUND_DOUBT` of the probability): the quantity UIF ranks unlabeled cases by;
* per organ: its mean normalised entropy and the share of its voxels above
  :data:`UNCERTAIN_ENTROPY`; its volume (mL) against a plausible adult range
  (:data:`PLAUSIBLE_ML`), the lower bound waived for an organ cut by the scan's first or last slice;
* ``coarse_fine_dice``: mean Dice, over organs in either map, of the coarse labels resampled
  onto the fine crop against the fine labels there (two independent looks at the same scan);
* ``organ_count`` and ``chest_share``: the share of the scan's body slices that look like chest
  (air inside the body outline on more than :data:`CHEST_AIR_SHARE` of the slice: lungs), an
  abdominal model's field of view being mostly elsewhere.

The verdict is ``fail`` (no organ, mostly chest, very uncertain, the two stages disagree
badly), ``review`` (uncertain, disagreeing, implausible volumes, few organs) or ``ok``, with
every reason. The thresholds (:class:`Thresholds`) were fixed on calibration phantoms by
``bench/quality.py``, never on real scans; its README section gives the figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from segcore.labels import ORGANS

FOREGROUND_DOUBT = 0.25
"""A voxel is in the entropy region when the organs together get at least this probability."""
UNCERTAIN_ENTROPY = 0.25
"""A voxel whose normalised entropy is above this counts as uncertain."""
LUNG_HU = (-950.0, -600.0)
"""Aerated lung; air outside the body and bowel gas are darker, soft tissue brighter."""
CHEST_AIR_SHARE = 0.15
"""A slice with more lung than this share of its non-air voxels shows the chest."""
PLAUSIBLE_ML = {
    # Adult organ volumes, wide on purpose (whole organ; a cut organ is only checked from above).
    # Liver: autopsy weights 0.8-3 kg (Molina & DiMaio 2012, Am J Forensic Med Pathol 33:368) at ~1.05 g/mL.
    "liver": (600.0, 3500.0),
    # Spleen: CT volumes 107-314 mL in healthy adults (Prassopoulos et al. 1997, Eur Radiol 7:246),
    # widened for splenomegaly and small spleens.
    "spleen": (30.0, 1500.0),
    # Kidneys: 100-250 mL each in adults (Emamian et al. 1993, AJR 160:83; CT series since).
    "right_kidney": (50.0, 400.0),
    "left_kidney": (50.0, 400.0),
    # Pancreas: 40-110 mL on CT, mean ~72 mL (Saisho et al. 2007, Clin Anat 20:933).
    "pancreas": (15.0, 200.0),
    # Adrenals: 2-8 mL each on CT volumetry (Carsin-Vu et al. 2016, AJR 206:1026).
    "right_adrenal_gland": (0.5, 30.0),
    "left_adrenal_gland": (0.5, 30.0),
    # Gallbladder: fasting 15-60 mL, up to ~100 mL (ultrasound volumetry reviews); 0 after cholecystectomy.
    "gallbladder": (2.0, 300.0),
}
"""Plausible adult volumes in mL; tubular and hollow organs (aorta, IVC, esophagus, stomach,
duodenum) depend on the field of view and the filling and are not checked."""

Verdict = Literal["ok", "review", "fail"]


@dataclass(frozen=True)
class Thresholds:
    """Where the verdict changes: fixed for the default model on calibration phantoms by
    ``bench/quality.py`` (other weights: run it with ``--weights`` and use what it prints)."""

    entropy_review: float = 0.105
    entropy_fail: float = 0.21
    agreement_review: float = 0.2
    agreement_fail: float = 0.1
    chest_fail: float = 0.6
    min_organs: int = 6


@dataclass
class Quality:
    """The measures of one case and its verdict (see the module docstring)."""

    verdict: Verdict
    reasons: list[str]
    entropy: float
    coarse_fine_dice: float
    organ_count: int
    chest_share: float
    organs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalised_entropy(probabilities: torch.Tensor, *, slab: int = 8) -> torch.Tensor:
    """``-sum_c p_c log p_c / log C`` of ``(C, z, ...)`` probabilities: 0 (certain) to 1 (uniform),
    ``slab`` planes of ``z`` at a time (no second tensor of every class: 396 MB on the fine grid)."""
    classes = probabilities.shape[0]
    entropy = probabilities.new_empty(probabilities.shape[1:])
    for start in range(0, probabilities.shape[1], slab):
        part = probabilities[:, start : start + slab]
        entropy[start : start + slab] = torch.special.xlogy(part, part).sum(0).neg_().div_(math.log(classes))
    return entropy


def entropy_region(labels: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Voxels given to an organ, or where the organs together get at least :data:`FOREGROUND_DOUBT`
    (``background``: the background class's probability)."""
    return (labels > 0) | (background <= 1 - FOREGROUND_DOUBT)


def chest_share(canonical_image: np.ndarray) -> float:
    """Share of the body slices (canonical axis 0) that show lungs: more than :data:`CHEST_AIR_SHARE`
    of the slice's non-air voxels in the lung range :data:`LUNG_HU`, away from outside air (the
    skin's partial-volume rim falls in that range too). Works on crops that cut through the body;
    on every ``step``-th voxel in-plane, ``step`` bringing the plane to about 128 voxels a side."""
    step = max(1, min(canonical_image.shape[1:]) // 128)
    chest = body = 0
    for plane in canonical_image[:, ::step, ::step]:
        tissue = plane > LUNG_HU[0]
        if tissue.sum() < 64:
            continue
        body += 1
        rim = ndimage.binary_dilation(~tissue, iterations=2)
        lung = tissue & (plane < LUNG_HU[1]) & ~rim
        chest += int(lung.sum()) > CHEST_AIR_SHARE * int(tissue.sum())
    return chest / body if body else 0.0


def stage_agreement(fine_labels: torch.Tensor, coarse_in_crop: torch.Tensor, classes: int = len(ORGANS) + 1) -> float:
    """Mean Dice over the organs in either ``(z, y, x)`` label map (1.0 when both are empty), from
    one joint histogram of the two maps."""
    joint = torch.bincount(
        fine_labels.reshape(-1).long() * classes + coarse_in_crop.reshape(-1).long(), minlength=classes * classes
    ).reshape(classes, classes)
    sizes = (joint.sum(1) + joint.sum(0))[1:]  # voxels of each organ in the fine map plus in the coarse one
    present = sizes > 0
    return float((2 * joint.diagonal()[1:][present] / sizes[present]).mean()) if present.any() else 1.0


def coarse_on_crop(coarse_labels: np.ndarray, crop_box, full_shape, size) -> torch.Tensor:
    """The coarse labels of the crop box (full-resolution canonical voxels), nearest-resized to ``size``."""
    scale = [c / f for c, f in zip(coarse_labels.shape, full_shape, strict=True)]
    region = tuple(
        slice(int(math.floor(start * s)), max(int(math.floor(start * s)) + 1, int(math.ceil(stop * s))))
        for (start, stop), s in zip(crop_box, scale, strict=True)
    )
    part = torch.from_numpy(np.ascontiguousarray(coarse_labels[region])).float()[None, None]
    return F.interpolate(part, size=tuple(size), mode="nearest")[0, 0].to(torch.uint8)


def organ_measures(
    fine_labels: torch.Tensor,
    entropy: torch.Tensor,
    labels: np.ndarray,
    cut_labels: set[int],
    spacing_zyx: tuple[float, float, float],
) -> dict[str, dict[str, Any]]:
    """Per organ present in the final ``labels``: its entropy and uncertain share on the fine grid
    (``fine_labels``, ``entropy``), its volume and whether that is plausible (the lower bound
    waived for the organs in ``cut_labels``, cut by the scan's first or last slice)."""
    classes = len(ORGANS) + 1
    flat = fine_labels.reshape(-1).long()
    fine_counts = torch.bincount(flat, minlength=classes).double()
    entropy_sums = torch.bincount(flat, weights=entropy.reshape(-1).double(), minlength=classes)
    uncertain = torch.bincount(flat, weights=(entropy > UNCERTAIN_ENTROPY).reshape(-1).double(), minlength=classes)
    # torch counts uint8 as it is; numpy's bincount first widens every voxel to 64 bits.
    counts = torch.bincount(torch.from_numpy(np.ascontiguousarray(labels)).reshape(-1), minlength=classes).numpy()
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    measures = {}
    for organ, name in ORGANS.items():
        if counts[organ] == 0:
            continue
        volume = round(float(counts[organ]) * voxel_ml, 3)
        low, high = PLAUSIBLE_ML.get(name, (0.0, math.inf))
        seen = float(fine_counts[organ])
        measures[name] = {
            "volume_ml": volume,
            "entropy": round(float(entropy_sums[organ]) / seen, 4) if seen else None,
            "uncertain_share": round(float(uncertain[organ]) / seen, 4) if seen else None,
            "cut_by_field_of_view": organ in cut_labels,
            "plausible_volume": bool(volume <= high and (organ in cut_labels or volume >= low)),
        }
    return measures


def edge_labels(canonical_labels: np.ndarray) -> set[int]:
    """Labels present on the first or last slice (canonical axis 0): organs the scan cuts."""
    return {int(v) for v in np.unique(canonical_labels[[0, -1]]) if v}


def verdict(
    entropy: float, agreement: float, chest: float, organs: dict[str, dict[str, Any]], thresholds: Thresholds
) -> tuple[Verdict, list[str]]:
    """``ok | review | fail`` and the reasons (every threshold crossed, worst first)."""
    fail, review = [], []
    if not organs:
        fail.append("no organ found")
    if chest > thresholds.chest_fail:
        fail.append(f"the field of view is mostly chest ({chest:.0%} of body slices show lungs)")
    if entropy > thresholds.entropy_fail:
        fail.append(f"fine-stage entropy {entropy:.3f} > {thresholds.entropy_fail:g}")
    elif entropy > thresholds.entropy_review:
        review.append(f"fine-stage entropy {entropy:.3f} > {thresholds.entropy_review:g}")
    if organs and agreement < thresholds.agreement_fail:
        fail.append(f"coarse and fine stages agree poorly (Dice {agreement:.2f} < {thresholds.agreement_fail:g})")
    elif organs and agreement < thresholds.agreement_review:
        review.append(f"coarse and fine stages disagree (Dice {agreement:.2f} < {thresholds.agreement_review:g})")
    if organs and len(organs) < thresholds.min_organs:
        review.append(f"only {len(organs)} organs found")
    implausible = [f"{name} {m['volume_ml']:.0f} mL" for name, m in organs.items() if not m["plausible_volume"]]
    if implausible:
        review.append("implausible volumes: " + ", ".join(implausible))
    return ("fail" if fail else "review" if review else "ok"), fail + review


def assess(
    probabilities: torch.Tensor,
    coarse_in_crop: torch.Tensor,
    crop_labels: np.ndarray,
    cut_labels: set[int],
    canonical_image: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    thresholds: Thresholds | None = None,
    fine_labels: torch.Tensor | None = None,
) -> Quality:
    """The :class:`Quality` of one case from the fine probabilities ``(C, z, y, x)`` at the fine input
    size, the coarse labels on the same crop and grid, the final labels of the crop (all the organ
    voxels there are), the organs the scan cuts (:func:`edge_labels`) and the canonical image.

    One pass for each quantity over the fine grid (``fine_labels``: the probabilities' argmax,
    when the caller has it already), joint histograms instead of a mask per organ."""
    probabilities = probabilities.float().cpu()
    fine_labels = probabilities.max(0).indices if fine_labels is None else fine_labels
    entropy = normalised_entropy(probabilities)
    region = entropy_region(fine_labels, probabilities[0])
    case_entropy = float(entropy[region].mean()) if region.any() else 1.0
    agreement = stage_agreement(fine_labels, coarse_in_crop.cpu())
    organs = organ_measures(fine_labels, entropy, crop_labels, cut_labels, spacing_zyx)
    chest = chest_share(canonical_image)
    status, reasons = verdict(case_entropy, agreement, chest, organs, thresholds or Thresholds())
    return Quality(status, reasons, round(case_entropy, 4), round(agreement, 4), len(organs), round(chest, 4), organs)


def empty_quality(canonical_image: np.ndarray) -> Quality:
    """The verdict of a case where the coarse stage found nothing."""
    chest = chest_share(canonical_image)
    status, reasons = verdict(1.0, 0.0, chest, {}, Thresholds())
    return Quality(status, reasons, 1.0, 0.0, 0, round(chest, 4), {})
