"""The two-stage predictor: the coarse net finds the organs' region, the fine net segments it.

Built once from a coarse and a fine checkpoint (the server keeps one for its lifetime), then
called per volume::

    predictor = Predictor.from_weights("model_weights")     # coarse.pt + fine.pt; device/precision "auto"
    prediction, image, geometry = predictor.predict_file("ct_0000.nii.gz")   # NIfTI or DICOM folder
    prediction.labels        # (z, y, x) uint8 FLARE22 ids on the input's own grid and array order
    organ_statistics(prediction.labels, image, geometry)

Steps of :meth:`Predictor.predict` (the contract in DESIGN.md, "Two-stage prediction"):

1. reorient the array to the canonical orientation (a view: axis permutation and flips);
2. coarse: resize the whole canonical volume on the device to the coarse checkpoint's
   ``input_size`` (trilinear), window and z-score with its ``hu_window``, run its ensemble (mean
   softmax; a half-resolution net's ×2 upsampling is done with the softmax,
   :func:`segcore.resample.upsampled_softmax`), argmax, clean up components per organ
   (:func:`segcore.postprocess.keep_components`), take the box of all organs,
   map it to full-resolution canonical voxels and add ``margin_mm`` on every side (as
   ``data_prepare`` does for its fine crops);
3. fine: crop the full-resolution canonical volume to that box, resize it to the fine
   ``input_size``, normalise, run, bring the probabilities back to the crop's size and argmax
   slab by slab (:func:`segcore.postprocess.resize_argmax`: the crop is the only full-resolution
   region, and only uint8 labels exist at full size), clean up components per organ;
4. paste the crop's labels into a zero mask of the canonical shape, undo the reorientation.

When the coarse stage finds no organ the mask is empty and :attr:`Prediction.warnings` says so.
Precision ``auto`` is fp16 autocast on CUDA, and on the CPU bf16 autocast where the CPU has
native bf16 instructions, else fp32 (:func:`resolve_precision`); softmax and everything after it
run in float32.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segcore.body_region import body_mask, keep_body
from segcore.boxes import DEFAULT_MARGIN_MM, Box, box_to_original, expand_box, foreground_box, scale_box
from segcore.checkpoint import build_networks, load_checkpoint
from segcore.distributed import configure_device, resolve_device
from segcore.geometry import Geometry, to_canonical
from segcore.intensity import normalize_hu
from segcore.io import read_volume
from segcore.labels import LABEL_NAMES
from segcore.postprocess import (
    COMPONENT_SHARES,
    DEFAULT_CHUNK_ELEMENTS,
    keep_components,
    organ_statistics,
    resize_argmax,
)
from segcore.quality import Quality, assess, coarse_on_crop, edge_labels, empty_quality
from segcore.resample import resize_image, softmax_by_slabs, upsampled_softmax

__all__ = ["CoarseLocator", "CoarseResult", "Prediction", "Predictor", "StageModel", "organ_statistics"]

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "model_weights"
"""The repository's default checkpoints: ``coarse.pt`` and ``fine.pt``."""
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: the identity of a checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 autocast on CUDA; on the CPU bf16 where it is native (:func:`native_bf16`),
    else fp32. ``fp32`` | ``fp16`` (CUDA only) | ``bf16`` as named.

    bf16 on the CPU, measured on a 2-core AVX512-BF16 machine: the production fine net 1.49 →
    0.67 s per forward pass; the default model's labels agree with fp32 on 99.989 % of the voxels
    of the 512×512×300 phantom and 99.946 % of the real 3 mm CT (README, "Inference speed").
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if native_bf16() else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 or fp32 on the CPU")
    return PRECISIONS[precision]


def _device(device: str | torch.device) -> torch.device:
    """The torch device of a ``device`` argument, made current (and tuned) when it is a GPU."""
    resolved = resolve_device(device) if isinstance(device, str) and device in ("auto", "cpu", "cuda") else None
    resolved = resolved or torch.device(device)
    configure_device(resolved)
    return resolved


def _upload(volume: np.ndarray | torch.Tensor, device: torch.device) -> np.ndarray | torch.Tensor:
    """A ``(z, y, x)`` volume as the stages take it: on the CPU as it is (a numpy view is resized
    and cropped in place, :func:`segcore.resample.resize_image`: no copy of the whole volume), on a
    GPU as a tensor there; int16 and float32 travel as they are."""
    if isinstance(volume, torch.Tensor):
        return volume.to(device)
    if device.type == "cpu":
        return volume
    if volume.dtype not in (np.int16, np.float32):
        volume = volume.astype(np.float32)
    if not (volume.flags.c_contiguous and volume.flags.writeable):
        volume = np.array(volume)  # flipped canonical views and read-only arrays: torch takes neither
    return torch.from_numpy(volume).to(device)


class _Stopwatch:
    """Seconds per named step; waits for the device so that GPU work is charged to its step."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None = None):
        self.device = device
        self.timings = {} if timings is None else timings
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now


@dataclass
class StageModel:
    """The networks of one checkpoint and the input they expect.

    Attributes:
        stage: ``"coarse"`` or ``"fine"``.
        nets: the ensemble (eval mode, on the device) whose softmax outputs are averaged.
        input_size: network input ``(z, y, x)`` in voxels.
        hu_window: ``(low, high)`` HU window applied before z-scoring.
        autocast_dtype: dtype of the networks' autocast region (float32: no autocast).
    """

    stage: str
    nets: list[torch.nn.Module]
    input_size: tuple[int, int, int]
    hu_window: tuple[float, float]
    autocast_dtype: torch.dtype = torch.float32

    @classmethod
    def from_payload(
        cls, payload: dict[str, Any], stage: str, device: torch.device, autocast_dtype: torch.dtype, verify: bool
    ) -> StageModel:
        """Rebuild a stage from a checkpoint payload (:mod:`segcore.checkpoint`).

        Raises:
            ValueError: the checkpoint is of the other stage, or its label map is not FLARE22's.
        """
        found = payload.get("stage", stage)
        if found != stage:
            raise ValueError(f"a {found!r} checkpoint was given as the {stage} model")
        inference = payload["inference"]
        labels = {int(k): v for k, v in inference["labels"].items()}
        if labels != LABEL_NAMES:
            raise ValueError(f"{stage} checkpoint has label map {labels}, expected the FLARE22 map {LABEL_NAMES}")
        nets = build_networks(payload, device, verify=verify)
        if device.type == "cuda":  # cuDNN's 3-D convolutions are faster in channels-last-3d
            nets = [net.to(memory_format=torch.channels_last_3d) for net in nets]
        ensemble = [nets[int(index)] for index in inference.get("ensemble", range(len(nets)))]
        return cls(
            stage=stage,
            nets=ensemble,
            input_size=tuple(int(s) for s in inference["input_size"]),
            hu_window=tuple(float(v) for v in inference["hu_window"]),
            autocast_dtype=autocast_dtype,
        )

    def probabilities(self, volume: torch.Tensor, watch: _Stopwatch) -> torch.Tensor:
        """Mean softmax of the ensemble on a ``(z, y, x)`` HU volume resized to :attr:`input_size`.

        Returns:
            ``(C, *input_size)`` float32 probabilities on the volume's device.
        """
        image = normalize_hu(resize_image(volume, self.input_size), self.hu_window)[None, None]
        device_type = image.device.type
        if device_type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        watch.lap(f"{self.stage}_resize")
        total = None
        for net in self.nets:
            half_resolution = getattr(net, "output_stride", 1) == 2
            with torch.autocast(device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype != torch.float32):
                logits = net(image, half_resolution=True)[0] if half_resolution else net(image)[0]
            # a half-resolution net's last step (trilinear x2) is done with the softmax, in float32, by slabs
            probabilities = upsampled_softmax(logits, self.input_size) if half_resolution else softmax_by_slabs(logits)
            del logits
            total = probabilities if total is None else total.add_(probabilities)
        watch.lap(f"{self.stage}_network")
        return total if len(self.nets) == 1 else total.div_(len(self.nets))


@dataclass
class CoarseResult:
    """What the coarse stage found in a canonical volume.

    Attributes:
        organ_box: box of all organs in full-resolution canonical voxels (no margin), or None.
        box: ``organ_box`` grown by the margin and clipped to the volume, or None.
        labels: the coarse label map ``(z, y, x)`` at the coarse input size, components cleaned up.
        organs: organ ids found.
    """

    organ_box: Box | None
    box: Box | None
    labels: np.ndarray
    organs: list[int]


class CoarseLocator:
    """The coarse stage alone: where are the organs? (Used by :class:`Predictor` and by ``data_prepare``.)

    Args:
        payload: the coarse checkpoint (:func:`segcore.checkpoint.load_checkpoint`).
        device: ``auto`` | ``cpu`` | ``cuda`` | a torch device.
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16``.
        margin_mm: grown on every side of the organs' box.
        verify: check that the rebuilt networks reproduce their recorded probe outputs.
    """

    def __init__(
        self,
        payload: dict[str, Any],
        device: str | torch.device = "auto",
        precision: str = "auto",
        *,
        margin_mm: float = DEFAULT_MARGIN_MM,
        verify: bool = False,
    ):
        self.device = _device(device)
        self.margin_mm = float(margin_mm)
        self.component_shares = COMPONENT_SHARES
        """Component clean-up rule of both stages (:func:`segcore.postprocess.keep_components`)."""
        self.model = StageModel.from_payload(
            payload, "coarse", self.device, resolve_precision(precision, self.device), verify
        )

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
        return self._locate(
            _upload(canonical_image, self.device), canonical_spacing_zyx, _Stopwatch(self.device, timings)
        )

    def _locate(
        self, volume: torch.Tensor, canonical_spacing_zyx: tuple[float, float, float], watch: _Stopwatch
    ) -> CoarseResult:
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
        quality: how far to trust it: measures and an ``ok | review | fail`` verdict (:mod:`segcore.quality`).
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
        coarse_payload, fine_payload: checkpoints as loaded by :func:`segcore.checkpoint.load_checkpoint`.
        device: ``auto`` (this process's GPU if any, else the CPU) | ``cpu`` | ``cuda`` | a torch device.
        precision: ``auto`` | ``fp32`` | ``fp16`` | ``bf16`` (autocast dtype of the networks).
        margin_mm: grown on every side of the coarse organs' box before cropping (as in ``data_prepare``).
        verify: check that the rebuilt networks reproduce their recorded probe outputs.
        chunk_elements: bound on the probabilities resized at once to full resolution
            (:func:`segcore.postprocess.resize_argmax`).
        body_region: set everything outside the patient's trunk (arms, table, cushions) to air
            before the coarse stage (:mod:`segcore.body_region`), so it can neither widen the
            organs' box nor be taken for an organ; for models trained on stores prepared the
            same way (``data_prepare`` ``body_region: true``).
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
    ):
        self.device = _device(device)
        self.body_region = body_region
        self.locator = CoarseLocator(coarse_payload, self.device, precision, margin_mm=margin_mm, verify=verify)
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
        """Build from a folder holding ``coarse.pt`` and ``fine.pt`` (default: the repository's ``model_weights/``).

        Raises:
            FileNotFoundError: the folder or one of the two files is missing (one-line message).
            ValueError: a file is not a checkpoint of this project, or of the wrong stage.
        """
        folder = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
        paths = {stage: folder / f"{stage}.pt" for stage in ("coarse", "fine")}
        missing = [path.name for path in paths.values() if not path.is_file()]
        if missing:
            what = "folder does not exist" if not folder.is_dir() else f"{' and '.join(missing)} missing"
            raise FileNotFoundError(
                f"no model weights in {folder} ({what}): it must hold coarse.pt and fine.pt "
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
                    "hu_window": list(model.hu_window),
                    "networks": len(model.nets),
                    **self.sources.get(name, {}),
                }
                for name, model in stages.items()
            },
        }

    def coarse_box(self, canonical_image: np.ndarray, canonical_spacing_zyx: tuple[float, float, float]) -> Box | None:
        """The fine crop box (organs plus margin, canonical voxels) of a canonical volume, or None."""
        return self.locator.locate(canonical_image, canonical_spacing_zyx).box

    @torch.inference_mode()
    def predict(self, image: np.ndarray, geometry: Geometry) -> Prediction:
        """Segment one volume.

        Args:
            image: ``(z, y, x)`` CT in HU, in the array order of its file (as :func:`segcore.io.read_volume` returns).
            geometry: its grid.

        Returns:
            The :class:`Prediction`; its labels have ``image``'s shape and order.

        Raises:
            ValueError: ``image`` is not a 3-D array of the shape ``geometry`` describes.
        """
        if image.ndim != 3 or tuple(image.shape) != geometry.shape_zyx:
            raise ValueError(f"image of shape {image.shape} does not match its geometry (z, y, x) {geometry.shape_zyx}")
        started = time.perf_counter()
        watch = _Stopwatch(self.device)
        canonical_image, reorientation = to_canonical(image, geometry)
        canonical = reorientation.canonical
        if self.body_region:
            canonical_image = keep_body(canonical_image, body_mask(canonical_image, canonical.spacing_zyx))
            watch.lap("body_region")
        volume = _upload(canonical_image, self.device)
        watch.lap("reorient")
        coarse = self.locator._locate(volume, canonical.spacing_zyx, watch)
        canonical_labels = np.zeros(canonical.shape_zyx, dtype=np.uint8)
        warnings = []
        if coarse.box is None:
            warnings.append("the coarse stage found no organ: the mask is empty")
            assessed = empty_quality(canonical_image)
        else:
            region = tuple(slice(start, stop) for start, stop in coarse.box)
            probabilities = self.fine.probabilities(volume[region], watch)
            del volume
            crop_shape = tuple(stop - start for start, stop in coarse.box)
            crop_labels = resize_argmax(probabilities, crop_shape, chunk_elements=self.chunk_elements)
            watch.lap("fine_restore")
            crop_labels = keep_components(crop_labels, self.locator.component_shares)
            canonical_labels[region] = crop_labels
            watch.lap("cleanup")
            if not canonical_labels.any():
                warnings.append("the fine stage found no organ inside the coarse box: the mask is empty")
            coarse_in_crop = coarse_on_crop(coarse.labels, coarse.box, canonical.shape_zyx, probabilities.shape[1:])
            assessed = assess(
                probabilities, coarse_in_crop, crop_labels, edge_labels(canonical_labels),
                canonical_image, canonical.spacing_zyx,
            )  # fmt: skip
            del probabilities
        watch.lap("quality")
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

    def predict_file(self, path: str | os.PathLike) -> tuple[Prediction, np.ndarray, Geometry]:
        """Read a NIfTI file or DICOM series folder (:func:`segcore.io.read_volume`) and segment it.

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
