"""The segmentation networks and the registry that rebuilds them from a checkpoint.

Two architectures, both mapping CT images ``(N, 1, D, H, W)`` = ``(N, 1, z, y, x)`` to logits
``(N, NUM_CLASSES, D, H, W)`` of the input's spatial size:

- ``"residual_unet3d"`` (:class:`ResidualUNet3D`): the coarse stage, whole scan at 160³;
- ``"efficient_context_net"`` (:class:`EfficientContextNet`): the fine stage, organ crop at 192³;
- ``"ad_generic"`` (:class:`AggregatingDecouplingNet`): either of them with GenericSSL's three
  decoders for semi-supervised training; it predicts with one of them, like its base;
- ``"sd_messenger"`` (:class:`MessengerNet`): either of them with S&D-Messenger's domain messenger
  on its deepest level, for semi-supervised training.

Each net exposes ``init_args`` (its JSON-able constructor arguments) and ``input_multiple``
(every spatial axis of the input must be a multiple of it; :func:`valid_input_size` rounds a
size up). A checkpoint stores :func:`network_spec` and :func:`build_network` rebuilds the net::

    spec = network_spec(net)                      # {"arch": ..., "init_args": {...}}
    twin = build_network(**spec)                  # or build_network(arch, **init_args)
    twin.load_state_dict(net.state_dict())

Production defaults (``base_channels=16``, ``depth=5``, total stride 32) are sized for CPU
inference: on 2 CPU cores, fp32, batch 1, the coarse net takes about 1 s at 160³ and the fine
net about 2.6 s at 192³, each under 1.1 GB peak; bf16 autocast is faster where the CPU has
bf16 instructions. ``python -m bench.networks`` measures them.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from segcore.networks.aggregating import AggregatingDecouplingNet
from segcore.networks.blocks import SegmentationNetwork, valid_input_size
from segcore.networks.efficient_context_net import EfficientContextNet
from segcore.networks.messenger import MessengerNet
from segcore.networks.residual_unet import ResidualUNet3D

NETWORKS: dict[str, type[nn.Module]] = {
    "residual_unet3d": ResidualUNet3D,
    "efficient_context_net": EfficientContextNet,
    "ad_generic": AggregatingDecouplingNet,
    "sd_messenger": MessengerNet,
}
"""Architecture name (as stored in checkpoints and configs) -> network class."""

__all__ = [
    "NETWORKS",
    "AggregatingDecouplingNet",
    "MessengerNet",
    "EfficientContextNet",
    "ResidualUNet3D",
    "SegmentationNetwork",
    "build_network",
    "network_spec",
    "valid_input_size",
]


def build_network(arch: str, init_args: dict[str, Any] | None = None, **kwargs: Any) -> SegmentationNetwork:
    """Build a network by architecture name, freshly initialised from torch's RNG.

    Takes the constructor arguments either as keywords (``build_network(arch, **init_args)``)
    or as one dict, so that ``build_network(**network_spec(net))`` works too.

    Args:
        arch: a key of :data:`NETWORKS`.
        init_args: constructor arguments as a dict; merged with ``kwargs``.
        **kwargs: constructor arguments; missing ones take the production defaults.

    Raises:
        ValueError: unknown ``arch``, or arguments the architecture does not accept.
    """
    if arch not in NETWORKS:
        raise ValueError(f"unknown network architecture {arch!r}; known: {', '.join(sorted(NETWORKS))}")
    arguments = {**(init_args or {}), **kwargs}
    try:
        return NETWORKS[arch](**arguments)
    except TypeError as error:
        raise ValueError(f"network {arch!r}: bad constructor arguments {arguments}: {error}") from None


def network_spec(net: nn.Module) -> dict[str, Any]:
    """``{"arch": name, "init_args": {...}}`` of a network, enough for :func:`build_network`.

    Unwraps ``DistributedDataParallel`` (``.module``) and ``torch.compile`` (``._orig_mod``).

    Raises:
        ValueError: ``net`` is not one of the registered architectures.
    """
    for attribute in ("module", "_orig_mod"):
        net = getattr(net, attribute, net)
    for arch, cls in NETWORKS.items():
        if type(net) is cls:
            return {"arch": arch, "init_args": copy.deepcopy(net.init_args)}
    raise ValueError(f"{type(net).__name__} is not a registered network ({', '.join(sorted(NETWORKS))})")
