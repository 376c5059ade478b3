"""Segmentation losses on softmax probabilities.

Shapes: logits ``(N, C, z, y, x)``, targets ``(N, z, y, x)`` int64 class ids. Dice is computed
per sample and averaged over the batch (not pooled over the batch), so a batch of two on one
process and two processes with a batch of one give the same gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def soft_dice_per_class(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft Dice ``(N, C)`` of probabilities against one-hot targets, per sample and class."""
    one_hot = F.one_hot(targets, probabilities.shape[1]).movedim(-1, 1).to(probabilities.dtype)
    dims = tuple(range(2, probabilities.ndim))
    intersection = (probabilities * one_hot).sum(dims)
    denominator = probabilities.sum(dims) + one_hot.sum(dims)
    return (2 * intersection + SMOOTH) / (denominator + SMOOTH)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean soft Dice over the organ classes (background excluded), averaged over samples.

    Args:
        class_weights: optional ``(C,)`` weights; the mean over organs becomes a weighted mean.
    """
    dice = soft_dice_per_class(torch.softmax(logits.float(), dim=1), targets)[:, 1:]
    if class_weights is None:
        return 1 - dice.mean()
    weights = class_weights[1:].to(dice)
    return 1 - (dice * weights).sum(1).div(weights.sum()).mean()


def dice_ce_loss(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Dice + cross-entropy, the supervised loss of both stages."""
    ce = F.cross_entropy(
        logits.float(), targets, weight=None if class_weights is None else class_weights.to(logits.device)
    )
    return dice_loss(logits, targets, class_weights) + ce


def hard_dice_per_class(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice ``(N, C-1)`` of label maps per sample and organ; NaN where an organ is absent from both."""
    dims = tuple(range(1, predictions.ndim))
    scores = []
    for organ in range(1, num_classes):
        predicted, actual = predictions == organ, targets == organ
        overlap = (predicted & actual).sum(dims).float()
        total = (predicted.sum(dims) + actual.sum(dims)).float()
        scores.append(torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.full_like(total, float("nan"))))
    return torch.stack(scores, dim=1)
