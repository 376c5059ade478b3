"""Tiny random-weight coarse and fine checkpoints for predictor tests.

Random weights may predict no organ at all; to make the crop path run, the coarse net's final
1x1x1 convolution gets a large bias on one class, so that class wins in every voxel (the box is
then the whole volume). ``winner=0`` makes background win everywhere: the empty-coarse case.
The fine net keeps its random weights: its output varies in space, which is what the geometry
tests need (a wrong flip or permutation changes the labels).
"""

from __future__ import annotations

from pathlib import Path

import torch

from segcore.checkpoint import make_payload, network_entry, save_checkpoint
from segcore.labels import HU_WINDOW
from segcore.networks import build_network

TINY_NET = {"base_channels": 4, "depth": 3, "max_channels": 16}
STAGES = {"coarse": ("residual_unet3d", [16, 16, 16]), "fine": ("efficient_context_net", [24, 24, 24])}
WINNER_BIAS = 100.0


def tiny_payload(stage: str, *, winner: int | None = None, seed: int = 0) -> dict:
    """A checkpoint payload of one tiny net; ``winner``: the class given a bias that wins everywhere."""
    arch, input_size = STAGES[stage]
    torch.manual_seed(seed)
    net = build_network(arch, **TINY_NET)
    if winner is not None:
        with torch.no_grad():
            net.head.bias[winner] += WINNER_BIAS
    return make_payload(stage, [network_entry(net, input_size)], input_size, HU_WINDOW, {"test": True})


def write_tiny_weights(folder: Path, *, coarse_winner: int = 1, notice: str | None = None) -> Path:
    """``folder/coarse.pt`` (class ``coarse_winner`` wins everywhere) and ``folder/fine.pt`` (random),
    both carrying ``notice`` if given."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"notice": notice} if notice else {}
    save_checkpoint(folder / "coarse.pt", {**tiny_payload("coarse", winner=coarse_winner), **extra})
    save_checkpoint(folder / "fine.pt", {**tiny_payload("fine", seed=1), **extra})
    return folder
