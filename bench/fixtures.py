"""Inputs shared by the inference and server benchmarks: a full-size phantom CT and random
production-size weights (timing does not depend on what the weights learned)."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.phantom_generation import clinical_grid
from segcore.labels import HU_WINDOW
from segcore.networks import build_network
from segcore.networks.checkpoint import make_payload, network_entry, save_checkpoint
from segcore.phantom import generate_case
from segcore.volumes import write_volume

PRODUCTION = {"coarse": ("residual_unet3d", [160, 160, 160]), "fine": ("efficient_context_net", [192, 192, 192])}


def full_size_ct(path: Path, slices: int = 300, seed: int = 0) -> Path:
    """A 512 x 512 x ``slices`` phantom CT (0.8 x 0.8 x 1.25 mm) at ``path`` (kept if it exists)."""
    if not path.exists():
        phantom = generate_case(seed, "full", geometry=clinical_grid(slices))
        write_volume(path, phantom.image, phantom.geometry)
    return path


def full_size_labels(path: Path, slices: int = 300, seed: int = 0) -> Path:
    """The organ labels of :func:`full_size_ct`'s phantom at ``path`` (kept if it exists)."""
    if not path.exists():
        phantom = generate_case(seed, "full", geometry=clinical_grid(slices))
        write_volume(path, phantom.label, phantom.geometry)
    return path


def random_production_weights(folder: Path, liver_bias: float = 100.0, output_stride: int = 1) -> Path:
    """``coarse.pt`` / ``fine.pt`` with production-size nets and random weights in ``folder``
    (``output_stride`` 1: full-resolution nets, 2: half-resolution ones).

    The coarse net's head gets a large liver bias, so it "finds" an organ everywhere and the fine
    stage runs on the largest possible crop (the whole volume): an upper bound on the fine cost.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stage, (arch, input_size) in PRODUCTION.items():
        torch.manual_seed(0)
        # deep supervision as in {coarse,fine}_seg/config.yaml: the nets answer at half resolution too
        net = build_network(arch, output_stride=output_stride, deep_supervision=True)
        if stage == "coarse":
            with torch.no_grad():
                net.head.bias[1] += liver_bias
        config = {"random_weights_for_timing": True}
        payload = make_payload(stage, [network_entry(net)], input_size, HU_WINDOW, config)
        save_checkpoint(folder / f"{stage}.pt", payload)
    return folder
