"""Cross pseudo supervision (CPS): two networks of one architecture teach each other.

Each step draws a labeled batch (the epoch's loader) and, independently, an unlabeled batch
(an endless stream reshuffled at every pass). Both go through both networks; for net ``i``::

    loss_i = DiceCE(logits_i[labeled], labels)
           + weight * ramp(step) * CE(logits_i[all], argmax(logits_j).detach())

The pseudo-label is the other net's argmax over all 14 channels, background included (ids
0..13, exactly the label ids: no shift, no dropped channel), and no gradient reaches the net
that made it. ``ramp`` is the sigmoid ramp-up ``exp(-5 (1 - t)^2)``, ``t = step / rampup_steps``
clipped to 1. Options: ``confidence`` ignores voxels where the teacher's top probability is
lower; ``class_balance`` weights the pseudo-label cross-entropy by inverse square-root class
frequency in the batch so small organs (adrenals, esophagus) are not drowned by background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from segcore.training.data import EndlessBatches, StoreDataset, make_loader
from segcore.training.losses import dice_ce_loss

IGNORE = -100  # F.cross_entropy's default ignore_index


def sigmoid_rampup(step: int, rampup_steps: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = step / rampup_steps`` in [0, 1]; 1 when ``rampup_steps`` is 0."""
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step, 0), rampup_steps) / rampup_steps
    return math.exp(-5.0 * (1.0 - t) ** 2)


def pseudo_labels(teacher_logits: torch.Tensor, confidence: float | None = None) -> torch.Tensor:
    """The teacher's detached argmax ``(N, z, y, x)``; voxels below ``confidence`` set to ignore."""
    with torch.no_grad():
        probabilities = torch.softmax(teacher_logits.detach().float(), dim=1)
        top, labels = probabilities.max(dim=1)
        if confidence is not None:
            labels = labels.masked_fill(top < confidence, IGNORE)
    return labels


def balanced_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights ``1/sqrt(frequency)`` over the non-ignored voxels, mean 1 over present classes."""
    valid = targets[targets != IGNORE]
    counts = torch.bincount(valid.flatten(), minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.clamp_min(1).rsqrt(), torch.zeros_like(counts))
    present = counts > 0
    return weights / weights[present].mean() if present.any() else torch.ones_like(weights)


def cps_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    confidence: float | None = None,
    class_balance: bool = False,
) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's pseudo-labels (no gradient to the teacher)."""
    targets = pseudo_labels(teacher_logits, confidence)
    if (targets == IGNORE).all():
        return student_logits.sum() * 0.0
    weight = balanced_weights(targets, student_logits.shape[1]).to(student_logits.device) if class_balance else None
    return F.cross_entropy(student_logits.float(), targets, weight=weight, ignore_index=IGNORE)


@dataclass
class CPSConfig:
    """The ``semi`` section of a stage config."""

    enabled: bool = False
    networks: int = 2
    weight: float = 1.0  # lambda
    rampup_steps: int = 1000
    confidence: float | None = None
    class_balance: bool = False
    unlabeled_split: str = "unlabeled"  # or a UIF selection name
    unlabeled_batch_size: int = 2
    rounds: int = 1  # > 1: UIF between rounds (see segcore.training.uif)
    uif_keep: float = 0.1  # share (< 1) or count (>= 1) of unlabeled cases kept by UIF


class CPSStep:
    """One CPS step of both networks; the trainer's labeled loader drives the epochs."""

    def __init__(self, trainer, config: CPSConfig):
        if len(trainer.members) != 2:
            raise ValueError(f"cross pseudo supervision needs 2 networks, got {len(trainer.members)}")
        self.config = config
        store = trainer.store
        ids = trainer.unlabeled_ids()
        if not ids:
            raise ValueError(f"{store.path}: split {config.unlabeled_split!r} holds no cases for CPS")
        dataset = StoreDataset(store, ids, trainer.stage.image_key)
        context, data_cfg = trainer.context, trainer.config["data"]
        loader = make_loader(
            dataset, config.unlabeled_batch_size, context.rank, context.world_size,
            trainer.config["train"]["seed"] + 1, data_cfg["workers"], pin=context.device.type == "cuda",
        )  # fmt: skip
        self.unlabeled = EndlessBatches(loader)

    def __call__(self, trainer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        images, labels = trainer.prepare_batch(batch, with_labels=True)
        unlabeled, _ = trainer.prepare_batch(self.unlabeled.next(), with_labels=False)
        inputs = torch.cat([images, unlabeled])
        count = images.shape[0]
        logits = []
        for member in trainer.members:
            with trainer.autocast():
                logits.append(member.net(inputs))
        weight = self.config.weight * sigmoid_rampup(trainer.step, self.config.rampup_steps)
        logs = {"cps_weight": weight}
        for i, member in enumerate(trainer.members):
            supervised = dice_ce_loss(logits[i][:count], labels)
            pseudo = cps_loss(logits[i], logits[1 - i], self.config.confidence, self.config.class_balance)
            trainer.optimize(member, supervised + weight * pseudo)
            logs[f"loss/net{i}"] = supervised.item()
            logs[f"cps/net{i}"] = pseudo.item()
        return logs

    def state_dict(self) -> dict[str, Any]:
        return self.unlabeled.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unlabeled.load_state_dict(state)
