"""The two-stage predictor: the coarse net finds the organs' region, the fine net segments it.

Built once from a coarse and a fine checkpoint (the server keeps one for its lifetime), then
called per volume::

    predictor = Predictor.from_weights("model_weights")     # coarse.pt + fine.pt; device/precision "auto"
    prediction, image, geometry = predictor.predict_file("ct_0000.nii.gz")   # NIfTI or DICOM folder
    prediction.labels        # (z, y, x) uint8 FLARE22 ids on the input's own grid and array order
    organ_statistics(prediction.labels, image, geometry)

Steps of :meth:`Predictor.predict` (the contract in ARCHITECTURE.md, "A CT through inference"):

1. reorient the array to the canonical orientation (a view: axis permutation and flips);
2. coarse: resize the whole canonical volume on the device to the coarse checkpoint's
   ``input_size`` (trilinear), window and z-score with its ``hu_window``, run its ensemble (mean
   softmax; ``coarse_resolution="half"``: on half of that grid, each net's half-resolution logits,
   its full-resolution stage skipped), argmax, clean up components per organ
   (:func:`segcore.inference.postprocess.keep_components`), take the box of all organs,
   map it to full-resolution canonical voxels and add ``margin_mm`` on every side (as
   ``data_prepare`` does for its fine crops);
3. fine: crop the full-resolution canonical volume to that box, resize it to the fine
   ``input_size``, normalise, run, take the argmax of the probabilities trilinearly resized to the
   crop's size, interpolating only where the source's label changes
   (:func:`segcore.inference.postprocess.resize_argmax`: the crop is the only full-resolution
   region, and only uint8 labels exist at full size), clean up components per organ;
4. paste the crop's labels into a zero mask of the canonical shape, undo the reorientation.

When the coarse stage finds no organ the mask is empty and :attr:`Prediction.warnings` says so.
Precision ``auto`` is fp16 autocast on CUDA, and on the CPU bf16 autocast where the CPU has
native bf16 instructions, else fp32 (:func:`resolve_precision`); softmax and everything after it
run in float32.
"""

from __future__ import annotations

import importlib.resources
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segcore.inference.boxes import DEFAULT_MARGIN_MM, Box, box_to_original, expand_box, foreground_box, scale_box
from segcore.inference.postprocess import (
    COMPONENT_SHARES,
    DEFAULT_CHUNK_ELEMENTS,
    keep_components,
    organ_statistics,
    resize_argmax,
    source_winners,
)
from segcore.inference.quality import Quality, assess, coarse_on_crop, edge_labels, empty_quality
from segcore.inference.stage import StageModel, Stopwatch, device_of, file_sha256, resolve_precision, upload
from segcore.networks.checkpoint import load_checkpoint
from segcore.volumes import hu_scale_warning, read_volume
from segcore.volumes.body_region import body_mask, keep_body
from segcore.volumes.geometry import Geometry, to_canonical

__all__ = ["CoarseLocator", "CoarseResult", "Prediction", "Predictor", "StageModel", "organ_statistics"]

DEFAULT_WEIGHTS_DIR = Path(str(importlib.resources.files("model_weights")))
"""The shipped checkpoints, ``coarse.pt`` and ``fine.pt``: the ``model_weights`` package's folder, in the
repository (``model_weights/``) or in an installed copy (its package data)."""

COARSE_RESOLUTIONS = ("half", "full")
"""The grids the coarse stage can answer on (:class:`CoarseLocator`)."""

WEIGHTS_SETTING = "SEGCORE_WEIGHTS"
"""The environment variable naming the folder every command loads when it is given no weights."""


def default_weights_dir() -> Path:
    """The folder loaded when no weights are named: ``$SEGCORE_WEIGHTS`` if set, else the shipped model."""
    named = os.environ.get(WEIGHTS_SETTING, "")
    return Path(named).expanduser() if named else DEFAULT_WEIGHTS_DIR


@dataclass
class CoarseResult:
    """What the coarse stage found in a canonical volume.

    Attributes:
        organ_box: box of all organs in full-resolution canonical voxels (no margin), or None.
        box: ``organ_box`` grown by the margin and clipped to the volume, or None.
        labels: the coarse label map ``(z, y, x)`` on the coarse stage's output grid
            (:attr:`StageModel.output_size`), components cleaned up.
        organs: organ ids found.
    """

    organ_box: Box | None
    box: Box | None
    labels: np.ndarray
    organs: list[int]


class CoarseLocator:
    """The coarse stage alone: where are the organs? (Used by :class:`Predictor` and by ``data_prepare``.)

    Args:
        payload: the coarse checkpoint (:func:`segcore.networks.checkpoint.load_checkpoint`).
        device: ``auto`` | ``cpu`` | ``cuda`` | a torch device.
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16``.
        margin_mm: grown on every side of the organs' box.
        verify: check that the rebuilt networks reproduce their recorded probe outputs.
        component_shares: the component clean-up rule
            (:func:`segcore.inference.postprocess.keep_components`).
        coarse_resolution: ``full`` (the default): the nets answer on their input's grid;
            ``half``: on half of it, where they can
            (:attr:`segcore.networks.blocks.SegmentationNetwork.answers_at_half_resolution`): the
            coarse nets' full-resolution stage is skipped, but the box moves (measured by
            ``experiments.coarse_resolution``: the default model's labels change on 0.28 % of the
            held-out phantoms' voxels with no gain, and its real-CT DSC drops).
    """

    def __init__(
        self,
        payload: dict[str, Any],
        device: str | torch.device = "auto",
        precision: str = "auto",
        *,
        margin_mm: float = DEFAULT_MARGIN_MM,
        verify: bool = False,
        component_shares: np.ndarray = COMPONENT_SHARES,
        coarse_resolution: str = "full",
    ):
        if coarse_resolution not in COARSE_RESOLUTIONS:
            raise ValueError(f"coarse_resolution must be half or full, got {coarse_resolution!r}")
        self.device = device_of(device)
        self.margin_mm = float(margin_mm)
        self.component_shares = np.asarray(component_shares, dtype=np.float64)
        self.model = StageModel.from_payload(
            payload, "coarse", self.device, resolve_precision(precision, self.device), verify,
            half_resolution=coarse_resolution == "half",
        )  # fmt: skip

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "auto", **kwargs: Any) -> CoarseLocator:
        """Load a coarse checkpoint file (see the class for ``kwargs``)."""
        return cls(load_checkpoint(path), device, **kwargs)

    @torch.inference_mode()
    def locate(
        self,
        canonical_image: np.ndarray | torch.Tensor,
        canonical_spacing_zyx: tuple[float, float, float],
        timings: dict[str, float] | None = None,
    ) -> CoarseResult:
        """Run the coarse stage on a canonical ``(z, y, x)`` HU volume.

        Args:
            canonical_image: the whole volume in the canonical orientation (numpy, or a tensor
                already on the device).
            canonical_spacing_zyx: its voxel size in mm.
            timings: filled with ``coarse_resize``, ``coarse_network``, ``coarse_box`` seconds.
        """
        volume, watch = upload(canonical_image, self.device), Stopwatch(self.device, timings)
        probabilities = self.model.probabilities(volume, watch)
        labels = keep_components(probabilities.max(dim=0).indices.to(torch.uint8).cpu().numpy(), self.component_shares)
        del probabilities
        coarse_box = foreground_box(labels)
        organ_box = box = None
        if coarse_box is not None:
            shape = tuple(volume.shape)
            organ_box = scale_box(coarse_box, labels.shape, shape)
            box = expand_box(organ_box, self.margin_mm, canonical_spacing_zyx, shape)
        watch.lap("coarse_box")
        organs = [int(v) for v in np.unique(labels) if v]
        return CoarseResult(organ_box=organ_box, box=box, labels=labels, organs=organs)


@dataclass
class Prediction:
    """The result of :meth:`Predictor.predict`.

    Attributes:
        labels: ``(z, y, x)`` uint8 FLARE22 ids on the input's grid, in the input's array order.
        box: the fine crop in the input's voxels, ``[[x0, x1], [y0, y1], [z0, z1]]`` half-open
            (ITK axis order), or None when the coarse stage found nothing.
        coarse_organs: organ ids the coarse stage found.
        timings: seconds per step (``reorient``, ``coarse_resize``, ``coarse_network``,
            ``coarse_box``, ``fine_resize``, ``fine_network``, ``fine_restore``, ``cleanup``,
            ``paste``, ``total``; :meth:`Predictor.predict_file` adds ``read``).
        warnings: what the caller should know (empty mask, ...).
        quality: how far to trust it: measures and an ``ok | review | fail`` verdict (:mod:`segcore.inference.quality`).
    """

    labels: np.ndarray
    box: list[list[int]] | None
    coarse_organs: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    quality: Quality | None = None


class Predictor:
    """Coarse-to-fine segmentation of whole CT volumes (see the module docstring for the steps).

    Args:
        coarse_payload: the coarse checkpoint as loaded by :func:`segcore.networks.checkpoint.load_checkpoint`.
        fine_payload: the fine checkpoint, loaded the same way.
        device: ``auto`` (this process's GPU if any, else the CPU) | ``cpu`` | ``cuda`` | a torch device.
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16`` (autocast dtype of the networks).
        margin_mm: grown on every side of the coarse organs' box before cropping (as in ``data_prepare``).
        verify: check that the rebuilt networks reproduce their recorded probe outputs.
        chunk_elements: bound on the values interpolated at once at full resolution
            (:func:`segcore.inference.postprocess.resize_argmax`).
        body_region: set everything outside the patient's trunk (arms, table, cushions) to air
            before the coarse stage (:mod:`segcore.volumes.body_region`), so it can neither widen the
            organs' box nor be taken for an organ; for models trained on stores prepared the
            same way (``data_prepare`` ``body_region: true``).
        component_shares: the component clean-up rule of both stages
            (:func:`segcore.inference.postprocess.keep_components`).
        coarse_resolution: ``half`` | ``full``: the coarse stage's answer grid (:class:`CoarseLocator`).
    """

    def __init__(
        self,
        coarse_payload: dict[str, Any],
        fine_payload: dict[str, Any],
        device: str | torch.device = "auto",
        precision: str = "auto",
        *,
        margin_mm: float = DEFAULT_MARGIN_MM,
        verify: bool = False,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        body_region: bool = False,
        component_shares: np.ndarray = COMPONENT_SHARES,
        coarse_resolution: str = "full",
    ):
        self.device = device_of(device)
        self.body_region = body_region
        self.locator = CoarseLocator(
            coarse_payload,
            self.device,
            precision,
            margin_mm=margin_mm,
            verify=verify,
            component_shares=component_shares,
            coarse_resolution=coarse_resolution,
        )
        self.fine = StageModel.from_payload(
            fine_payload, "fine", self.device, resolve_precision(precision, self.device), verify
        )
        self.chunk_elements = chunk_elements
        self.sources: dict[str, dict[str, str]] = {}
        notices = dict.fromkeys(
            payload["notice"] for payload in (coarse_payload, fine_payload) if payload.get("notice")
        )
        self.notice: str | None = " ".join(notices) or None
        """What the weights must not be used for (the checkpoints' ``notice``), or None: said once per run."""

    @classmethod
    def from_weights(
        cls,
        weights_dir: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        **kwargs: Any,
    ) -> Predictor:
        """Build from a folder holding ``coarse.pt`` and ``fine.pt`` (default: :func:`default_weights_dir`).

        Raises:
            FileNotFoundError: the folder or one of the two files is missing (one-line message).
            ValueError: a file is not a checkpoint of this project, or of the wrong stage.
        """
        folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
        paths = {stage: folder / f"{stage}.pt" for stage in ("coarse", "fine")}
        missing = [path.name for path in paths.values() if not path.is_file()]
        if missing:
            what = "folder does not exist" if not folder.is_dir() else f"{' and '.join(missing)} missing"
            named = f", named by {WEIGHTS_SETTING}" if weights_dir is None and os.environ.get(WEIGHTS_SETTING) else ""
            raise FileNotFoundError(
                f"no model weights in {folder} ({what}{named}): it must hold coarse.pt and fine.pt "
                "(train them with coarse_seg/run.sh and fine_seg/run.sh, or pass --weights DIR)"
            )
        payloads = {stage: load_checkpoint(path) for stage, path in paths.items()}
        predictor = cls(payloads["coarse"], payloads["fine"], device, precision, **kwargs)
        predictor.sources = {stage: {"path": str(path), "sha256": file_sha256(path)} for stage, path in paths.items()}
        return predictor

    def info(self) -> dict[str, Any]:
        """What this predictor runs: device, precision, and per stage its input size, window and sources."""
        stages = {"coarse": self.locator.model, "fine": self.fine}
        return {
            "device": str(self.device),
            "precision": str(self.fine.autocast_dtype).removeprefix("torch."),
            "margin_mm": self.locator.margin_mm,
            "body_region": self.body_region,
            "notice": self.notice,
            **{
                name: {
                    "input_size": list(model.input_size),
                    "output_size": list(model.output_size),
                    "hu_window": list(model.hu_window),
                    "networks": len(model.nets),
                    **self.sources.get(name, {}),
                }
                for name, model in stages.items()
            },
        }

    @torch.inference_mode()
    def predict(self, image: np.ndarray, geometry: Geometry) -> Prediction:
        """Segment one volume.

        Args:
            image: ``(z, y, x)`` CT in HU, in its file's array order (as :func:`segcore.volumes.read_volume` returns).
            geometry: its grid.

        Returns:
            The :class:`Prediction`; its labels have ``image``'s shape and order.

        Raises:
            ValueError: ``image`` is not a 3-D array of the shape ``geometry`` describes.
        """
        if image.ndim != 3 or tuple(image.shape) != geometry.shape_zyx:
            raise ValueError(f"image of shape {image.shape} does not match its geometry (z, y, x) {geometry.shape_zyx}")
        started = time.perf_counter()
        watch = Stopwatch(self.device)
        canonical_image, reorientation = to_canonical(image, geometry)
        canonical = reorientation.canonical
        if self.body_region:
            canonical_image = keep_body(canonical_image, body_mask(canonical_image, canonical.spacing_zyx))
            watch.lap("body_region")
        volume = upload(canonical_image, self.device)
        watch.lap("reorient")
        coarse = self.locator.locate(volume, canonical.spacing_zyx, watch.timings)
        watch.resume()
        if coarse.box is None:
            canonical_labels = np.zeros(canonical.shape_zyx, dtype=np.uint8)
            warnings = ["the coarse stage found no organ: the mask is empty"]
            assessed = empty_quality(canonical_image)
        else:
            region = tuple(slice(start, stop) for start, stop in coarse.box)
            probabilities = self.fine.probabilities(volume[region], watch)
            del volume
            canonical_labels, assessed, warnings = self._fine_labels(
                probabilities, coarse, canonical_image, canonical, watch
            )
            del probabilities
        watch.lap("quality")
        if (not_hu := hu_scale_warning(image)) is not None:  # segmented all the same: the warning says why to doubt it
            warnings.append(not_hu)
        labels = np.ascontiguousarray(reorientation.undo(canonical_labels))
        watch.lap("paste")
        watch.timings["total"] = time.perf_counter() - started
        return Prediction(
            labels=labels,
            box=None if coarse.box is None else box_to_original(coarse.box, reorientation),
            coarse_organs=coarse.organs,
            timings=watch.timings,
            warnings=warnings,
            quality=assessed,
        )

    def _fine_labels(
        self,
        probabilities: torch.Tensor,
        coarse: CoarseResult,
        canonical_image: np.ndarray,
        canonical: Geometry,
        watch: Stopwatch,
    ) -> tuple[np.ndarray, Quality, list[str]]:
        """The fine stage's canonical labels (its crop's argmax, cleaned and pasted), their quality and warnings."""
        canonical_labels = np.zeros(canonical.shape_zyx, dtype=np.uint8)
        region = tuple(slice(start, stop) for start, stop in coarse.box)
        crop_shape = tuple(stop - start for start, stop in coarse.box)
        winners = source_winners(probabilities)  # the fine grid's argmax: the restore's and the quality's
        crop_labels = resize_argmax(probabilities, crop_shape, chunk_elements=self.chunk_elements, winners=winners)
        watch.lap("fine_restore")
        crop_labels = keep_components(crop_labels, self.locator.component_shares)
        canonical_labels[region] = crop_labels
        watch.lap("cleanup")
        warnings = (
            [] if canonical_labels.any() else ["the fine stage found no organ inside the coarse box: the mask is empty"]
        )
        coarse_in_crop = coarse_on_crop(coarse.labels, coarse.box, canonical.shape_zyx, probabilities.shape[1:])
        assessed = assess(
            probabilities, coarse_in_crop, crop_labels, edge_labels(canonical_labels),
            canonical_image, canonical.spacing_zyx, fine_labels=torch.from_numpy(winners),
        )  # fmt: skip
        return canonical_labels, assessed, warnings

    def predict_file(self, path: str | os.PathLike) -> tuple[Prediction, np.ndarray, Geometry]:
        """Read a NIfTI file or DICOM series folder (:func:`segcore.volumes.read_volume`) and segment it.

        Returns:
            ``(prediction, image, geometry)``: write ``prediction.labels`` with ``geometry``.

        Raises:
            VolumeError: the input cannot be read or is not a 3-D CT (the message names the file and the reason).
        """
        started = time.perf_counter()
        image, geometry = read_volume(path)
        read_seconds = time.perf_counter() - started
        prediction = self.predict(image, geometry)
        prediction.timings["read"] = read_seconds
        return prediction, image, geometry
