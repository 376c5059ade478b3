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


def deep_supervision_weights(count: int) -> list[float]:
    """Weights of the main output and ``count - 1`` auxiliary ones: ``1 / 2**i``, summing to 1
    (nnU-Net's halving per level, highest resolution first)."""
    raw = [0.5**i for i in range(count)]
    return [w / sum(raw) for w in raw]


def downsample_targets(targets: torch.Tensor, size_zyx: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour (voxel-centre) resize of ``(N, z, y, x)`` class ids to ``size_zyx``."""
    if tuple(targets.shape[1:]) == tuple(size_zyx):
        return targets
    resized = F.interpolate(targets[:, None].float(), size=tuple(size_zyx), mode="nearest-exact")
    return resized[:, 0].long()


def deep_supervision_loss(
    outputs: list[torch.Tensor], targets: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted Dice + cross-entropy of every output of a deeply supervised net.

    Args:
        outputs: logits, the main (input-size) ones first, then the auxiliary heads' at lower
            resolutions, highest first (``net(x, auxiliary=True)``).
        targets: ``(N, z, y, x)`` class ids at the input size; resized (nearest, voxel centres)
            to each output's size.
        class_weights: per class, for every output's Dice and cross-entropy (None: equal).

    Returns:
        ``sum_i w_i * dice_ce_loss(outputs[i], targets at its size)`` with
        :func:`deep_supervision_weights`.
    """
    weights = deep_supervision_weights(len(outputs))
    return sum(
        weight * dice_ce_loss(logits, downsample_targets(targets, logits.shape[2:]), class_weights)
        for weight, logits in zip(weights, outputs)
    )
