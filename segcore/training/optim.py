"""Optimisers, learning-rate schedules and the precision settings of a training run."""

from __future__ import annotations

import torch

from segcore.training.config import OptimizerConfig


def poly_schedule(total_steps: int, warmup_steps: int, power: float = 0.9):
    """Linear warm-up then polynomial decay to zero at ``total_steps``: a factor for LambdaLR."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1 - step / max(1, total_steps)) ** power

    return factor


def wsd_schedule(total_steps: int, warmup_steps: int, decay_share: float):
    """Warm-up, stable, decay: a factor for LambdaLR.

    Linear warm-up to 1 over ``warmup_steps``, constant 1, then a linear cool-down to zero over
    the last ``decay_share`` of ``total_steps``. The stable phase does not depend on the run's
    length, so a run resumed with more steps (and the curves of runs of different lengths)
    match step for step until the cool-down.
    """
    decay_steps = max(1, round(decay_share * total_steps))
    decay_start = total_steps - decay_steps

    def factor(step: int) -> float:
        warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0
        cool = 1.0 if step < decay_start else max(0.0, (total_steps - step) / decay_steps)
        return min(warm, cool)  # a run shorter than its warm-up still ends at zero

    return factor


def lr_schedule(config: OptimizerConfig, total_steps: int, max_steps: int):
    """The factor of ``optimizer.schedule``: poly over the epochs' steps, wsd over the run's steps,
    or the warm-up alone (``constant``)."""
    if config.schedule == "constant":
        return lambda step: min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.schedule == "wsd":
        return wsd_schedule(max_steps, config.warmup_steps, config.decay_share)
    return poly_schedule(total_steps, config.warmup_steps)


def autocast_settings(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for the config's ``amp`` on ``device``.

    ``auto``: fp16 with a GradScaler on CUDA, full precision on CPU; ``bf16``: bfloat16 (CPU or
    CUDA, no scaler needed); ``fp16``: CUDA only; ``off``: full precision.
    """
    if amp is False:  # YAML reads an unquoted ``off`` as false
        amp = "off"
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None, False
    if amp in ("auto", "fp16"):
        if device.type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16, True
    if amp == "bf16":
        return torch.bfloat16, False
    raise ValueError(f"amp={amp!r}: expected auto, fp16, bf16 or off")


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` (on CUDA, where cuDNN's 3-D convolutions are faster in
    channels-last-3d), true or false."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"train.channels_last={setting!r}: expected auto, true or false")


def make_optimizer(params, config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )
