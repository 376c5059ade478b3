"""CT intensity normalisation, one function for training and inference alike."""

from __future__ import annotations

import torch

from segcore.labels import HU_WINDOW


def normalize_hu(volume: torch.Tensor, window: tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """Clip HU to ``window`` then z-score with the clipped volume's own mean and std.

    Args:
        volume: float tensor of HU, any shape; statistics are taken over the trailing three
            (spatial) axes, per leading index, so a batch is normalised case by case.
        window: ``(low, high)`` HU.

    Returns:
        A float32 tensor of the same shape.
    """
    clipped = volume.float().clamp(window[0], window[1])
    dims = tuple(range(clipped.ndim - 3, clipped.ndim))
    mean = clipped.mean(dim=dims, keepdim=True)
    std = clipped.std(dim=dims, keepdim=True).clamp_min(1e-3)
    return (clipped - mean) / std
