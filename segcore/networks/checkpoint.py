"""Self-describing checkpoints, written atomically.

A checkpoint is a ``torch.save`` dict::

    {
      "format_version": 1,
      "stage": "coarse" | "fine",
      "networks": [{"arch": str, "init_args": {...}, "state_dict": {...},  # 1, or 2 for CPS
                    "probe": [14 floats]}, ...],  # mean logits on a seeded input: checks a rebuild
      "inference": {"input_size": [z, y, x], "hu_window": [low, high], "labels": {id: name},
                    "ensemble": [indices of the networks to average at inference]},
      "config": {...},                     # the training config that made it
      "metrics": {...},                    # validation figures at save time
      "notice": str | absent,              # what the weights must not be used for; said once per run
      "training_state": {...} | absent,    # optimizer, scaler, scheduler, step, epoch, RNG: for --resume
    }

The predictor needs nothing but this file: :func:`build_networks` rebuilds the nets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segcore.labels import LABEL_NAMES
from segcore.networks import build_network, network_spec
from segcore.runtime.files import replace_atomically

CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(
        path, lambda temporary: torch.save({"format_version": CHECKPOINT_FORMAT_VERSION, **payload}, temporary)
    )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, checking its format.

    Raises:
        ValueError: the file is not a checkpoint of this project or of another format version.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        first_line = next((line for line in str(error).splitlines() if line.strip()), "no reason given")[:200]
        raise ValueError(f"{path}: not a readable checkpoint ({first_line})") from None
    if not isinstance(payload, dict) or "networks" not in payload:
        raise ValueError(f"{path}: not a segmentation checkpoint")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {payload.get('format_version')}, expected {CHECKPOINT_FORMAT_VERSION}"
        )
    return payload


def copy_with_notice(source: str | os.PathLike, target: str | os.PathLike, notice: str) -> None:
    """Copy the checkpoint ``source`` to ``target`` with ``notice`` set (what the weights must not
    be used for: the predictor says it once per run and the service in every answer)."""
    payload = load_checkpoint(source)
    payload.pop("training_state", None)
    save_checkpoint(target, {**payload, "notice": notice})


PROBE_SEED = 20221


def probe_input(input_size) -> torch.Tensor:
    """The seeded ``(1, 1, z, y, x)`` input whose output a checkpoint records for each network."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn((1, 1, *input_size), generator=generator)


@torch.no_grad()
def probe_output(net: nn.Module, input_size) -> list[float]:
    """Per-class mean logits of ``net`` (full precision, eval mode) on :func:`probe_input`."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    logits = net(probe_input(input_size).to(device)).float()
    net.train(was_training)
    return logits.mean(dim=(0, 2, 3, 4)).tolist()


def unwrap(net: nn.Module) -> nn.Module:
    """The plain network inside ``DistributedDataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if hasattr(net, "_orig_mod"):  # torch.compile
            net = net._orig_mod
        elif isinstance(net, nn.parallel.DistributedDataParallel):
            net = net.module
        else:
            return net


def network_entry(net: nn.Module, input_size=None) -> dict[str, Any]:
    """The checkpoint entry of one network: architecture, constructor arguments, weights and,
    when ``input_size`` is given, its :func:`probe_output` at that size."""
    net = unwrap(net)
    entry = {**network_spec(net), "state_dict": net.state_dict()}
    if input_size is not None:
        entry["probe"] = probe_output(net, input_size)
    return entry


def weights_digest(net: nn.Module) -> str:
    """SHA-256 of a network's parameters and buffers: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(net).state_dict().items():
        digest.update(name.encode())
        # Logical (C) order whatever the memory format: a channels-last net has the digest of its plain twin.
        digest.update(tensor.detach().cpu().flatten().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_payload(
    stage: str,
    networks: list[dict[str, Any]],
    input_size,
    hu_window,
    config: dict[str, Any],
    ensemble: list[int] | None = None,
) -> dict[str, Any]:
    """A checkpoint payload (the format above) from :func:`network_entry` entries."""
    return {
        "stage": stage,
        "networks": networks,
        "inference": {
            "input_size": [int(s) for s in input_size],
            "hu_window": [float(v) for v in hu_window],
            "labels": {str(k): v for k, v in LABEL_NAMES.items()},
            "ensemble": list(range(len(networks))) if ensemble is None else list(ensemble),
        },
        "config": config,
    }


LEGACY_INIT_ARGS = {"output_stride": 2}
"""Constructor arguments a checkpoint's ``init_args`` lack when they were written before the
argument existed: such nets answer at half resolution."""


def build_networks(
    payload: dict[str, Any], device: str | torch.device = "cpu", verify: bool = False
) -> list[nn.Module]:
    """Rebuild every network of a checkpoint, weights loaded, in eval mode, on ``device``.

    With ``verify``, each rebuilt net must reproduce the probe output recorded at save time
    (a guard against code changes that alter an architecture under the same name).
    """
    nets = []
    for index, entry in enumerate(payload["networks"]):
        net = build_network(entry["arch"], **{**LEGACY_INIT_ARGS, **entry["init_args"]})
        net.load_state_dict(entry["state_dict"])
        net = net.to(device).eval()
        if verify and "probe" in entry:
            expected = torch.tensor(entry["probe"])
            actual = torch.tensor(probe_output(net, payload["inference"]["input_size"]))
            if not torch.allclose(actual, expected, rtol=1e-3, atol=1e-3):
                raise ValueError(
                    f"network {index} ({entry['arch']}) does not reproduce its recorded output: "
                    f"max difference {(actual - expected).abs().max():.3g}"
                )
        nets.append(net)
    return nets
