"""Preparing one case, and the robust batch that writes the case store.

Per case: read and check, reorient to canonical, then
* coarse: the whole volume resized to ``coarse_size`` (image trilinear, labels nearest);
* fine: a box around the organs plus ``margin_mm``, cropped at full resolution and resized
  to ``fine_size``. The box comes from the labels (labeled cases), else from the coarse model
  when ``coarse_weights`` is set (the box inference crops to:
  :class:`segcore.inference.predictor.CoarseLocator`), else from the body outline; the record says which
  (``crop_source``), and ``crop_note`` says why the body outline was used when the coarse
  model found no organ.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from data_prepare.cases import CaseSource, find_cases
from segcore.config import config_hash
from segcore.inference.boxes import DEFAULT_MARGIN_MM, Box, box_to_original, crop, expand_box, foreground_box
from segcore.inference.predictor import CoarseLocator
from segcore.inference.stage import file_sha256
from segcore.store import (
    COARSE_IMAGE,
    COARSE_LABEL,
    FINE_IMAGE,
    FINE_LABEL,
    RECORD_FORMAT_VERSION,
    CaseMeta,
    StoreWriter,
)
from segcore.volumes import DEFAULT_MAX_VOXELS, VolumeError, read_labels_on_grid, read_volume
from segcore.volumes.body_region import body_mask, keep_body
from segcore.volumes.geometry import to_canonical
from segcore.volumes.resample import resize_image, resize_labels

BODY_STRIDE = 4
"""The body-outline heuristic works on every 4th voxel: plenty for a bounding box, 64x cheaper."""


@dataclass
class PrepareConfig:
    """Settings of a preparation run (``data_prepare/config.yaml``)."""

    data_root: str = "dataset"
    out: str = "dataset/prepared.lmdb"
    coarse_size: list[int] = field(default_factory=lambda: [160, 160, 160])
    fine_size: list[int] = field(default_factory=lambda: [192, 192, 192])
    margin_mm: float = DEFAULT_MARGIN_MM
    body_threshold_hu: float = -500.0
    folds: int = 5
    seed: int = 0
    workers: int = 2
    max_voxels: int = DEFAULT_MAX_VOXELS
    coarse_weights: str | None = None
    body_region: bool = False
    """Set everything outside the patient's trunk (arms, table, cushions) to air before anything
    is stored (:mod:`segcore.volumes.body_region`), as the predictor does with ``body_region``."""

    def output_hash(self, source: CaseSource | None = None) -> str:
        """Hash of every setting that changes what is stored for a case.

        Cases outside the labeled split (unlabeled, test) may take their crop from the coarse
        model, so with ``coarse_weights`` their hash also holds the checkpoint's SHA-256: new
        weights redo them, while labeled cases (cropped by their labels) stay as they are.
        """
        values = {
            "coarse_size": list(self.coarse_size),
            "fine_size": list(self.fine_size),
            "margin_mm": float(self.margin_mm),
            "body_threshold_hu": float(self.body_threshold_hu),
            "format_version": RECORD_FORMAT_VERSION,
        }
        if self.body_region:  # off, the hash of stores written before the option existed holds
            values["body_region"] = True
        if self.uses_coarse_model(source):
            values["coarse_weights_sha256"] = coarse_weights_sha256(self.coarse_weights)
        return config_hash(values)

    def uses_coarse_model(self, source: CaseSource | None) -> bool:
        """Whether a case without an organ box from labels is cropped by the coarse model."""
        return bool(self.coarse_weights) and source is not None and source.split != "labeled"


def coarse_weights_sha256(path: str) -> str:
    """SHA-256 of the coarse checkpoint, computed once per process and file version."""
    stat = os.stat(path)
    return _sha256_of_version(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _sha256_of_version(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def to_int16(volume: torch.Tensor) -> np.ndarray:
    """Round a float HU tensor to int16 (clipped to its range)."""
    return volume.round().clamp(-32768, 32767).to(torch.int16).numpy()


def body_box(canonical_image: np.ndarray, threshold_hu: float) -> Box | None:
    """Bounding box of the largest connected region above ``threshold_hu`` (the body), or None."""
    coarse = canonical_image[::BODY_STRIDE, ::BODY_STRIDE, ::BODY_STRIDE] > threshold_hu
    components, count = ndimage.label(coarse)
    if count == 0:
        return None
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    box = foreground_box(components == largest)
    shape = canonical_image.shape
    return tuple((start * BODY_STRIDE, min(size, stop * BODY_STRIDE)) for (start, stop), size in zip(box, shape))


def image_box(
    canonical_image: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    config: PrepareConfig,
    locator: CoarseLocator | None,
) -> tuple[Box | None, str, str | None]:
    """The organs' box of a case without labels: from the coarse model if given, else from the body outline.

    Returns:
        ``(box, crop_source, crop_note)``: the box (canonical voxels, no margin) or None,
        ``"coarse_model"`` or ``"body_heuristic"``, and why the body outline was used despite a
        coarse model (else None).
    """
    note = None
    if locator is not None:
        found = locator.locate(canonical_image, spacing_zyx).organ_box
        if found is not None:
            return found, "coarse_model", None
        note = "the coarse model found no organ; body outline used"
    return body_box(canonical_image, config.body_threshold_hu), "body_heuristic", note


def prepare_case(
    source: CaseSource, config: PrepareConfig, locator: CoarseLocator | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read, check, reorient and resize one case.

    Args:
        source: the case.
        config: the run's settings.
        locator: the coarse model of ``config.coarse_weights`` (loaded here when not given).

    Returns:
        ``(meta, arrays)`` ready for :meth:`segcore.store.StoreWriter.put_case`.

    Raises:
        VolumeError: the case cannot be used (the message names the file and the reason).
    """
    root = Path(config.data_root)
    image_path = root / source.image_path
    image, geometry = read_volume(image_path, max_voxels=config.max_voxels)
    labels = None
    if source.label_path is not None:
        labels = read_labels_on_grid(root / source.label_path, geometry, image_path=image_path)
    canonical_image, reorientation = to_canonical(image, geometry)
    canonical = reorientation.canonical
    if config.body_region:
        canonical_image = keep_body(canonical_image, body_mask(canonical_image, canonical.spacing_zyx))
    arrays = {COARSE_IMAGE: to_int16(resize_image(canonical_image, config.coarse_size))}

    if labels is not None:
        canonical_labels = reorientation.apply(labels)
        arrays[COARSE_LABEL] = resize_labels(canonical_labels, config.coarse_size).numpy()
        organ_box = foreground_box(canonical_labels)
        if organ_box is None and source.split == "labeled":
            raise VolumeError(root / source.label_path, "label file holds no organ voxels")
        crop_source = "labels"
    crop_note = coarse_sha256 = None
    if labels is None or organ_box is None:
        if config.uses_coarse_model(source):
            locator = locator or CoarseLocator.from_file(config.coarse_weights, device="cpu")
            coarse_sha256 = coarse_weights_sha256(config.coarse_weights)
        else:
            locator = None
        organ_box, crop_source, crop_note = image_box(canonical_image, canonical.spacing_zyx, config, locator)
        if organ_box is None:
            raise VolumeError(image_path, f"no body found (nothing above {config.body_threshold_hu:g} HU)")

    box = expand_box(organ_box, config.margin_mm, canonical.spacing_zyx, canonical.shape_zyx)
    arrays[FINE_IMAGE] = to_int16(resize_image(crop(canonical_image, box), config.fine_size))
    if labels is not None:
        arrays[FINE_LABEL] = resize_labels(crop(canonical_labels, box), config.fine_size).numpy()

    meta = CaseMeta(
        id=source.id,
        split=source.split,
        config_hash=config.output_hash(source),
        image_path=source.image_path,
        label_path=source.label_path,
        geometry=asdict(geometry),
        reorientation={"axes_zyx": list(reorientation.axes_zyx), "flips_zyx": list(reorientation.flips_zyx)},
        canonical_shape=list(canonical.shape_zyx),
        canonical_spacing=list(canonical.spacing_zyx),
        crop_box_canonical=[list(pair) for pair in box],
        crop_box_original=box_to_original(box, reorientation),
        crop_source=crop_source,
        crop_note=crop_note,
        coarse_weights_sha256=coarse_sha256,
        labels_present=[] if labels is None else [int(v) for v in np.unique(labels) if v],
    )
    return meta, arrays


_WORKER_LOCATOR: CoarseLocator | None = None
"""The coarse model of a worker process, loaded once by :func:`_init_worker`."""


def _prepare_or_reason(source: CaseSource, config: PrepareConfig):
    """Worker entry: the prepared case, or the one-line reason it failed."""
    try:
        return prepare_case(source, config, _WORKER_LOCATOR)
    except VolumeError as error:
        return str(error)
    except Exception as error:  # one bad case must not stop the batch; report it with its type
        return f"{source.image_path}: {type(error).__name__}: {error}"


def _init_worker(coarse_weights: str | None) -> None:
    global _WORKER_LOCATOR
    torch.set_num_threads(1)  # one case per core: threads would only fight each other
    if coarse_weights:
        _WORKER_LOCATOR = CoarseLocator.from_file(coarse_weights, device="cpu")


def load_coarse_locator(config: PrepareConfig) -> CoarseLocator | None:
    """Load ``config.coarse_weights`` once here, so that a bad file fails the run at once, not every case.

    Raises:
        ValueError: the file is missing, not a checkpoint, or not a coarse one.
    """
    if not config.coarse_weights:
        return None
    try:
        return CoarseLocator.from_file(config.coarse_weights, device="cpu")
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"coarse weights {config.coarse_weights}: {error}") from None


@dataclass
class PrepareReport:
    """What a run did: stored, skipped (already prepared with this config) and failed case ids."""

    stored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"stored {len(self.stored)}, skipped {len(self.skipped)} (already prepared), failed {len(self.failed)}"
        ]
        lines += [f"  FAILED {case_id}: {reason}" for case_id, reason in sorted(self.failed.items())]
        return "\n".join(lines)


def make_splits(cases: list[CaseSource], stored: set[str], folds: int, seed: int) -> dict[str, Any]:
    """Folds of the labeled cases (shuffled with ``seed``), the unlabeled and the test lists."""
    by_split: dict[str, list[str]] = {"labeled": [], "unlabeled": [], "test": []}
    for case in cases:
        if case.id in stored:
            by_split[case.split].append(case.id)
    labeled = sorted(by_split["labeled"])
    order = np.random.default_rng(seed).permutation(len(labeled))
    shuffled = [labeled[i] for i in order]
    return {
        "folds": [sorted(shuffled[fold::folds]) for fold in range(folds)],
        "unlabeled": sorted(by_split["unlabeled"]),
        "test": sorted(by_split["test"]),
    }


def run(config: PrepareConfig, *, force: bool = False, progress: bool = True) -> PrepareReport:
    """Prepare every case of ``config.data_root`` into the store at ``config.out``.

    Each case is written in its own transaction by this (the only writing) process as soon
    as a worker returns it, so an interrupted run loses at most the cases in flight and a
    re-run completes the rest. A worker that dies fails only the cases it had in flight.
    """
    load_coarse_locator(config)
    cases, problems = find_cases(Path(config.data_root))
    report = PrepareReport(failed=dict(problems))
    wanted_hash = {case.id: config.output_hash(case) for case in cases}
    with StoreWriter(config.out) as writer:
        todo = []
        for case in cases:
            if not force and writer.stored_config_hash(case.id) == wanted_hash[case.id]:
                report.skipped.append(case.id)
            else:
                todo.append(case)
        bar = tqdm(total=len(todo), desc="prepare", unit="case", disable=not progress)
        pending = list(reversed(todo))
        while pending:
            _run_pool(pending, config, writer, report, bar)
        bar.close()
        stored = {case.id for case in cases if writer.stored_config_hash(case.id) == wanted_hash[case.id]}
        splits = make_splits(cases, stored, config.folds, config.seed)
        splits["selections"] = writer.read_splits().get("selections", {})
        writer.put_splits(splits)
    return report


def _run_pool(
    pending: list[CaseSource], config: PrepareConfig, writer: StoreWriter, report: PrepareReport, bar
) -> None:
    """Feed ``pending`` (consumed from its end) to a worker pool, keeping at most two cases per worker in flight."""
    workers = max(1, min(config.workers, len(pending)))
    in_flight: dict[Future, CaseSource] = {}
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(config.coarse_weights,)
    ) as pool:
        try:
            while pending or in_flight:
                while pending and len(in_flight) < 2 * workers:
                    case = pending.pop()
                    in_flight[pool.submit(_prepare_or_reason, case, config)] = case
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    case = in_flight.pop(future)
                    result = future.result()
                    if isinstance(result, str):
                        report.failed[case.id] = result
                    else:
                        writer.put_case(*result)
                        report.stored.append(case.id)
                    bar.update()
        except BrokenProcessPool:
            # A worker was killed (out of memory, a signal): fail what was in flight, go on with a fresh pool.
            for case in in_flight.values():
                report.failed[case.id] = f"{case.image_path}: worker process died (killed or out of memory)"
                bar.update()
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def worker_count(requested: int | None) -> int:
    """Workers to use: as requested, else one per available core."""
    return requested if requested else len(os.sched_getaffinity(0))
