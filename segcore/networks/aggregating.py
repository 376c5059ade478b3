"""GenericSSL's A&D network (Aggregating & Decoupling; Wang & Li, NeurIPS 2023): one shared
encoder, three decoders, on either of this product's segmentation nets.

* ``unlabeled`` (D_θ): the base net as it is; what the network predicts with (:meth:`forward`),
  so a checkpoint of it segments like any other;
* ``labeled`` (D_ψ): a second decoder on the same encoder;
* ``diffusion`` (D_ξ): a third decoder that denoises a noisy one-hot label ``x_t`` given the image:
  ``x_t`` enters through ``label_stem`` (added to the shared stem's output) and the step ``t``
  through a sinusoidal embedding and a small MLP, projected onto every decoder level
  (``time_projections``, added to that level's output).

The shared ``stem`` and ``encoder`` are one set of modules held by the three decoders' nets.
``label_stem`` and ``time_projections`` start at zero, so a network made from a trained net
(:meth:`from_net`: its weights in all three) starts with three decoders that each answer as that
net does, the diffusion decoder ignoring the noisy label until it learns to read it.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from segcore.networks.blocks import Conv3d, SegmentationNetwork, level_channels
from segcore.networks.efficient_context_net import EfficientContextNet
from segcore.networks.residual_unet import ResidualUNet3D

BASES: dict[str, type[SegmentationNetwork]] = {
    "residual_unet3d": ResidualUNet3D,
    "efficient_context_net": EfficientContextNet,
}
TIME_CHANNELS = 128
"""Width of the sinusoidal step embedding (the original's)."""


def timestep_embedding(t: torch.Tensor, channels: int = TIME_CHANNELS) -> torch.Tensor:
    """``(N, channels)`` sinusoidal embedding of the diffusion steps ``t`` ``(N,)`` (DDPM's)."""
    half = channels // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class WrappedNet(nn.Module):
    """A net built around one of :data:`BASES` (its :meth:`inner` net): the output grid and the
    auxiliary levels are the inner net's; the constructor takes ``base``, :attr:`own_arguments`
    and the base net's arguments."""

    own_arguments: tuple[str, ...] = ()

    def inner(self) -> SegmentationNetwork:
        raise NotImplementedError

    @classmethod
    def argument_names(cls, init_args: dict[str, Any]) -> list[str]:
        """The constructor arguments it takes with ``init_args``: ``base``, its own and the base net's."""
        base = BASES.get(init_args.get("base", "residual_unet3d"))
        return ["base", *cls.own_arguments, *(inspect.signature(base).parameters if base else [])]

    @staticmethod
    def base_of(net: nn.Module) -> str:
        """The name in :data:`BASES` of ``net``'s class."""
        return next(name for name, kind in BASES.items() if type(net) is kind)

    @property
    def output_stride(self) -> int:
        return self.inner().output_stride

    @property
    def residual_output(self) -> bool:
        return self.inner().residual_output

    @property
    def auxiliary_levels(self) -> list[int]:
        return self.inner().auxiliary_levels

    @property
    def answers_at_half_resolution(self) -> bool:
        return self.inner().answers_at_half_resolution


class AggregatingDecouplingNet(WrappedNet):
    """Three decoders of ``base`` on one encoder (see the module); ``forward`` is D_θ's."""

    def __init__(self, base: str = "residual_unet3d", **init_args: Any):
        super().__init__()
        if base not in BASES:
            raise ValueError(f"unknown base network {base!r}; known: {', '.join(sorted(BASES))}")
        self.unlabeled = BASES[base](**init_args)
        self.labeled = BASES[base](**init_args)
        self.diffusion = BASES[base](**init_args)
        for decoder in (self.labeled, self.diffusion):  # one encoder for the three
            decoder.stem, decoder.encoder = self.unlabeled.stem, self.unlabeled.encoder
        args = self.unlabeled.init_args
        self.init_args = {"base": base, **args}
        self.input_multiple = self.unlabeled.input_multiple
        channels = level_channels(args["base_channels"], args["depth"], args["max_channels"])
        self.label_stem = Conv3d(args["num_classes"], channels[0], 3, stride=2, padding=1)
        width = 2 * TIME_CHANNELS
        self.time_mlp = nn.Sequential(nn.Linear(TIME_CHANNELS, width), nn.SiLU(), nn.Linear(width, width))
        self.time_projections = nn.ModuleList(nn.Linear(width, channels[level]) for level in range(len(channels) - 1))
        for layer in (self.label_stem, *self.time_projections):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def inner(self) -> SegmentationNetwork:
        return self.unlabeled

    @property
    def decoders(self) -> dict[str, SegmentationNetwork]:
        return {"unlabeled": self.unlabeled, "labeled": self.labeled, "diffusion": self.diffusion}

    @classmethod
    def from_net(cls, net: SegmentationNetwork) -> AggregatingDecouplingNet:
        """A&D with ``net``'s architecture and its weights in the encoder and all three decoders."""
        combined = cls(cls.base_of(net), **net.init_args)
        for decoder in combined.decoders.values():
            decoder.load_state_dict(net.state_dict())
        return combined

    def forward(
        self, x: torch.Tensor, half_resolution: bool = False, auxiliary: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """D_θ's logits (the base net's contract: :meth:`SegmentationNetwork.forward`)."""
        return self.unlabeled(x, half_resolution=half_resolution, auxiliary=auxiliary)

    def labeled_logits(self, x: torch.Tensor, auxiliary: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """D_ψ's logits."""
        return self.labeled(x, auxiliary=auxiliary)

    def denoise(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """D_ξ's answer for the noisy labels ``x_t`` ``(N, classes, D, H, W)`` at steps ``t`` ``(N,)``:
        logits, read as the predicted ``x₀`` by the sampler (:class:`segcore.training.generic_ssl.LabelDiffusion`)."""
        self.unlabeled.check_input(x)
        features = self.unlabeled.stem(x) + self.label_stem(x_t.to(x.dtype))
        skips = []
        for level in self.unlabeled.encoder:
            features = level(features)
            skips.append(features)
        time = self.time_mlp(timestep_embedding(t.to(x.device)).to(features.dtype))
        bias = [projection(time)[:, :, None, None, None] for projection in self.time_projections]
        return self.diffusion.decode(skips, x, level_bias=bias)
