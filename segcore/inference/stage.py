"""One stage's networks as inference runs them: rebuilt from a checkpoint, on a device, at a
precision, answering the ensemble's mean softmax on a volume resized to their input; and the
helpers both stages share (device and precision choice, the per-step stopwatch, file digests)."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segcore.labels import LABEL_NAMES
from segcore.networks.checkpoint import build_networks
from segcore.runtime.distributed import configure_device, resolve_device
from segcore.volumes.intensity import normalize_hu
from segcore.volumes.resample import resize_image, softmax_by_slabs, upsampled_softmax

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
    of the 512×512×300 phantom and 99.946 % of the real 3 mm CT (README, "Benchmarks", `bench.inference`).
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


def device_of(device: str | torch.device) -> torch.device:
    """The torch device of a ``device`` argument, made current (and tuned) when it is a GPU."""
    resolved = resolve_device(device) if isinstance(device, str) and device in ("auto", "cpu", "cuda") else None
    resolved = resolved or torch.device(device)
    configure_device(resolved)
    return resolved


def upload(volume: np.ndarray | torch.Tensor, device: torch.device) -> np.ndarray | torch.Tensor:
    """A ``(z, y, x)`` volume as the stages take it: on the CPU as it is (a numpy view is resized
    and cropped in place, :func:`segcore.volumes.resample.resize_image`: no copy of the whole volume), on a
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


class Stopwatch:
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

    def resume(self) -> None:
        """Go on from now: the time since the last lap was charged by another stopwatch."""
        self._last = time.perf_counter()


@dataclass
class StageModel:
    """The networks of one checkpoint and the input they expect.

    Attributes:
        stage: ``"coarse"`` or ``"fine"``.
        nets: the ensemble (eval mode, on the device) whose softmax outputs are averaged.
        input_size: network input ``(z, y, x)`` in voxels.
        hu_window: ``(low, high)`` HU window applied before z-scoring.
        autocast_dtype: dtype of the networks' autocast region (float32: no autocast).
        half_resolution: answer on half the input's grid (``input_size / 2``) with every net's
            half-resolution logits (``forward(x, half_resolution=True)``: the full-resolution stage
            skipped), where every net has them; else on the input's grid.
    """

    stage: str
    nets: list[torch.nn.Module]
    input_size: tuple[int, int, int]
    hu_window: tuple[float, float]
    autocast_dtype: torch.dtype = torch.float32
    half_resolution: bool = False

    @classmethod
    def from_payload(
        cls,
        payload: dict[str, Any],
        stage: str,
        device: torch.device,
        autocast_dtype: torch.dtype,
        verify: bool,
        half_resolution: bool = False,
    ) -> StageModel:
        """Rebuild a stage from a checkpoint payload (:mod:`segcore.networks.checkpoint`); with
        ``half_resolution`` it answers on half its input's grid where all its nets can.

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
            half_resolution=half_resolution and all(net.answers_at_half_resolution for net in ensemble),
        )

    @property
    def output_size(self) -> tuple[int, int, int]:
        """The grid of :meth:`probabilities`: :attr:`input_size`, or half of it with :attr:`half_resolution`."""
        return tuple(size // 2 for size in self.input_size) if self.half_resolution else self.input_size

    def probabilities(self, volume: torch.Tensor, watch: Stopwatch) -> torch.Tensor:
        """Mean softmax of the ensemble on a ``(z, y, x)`` HU volume resized to :attr:`input_size`.

        Returns:
            ``(C, *output_size)`` float32 probabilities on the volume's device (:attr:`output_size`).
        """
        image = normalize_hu(resize_image(volume, self.input_size), self.hu_window)[None, None]
        device_type = image.device.type
        if device_type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last_3d)
        watch.lap(f"{self.stage}_resize")
        total = None
        for net in self.nets:
            half_resolution = self.half_resolution or getattr(net, "output_stride", 1) == 2
            with torch.autocast(device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype != torch.float32):
                logits = net(image, half_resolution=True)[0] if half_resolution else net(image)[0]
            if half_resolution and not self.half_resolution:
                # a half-resolution net's last step (trilinear x2) is done with the softmax, in float32, by slabs
                probabilities = upsampled_softmax(logits, self.input_size)
            else:
                probabilities = softmax_by_slabs(logits)
            del logits
            total = probabilities if total is None else total.add_(probabilities)
        watch.lap(f"{self.stage}_network")
        return total if len(self.nets) == 1 else total.div_(len(self.nets))
