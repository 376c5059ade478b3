"""Resizing volumes to network input sizes and back, on CPU or GPU, with torch.

Images are resized trilinearly; label maps with nearest-neighbour sampling at voxel
centres (``nearest-exact``) so classes never mix. With that sampling an organ survives a
resize whenever it contains at least one whole target-size voxel cell (the cell's centre is
then sampled inside it); thinner structures may vanish at coarse sizes.
"""

from __future__ import annotations

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


def resize_image(
    volume: np.ndarray | torch.Tensor,
    size_zyx: Sequence[int],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Trilinear resize of a ``(z, y, x)``, ``(C, z, y, x)`` or ``(N, C, z, y, x)`` volume.

    Returns:
        A float32 tensor with the same leading axes and spatial size ``size_zyx``.
    """
    tensor, squeeze = _as_5d(volume, torch.float32, device)
    size_zyx = tuple(int(s) for s in size_zyx)
    if tuple(tensor.shape[2:]) != size_zyx:
        tensor = F.interpolate(tensor, size=size_zyx, mode="trilinear", align_corners=False)
    for _ in range(squeeze):
        tensor = tensor[0]
    return tensor


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
