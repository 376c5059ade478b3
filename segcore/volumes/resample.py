"""Resizing volumes to network input sizes and back, on CPU or GPU, with torch.

Images are resized trilinearly; label maps with nearest-neighbour sampling at voxel
centres (``nearest-exact``) so classes never mix. With that sampling an organ survives a
resize whenever it contains at least one whole target-size voxel cell (the cell's centre is
then sampled inside it); thinner structures may vanish at coarse sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _as_5d(volume: np.ndarray | torch.Tensor, dtype: torch.dtype | None, device: torch.device | str | None):
    if isinstance(volume, np.ndarray) and (any(stride < 0 for stride in volume.strides) or not volume.flags.writeable):
        # torch takes no negative strides (flipped canonical views) nor read-only memory (store views)
        volume = np.array(volume)
    tensor = torch.as_tensor(volume, device=device)
    if dtype is not None:
        tensor = tensor.to(dtype)
    leading = tensor.ndim - 3
    if leading == 0:
        return tensor[None, None], 2
    if leading == 1:
        return tensor[None], 1
    return tensor, 0


def linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two source indices and the second one's weight of each output voxel along one axis,
    as ``F.interpolate(mode="trilinear", align_corners=False)`` places them (float32 coordinates)."""
    scale = np.float32(size_in) / np.float32(size_out)
    source = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    source = np.maximum(source, np.float32(0))
    first = source.astype(np.int64)  # floor: source >= 0
    return first, np.minimum(first + 1, size_in - 1), (source - first).astype(np.float32)


def _resize_3d_separable(volume: np.ndarray | torch.Tensor, size_zyx: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resize of a 3-D CPU volume one axis at a time, reading only the voxels it needs.

    Each axis is a gather of the two source planes of every output plane and a blend, the most
    shrinking axis first, so the whole input is never converted to float (a 512×512×300 int16 CT
    going to 160³ needs 2 × 300×160×512 floats at most, not a 315 MB float copy). Numpy views with
    negative strides (flipped canonical views) are read in place: a flipped axis is gathered with
    mirrored indices. Equal to ``F.interpolate``'s result up to float32 rounding (the blend's
    operations are ordered differently): within 3e-4 HU on a 512×512×300 CT.
    """
    flipped: list[int] = []
    if isinstance(volume, np.ndarray):
        flipped = [axis for axis, stride in enumerate(volume.strides) if stride < 0]
        volume = np.flip(volume, flipped) if flipped else volume
        if not volume.flags.writeable:  # torch refuses read-only memory (store views are small)
            volume = np.array(volume)
        volume = torch.from_numpy(volume)
    tensor = volume
    for axis in sorted(range(3), key=lambda a: size_zyx[a] / tensor.shape[a]):
        size_in, size_out = tensor.shape[axis], size_zyx[axis]
        if size_in == size_out:
            continue
        first, second, weight = linear_taps(size_in, size_out)
        if axis in flipped:  # the output runs the other way along this axis
            first, second = size_in - 1 - first, size_in - 1 - second
            flipped.remove(axis)
        shape = [1, 1, 1]
        shape[axis] = size_out
        weight = torch.from_numpy(weight).view(shape)
        low = tensor.index_select(axis, torch.from_numpy(first)).float()
        high = tensor.index_select(axis, torch.from_numpy(second)).float()
        tensor = low.mul_(1 - weight).add_(high.mul_(weight))
    tensor = tensor.flip(flipped) if flipped else tensor
    return tensor.float().contiguous()


def resize_image(
    volume: np.ndarray | torch.Tensor,
    size_zyx: Sequence[int],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Trilinear resize (``align_corners=False``) of a ``(z, y, x)``, ``(C, z, y, x)`` or ``(N, C, z, y, x)`` volume.

    A 3-D volume on the CPU that shrinks at least 8-fold in voxels goes through
    :func:`_resize_3d_separable` (no float copy of the input, any strides: a CT to a network's
    input); others through ``F.interpolate`` on their device, which is faster where most input
    voxels are read anyway (measured on a 512×512×300 CT, 2 cores: whole CT to 48³ 0.017 s vs
    0.115 s, to 160³ 0.17 s vs 0.14 s and 470 MB fewer; a 266×264×392 crop to 192³ 0.18 s vs 0.04 s).

    Returns:
        A float32 tensor with the same leading axes and spatial size ``size_zyx``.
    """
    size_zyx = tuple(int(s) for s in size_zyx)
    on_cpu = (
        torch.device(device).type == "cpu"
        if device is not None
        else not (isinstance(volume, torch.Tensor) and volume.device.type != "cpu")
    )
    if volume.ndim == 3 and on_cpu and math.prod(size_zyx) * 8 <= math.prod(volume.shape):
        return _resize_3d_separable(volume, size_zyx)
    tensor, squeeze = _as_5d(volume, torch.float32, device)
    if tuple(tensor.shape[2:]) != size_zyx:
        tensor = F.interpolate(tensor, size=size_zyx, mode="trilinear", align_corners=False)
    for _ in range(squeeze):
        tensor = tensor[0]
    return tensor


def upsampled_softmax(logits: torch.Tensor, size_zyx: Sequence[int], *, slab: int = 8) -> torch.Tensor:
    """Class probabilities of ``(C, z, y, x)`` logits resized trilinearly to ``size_zyx``: float32 ``(C, *size_zyx)``.

    The same as ``torch.softmax(F.interpolate(logits[None].float(), size_zyx, mode="trilinear",
    align_corners=False)[0], dim=0)`` up to float32 rounding, built ``slab`` output planes at a
    time: the source planes a slab needs are resized in-plane (bilinear), blended along z with
    the trilinear taps (:func:`linear_taps`), and the softmax is taken while the slab is in
    cache. The full-size logits never exist: for the fine net's 14×192³ output that is 396 MB and
    two passes over it fewer (measured on 2 cores: README, "Benchmarks", `bench.inference`).
    """
    size_zyx = tuple(int(s) for s in size_zyx)
    device = logits.device
    probabilities = torch.empty((logits.shape[0], *size_zyx), dtype=torch.float32, device=device)
    first, second, weight = linear_taps(logits.shape[1], size_zyx[0])
    for start in range(0, size_zyx[0], slab):
        stop = min(start + slab, size_zyx[0])
        low, high = int(first[start]), int(second[stop - 1])
        planes = logits[:, low : high + 1].float().transpose(0, 1)  # (planes, C, y, x)
        if tuple(planes.shape[2:]) != size_zyx[1:]:
            planes = F.interpolate(planes, size=size_zyx[1:], mode="bilinear", align_corners=False)
        below = torch.from_numpy(first[start:stop] - low).to(device)
        above = torch.from_numpy(second[start:stop] - low).to(device)
        blend = torch.from_numpy(weight[start:stop]).to(device).view(-1, 1, 1, 1)
        mixed = planes[below].mul_(1 - blend).add_(planes[above].mul_(blend))
        probabilities[:, start:stop] = torch.softmax(mixed, dim=1).transpose(0, 1)
    return probabilities


def softmax_by_slabs(logits: torch.Tensor, *, slab: int = 8) -> torch.Tensor:
    """Class probabilities ``(C, z, y, x)`` float32 of ``(C, z, y, x)`` logits: ``torch.softmax(logits.float(), 0)``
    built ``slab`` planes at a time.

    Float32 logits are overwritten in place (no second full-size tensor); others (bf16, fp16
    autocast outputs) are converted slab by slab into one float32 result. Either way the only
    full-size float32 tensor is the result: for a 14×192³ output that is 396 MB instead of the
    792 MB of a whole-tensor ``float()`` and softmax.
    """
    probabilities = (
        logits
        if logits.dtype == torch.float32
        else torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    )
    for start in range(0, logits.shape[1], slab):
        planes = slice(start, start + slab)
        probabilities[:, planes] = torch.softmax(logits[:, planes].float(), dim=0)
    return probabilities


def resize_labels(
    labels: np.ndarray | torch.Tensor,
    size_zyx: Sequence[int],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Nearest-neighbour (voxel-centre) resize of a ``(z, y, x)`` label map; keeps its dtype."""
    tensor, squeeze = _as_5d(labels, None, device)
    size_zyx = tuple(int(s) for s in size_zyx)
    if tuple(tensor.shape[2:]) != size_zyx:
        tensor = F.interpolate(tensor, size=size_zyx, mode="nearest-exact")
    for _ in range(squeeze):
        tensor = tensor[0]
    return tensor
