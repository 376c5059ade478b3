"""Writing a FLARE22-layout data root of phantoms.

Layout (``out/``)::

    train_images/FLARE22_Tr_0001_0000.nii.gz   labeled CTs          train_mask/FLARE22_Tr_0001.nii.gz
    trainu_images/Case_00001_0000.nii.gz       unlabeled CTs
    val_images/FLARE22_Ts_0001_0000.nii.gz     held-out CTs         val_mask/FLARE22_Ts_0001.nii.gz
    phantom_cases.json                         per-case description (domain, grid, organ volumes)

Case ``i`` of a split draws its randomness from ``SeedSequence(seed, spawn_key=(split, i))``
only, so it is the same whatever else is generated, in whatever order or process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcore.phantom.generate import check_phases, generate_case
from segcore.phantom.tissues import PhantomDomain, domain_group
from segcore.volumes import write_volume

MANIFEST = "phantom_cases.json"
UNLABELED_MASK_DIR = "trainu_mask"


@dataclass(frozen=True)
class Split:
    """One part of the data root.

    Attributes:
        key: the split's number in the seed's spawn key.
        image_dir, mask_dir: folder names (``mask_dir`` None: no labels written).
        id_format: case id from the 1-based case number.
        full_field_share: fraction of cases whose field of view holds every organ.
    """

    key: int
    image_dir: str
    mask_dir: str | None
    id_format: str
    full_field_share: float


SPLITS: dict[str, Split] = {
    "labeled": Split(0, "train_images", "train_mask", "FLARE22_Tr_{:04d}", 1.0),
    "unlabeled": Split(1, "trainu_images", None, "Case_{:05d}", 0.8),
    "val": Split(2, "val_images", "val_mask", "FLARE22_Ts_{:04d}", 0.85),
}
_FIELD_STREAM, _DETAIL_STREAM, _CLINICAL_STREAM = 1000, 1001, 1002
"""Spawn-key suffixes of the streams that decide whether a case is full-field, whether it has the
detailed anatomy and whether the clinical one (apart from the case's own streams, so that no decision
changes what a case draws)."""


def case_id(split: str, index: int) -> str:
    """FLARE22-style id of case ``index`` (0-based) of ``split``: ``FLARE22_Tr_0001``, ``Case_00001``, ..."""
    return SPLITS[split].id_format.format(index + 1)


def case_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of case ``index`` of ``split``: depends on nothing else."""
    return np.random.SeedSequence(int(seed), spawn_key=(SPLITS[split].key, int(index)))


def _drawn(seed: int, split: str, index: int, stream: int, share: float) -> bool:
    """Whether case ``index`` of ``split`` is among ``share`` of the cases, drawn from its own ``stream``."""
    if share >= 1.0 or share <= 0.0:
        return share >= 1.0
    key = (SPLITS[split].key, int(index), stream)
    return bool(np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key)).random() < share)


def is_detailed(seed: int, split: str, index: int, share: float) -> bool:
    """Whether case ``index`` of a training split gets the detailed anatomy when ``share`` of them do."""
    return _drawn(seed, split, index, _DETAIL_STREAM, share)


def is_clinical(seed: int, split: str, index: int, share: float) -> bool:
    """Whether case ``index`` of a training split gets the clinical anatomy when ``share`` of them do."""
    return _drawn(seed, split, index, _CLINICAL_STREAM, share)


def _make_case(task: tuple) -> dict:
    out, split, index, seed, size, domain, threads, mask_dir, randomise, vary, detailed, clinical, phases = task
    started = time.perf_counter()
    full_field = _drawn(seed, split, index, _FIELD_STREAM, SPLITS[split].full_field_share)
    phantom = generate_case(
        case_seed(seed, split, index), size, domain, full_field=full_field, threads=threads, randomise=randomise,
        vary=vary, detailed=is_detailed(seed, split, index, detailed),
        clinical=is_clinical(seed, split, index, clinical), phases=phases,
    )  # fmt: skip
    generated = time.perf_counter()
    spec, name = SPLITS[split], case_id(split, index)
    write_volume(Path(out) / spec.image_dir / f"{name}_0000.nii.gz", phantom.image, phantom.geometry)
    if mask_dir is not None:
        write_volume(Path(out) / mask_dir / f"{name}.nii.gz", phantom.label, phantom.geometry)
    return {
        "id": name,
        "split": split,
        "size_xyz": list(phantom.geometry.size),
        "spacing_xyz": [round(s, 4) for s in phantom.geometry.spacing],
        "direction": list(phantom.geometry.direction),
        "generate_s": round(generated - started, 3),
        "write_s": round(time.perf_counter() - generated, 3),
        **phantom.meta,
    }


def _make_cases(tasks: list[tuple], workers: int, progress: bool) -> list[dict]:
    """Every case of ``tasks``, in order, in this process or in ``workers`` spawned ones."""
    bar = tqdm(total=len(tasks), desc="phantoms", unit="case", disable=not progress)
    if workers <= 1:
        records = []
        for task in tasks:
            records.append(_make_case(task))
            bar.update()
    else:
        # Spawned workers: safe whatever the parent has imported (threads, CUDA).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            records = []
            for record in pool.map(_make_case, tasks):
                records.append(record)
                bar.update()
    bar.close()
    return records


def write_dataset(
    out: str | os.PathLike,
    labeled: int,
    unlabeled: int,
    val: int,
    size: str = "small",
    seed: int = 0,
    *,
    workers: int = 1,
    domain: PhantomDomain | None = None,
    val_domain: PhantomDomain | None = None,
    unlabeled_masks: bool = False,
    randomise: bool = False,
    vary: bool = False,
    detailed: float = 0.0,
    clinical: float = 0.0,
    phases: tuple[str, ...] | None = None,
    start: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Generate phantoms and write them in the FLARE22 layout.

    Args:
        out: data root (created; existing files of the same names are replaced).
        labeled, unlabeled, val: number of cases per split.
        size: ``"small"``, ``"medium"`` or ``"full"``.
        seed: dataset seed.
        workers: processes (1: in this process).
        domain: force this imaging domain on every case (None: each case draws its own).
        val_domain: force this domain on the validation cases only (a shifted test set).
        unlabeled_masks: also write the unlabeled cases' labels, to ``trainu_mask/`` (a folder
            ``data_prepare`` does not read: for upper-bound experiments that label everything).
        randomise: training cases (labeled and unlabeled) draw domain-randomised imaging
            (:func:`~segcore.phantom.tissues.sample_randomised_domain`); validation cases stay
            realistic, so that held-out figures measure the realistic domain.
        vary: training cases get anatomy and field-of-view variation (``generate_case(vary=True)``:
            organs moved, resized, deformed and sometimes removed; slabs and narrow fields);
            validation cases stay realistic.
        detailed: share of the training cases that get the detailed anatomy
            (``generate_case(detailed=True)``: habitus, great vessels, crura, adrenals, bowel); ``True``
            or 1: all of them; between 0 and 1, each case is drawn from a stream of its own
            (:func:`is_detailed`), so a case is the same whether the share takes it or it is made
            alone with ``detailed=True``. Validation cases stay realistic.
        clinical: share of the training cases that get the clinical anatomy
            (``generate_case(clinical=True)``: lesions counted as their organ, gallbladder and stomach
            states, the IVC by contrast phase), drawn case by case like ``detailed``
            (:func:`is_clinical`, a stream of its own). Validation cases stay realistic.
        phases: the cases that draw their own domain draw one of these contrast phases
            (``generate_case(phases=...)``); None: any.
        start: index of each split's first case: ``start=36`` writes ``Case_00037`` onwards, with
            those cases' own seeds, so that cases made by another call (another ``domain`` or
            ``phases``) join a dataset without replacing its cases.
        progress: show a progress bar.

    Returns:
        One record per case (id, split, grid, timings, the phantom's ``meta`` and its imaging
        ``domain_group``), also written to ``out/phantom_cases.json``.
    """
    out = Path(out)
    check_phases(phases)
    if start < 0:
        raise ValueError(f"start: the first case's index must not be negative (got {start})")
    for count, name in ((labeled, "labeled"), (unlabeled, "unlabeled"), (val, "val")):
        if count < 0:
            raise ValueError(f"{name}: number of cases must not be negative (got {count})")
    for share, name in ((detailed, "detailed"), (clinical, "clinical")):
        if not 0.0 <= float(share) <= 1.0:
            raise ValueError(f"{name}: share of cases must lie in [0, 1] (got {share})")
    # Worker processes already fill the CPUs: one thread each.
    threads = 1 if workers > 1 else None
    mask_dirs = {name: spec.mask_dir for name, spec in SPLITS.items()}
    if unlabeled_masks:
        mask_dirs["unlabeled"] = UNLABELED_MASK_DIR
    tasks = [
        (str(out), split, index, seed, size, (val_domain or domain) if split == "val" else domain, threads,
         mask_dirs[split], randomise and split != "val", vary and split != "val",
         0.0 if split == "val" else float(detailed), 0.0 if split == "val" else float(clinical),
         None if phases is None else tuple(phases))
        for split, count in (("labeled", labeled), ("unlabeled", unlabeled), ("val", val))
        for index in range(start, start + count)
    ]  # fmt: skip
    for name, spec in SPLITS.items():
        for folder in (spec.image_dir, mask_dirs[name]):
            if folder is not None:
                (out / folder).mkdir(parents=True, exist_ok=True)
    records = _make_cases(tasks, workers, progress)
    for record in records:  # the imaging domain's group, as UIF reports its picks (semi.uif_domains)
        record["domain_group"] = domain_group(record["domain"])
    (out / MANIFEST).write_text(json.dumps(records, indent=1))
    return records
