"""Building blocks shared by the segmentation networks.

Every block works on 3-D feature maps ``(N, C, D, H, W)`` = ``(N, C, z, y, x)``. Convolutions
carry no bias because an affine instance norm follows each one; instance norm (not batch norm)
because training batches are 1–4 volumes and inference runs one volume at a time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01
"""Negative slope of every LeakyReLU (nnU-Net's choice)."""

Kernel = int | tuple[int, int, int]


def _same_padding(kernel: Kernel) -> tuple[int, int, int]:
    kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
    return tuple(k // 2 for k in kernel)


def valid_input_size(size: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """Round every axis of ``size`` up to the next multiple of ``multiple``.

    Args:
        size: spatial size ``(z, y, x)`` in voxels.
        multiple: a network's ``input_multiple``.

    Returns:
        The smallest size at least ``size`` in every axis that the network accepts.
    """
    return tuple(-(-int(s) // multiple) * multiple for s in size)


class ConvNormAct(nn.Sequential):
    """Conv3d → affine InstanceNorm3d → LeakyReLU (the activation is optional)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel = 3, stride: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=_same_padding(kernel), bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
        ]
        if act:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        super().__init__(*layers)


class _Residual(nn.Module):
    """``act(branch(x) + shortcut(x))``, with a strided 1×1×1 projection when the shape changes."""

    def __init__(self, branch: nn.Module, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.branch = branch
        self.shortcut = (
            ConvNormAct(in_channels, out_channels, kernel=1, stride=stride, act=False)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.branch(x) + self.shortcut(x))


class ResidualBlock(_Residual):
    """Two 3×3×3 convolutions with a residual shortcut (the first may stride by 2).

    Shapes: ``(N, in_channels, D, H, W)`` → ``(N, out_channels, D/stride, H/stride, W/stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        branch = nn.Sequential(
            ConvNormAct(in_channels, out_channels, stride=stride),
            ConvNormAct(out_channels, out_channels, act=False),
        )
        super().__init__(branch, in_channels, out_channels, stride)


class AnisotropicResidualBlock(_Residual):
    """Residual block of factorised, anisotropic convolutions.

    Each 3×3×3 convolution is replaced by an in-plane (1, 3, 3) one followed by a through-plane
    (3, 1, 1) one: 12 instead of 27 weights per channel pair for the same receptive field, and
    in-plane and through-plane context are weighted separately, which suits CT, whose slice
    spacing differs from its in-plane spacing. Two such pairs make the branch.

    Shapes: ``(N, C, D, H, W)`` → ``(N, C, D, H, W)``.
    """

    def __init__(self, channels: int):
        branch = nn.Sequential(
            ConvNormAct(channels, channels, kernel=(1, 3, 3)),
            ConvNormAct(channels, channels, kernel=(3, 1, 1)),
            ConvNormAct(channels, channels, kernel=(1, 3, 3)),
            ConvNormAct(channels, channels, kernel=(3, 1, 1), act=False),
        )
        super().__init__(branch, channels, channels, stride=1)


class AnisotropicStripPooling(nn.Module):
    """Context block: average into strips along each axis, mix them, gate the features.

    For each axis (z, y, x) the features are averaged over the other two axes into a 1-D strip,
    which a 1-D convolution (kernel 3) mixes along the strip. The three strips are broadcast back
    and summed, so every voxel sees the whole volume along its three lines; a 1×1×1 convolution
    and a sigmoid turn that into a per-voxel, per-channel gate in (0, 1) on the input. The cost is
    linear in the voxels, unlike attention, and the block works at any input size.

    Shapes: ``(N, C, D, H, W)`` → ``(N, C, D, H, W)``.
    """

    def __init__(self, channels: int, hidden_channels: int | None = None):
        super().__init__()
        hidden = hidden_channels or max(channels // 2, 4)
        self.strip_convs = nn.ModuleList(nn.Conv1d(channels, hidden, 3, padding=1, bias=False) for _ in range(3))
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.gate = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling before the channel mixing is exact (both are linear) and avoids a full-size conv.
        strip_z = self.strip_convs[0](x.mean(dim=(3, 4)))[:, :, :, None, None]
        strip_y = self.strip_convs[1](x.mean(dim=(2, 4)))[:, :, None, :, None]
        strip_x = self.strip_convs[2](x.mean(dim=(2, 3)))[:, :, None, None, :]
        context = self.act(strip_z + strip_y + strip_x)
        return x * torch.sigmoid(self.gate(context))


class SegmentationNetwork(nn.Module):
    """Shared contract of the segmentation networks.

    Subclasses set ``init_args`` (every constructor argument, JSON-able, so that
    ``type(net)(**net.init_args)`` rebuilds the same architecture) and ``input_multiple`` (the
    total stride: every spatial axis of the input must be a multiple of it).
    """

    init_args: dict[str, Any]
    input_multiple: int

    def _record_args(
        self, in_channels: int, num_classes: int, base_channels: int, depth: int, max_channels: int,
        blocks_per_level: int,
    ) -> list[int]:  # fmt: skip
        """Keep the constructor arguments and the total stride; returns each level's channels."""
        self.init_args = {
            "in_channels": in_channels, "num_classes": num_classes, "base_channels": base_channels,
            "depth": depth, "max_channels": max_channels, "blocks_per_level": blocks_per_level,
        }  # fmt: skip
        self.input_multiple = 2**depth
        return level_channels(base_channels, depth, max_channels)

    @staticmethod
    def merge(upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """How a decoder level joins the upsampled features and the encoder's skip."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, half_resolution: bool = False) -> torch.Tensor:
        """Logits ``(N, num_classes, D, H, W)`` for images ``(N, in_channels, D, H, W)``; with
        ``half_resolution`` the logits before the final trilinear ×2 upsampling ``(N, num_classes, D/2, H/2, W/2)``.

        The skeleton both nets share: ``stem``, the ``encoder`` levels (their outputs are the
        skips), then from the deepest level up ``decoder[l](merge(upsamplers[l](features), skip[l]))``,
        and the 1×1×1 ``head``.
        """
        self.check_input(x)
        features = self.stem(x)
        skips = []
        for level in self.encoder:
            features = level(features)
            skips.append(features)
        for level in reversed(range(len(self.decoder))):
            features = self.decoder[level](self.merge(self.upsamplers[level](features), skips[level]))
        return self.upsample_logits(self.head(features), half_resolution)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(N, in_channels, D, H, W)`` with a valid size."""
        name = type(self).__name__
        if x.ndim != 5 or x.shape[1] != self.init_args["in_channels"]:
            raise ValueError(
                f"{name}: input of shape {tuple(x.shape)}, expected (N, {self.init_args['in_channels']}, z, y, x)"
            )
        size = tuple(x.shape[2:])
        if any(s % self.input_multiple for s in size):
            raise ValueError(
                f"{name}: input size {size} (z, y, x) is not a multiple of {self.input_multiple} in every axis "
                f"(the network's total stride); the nearest valid size is {valid_input_size(size, self.input_multiple)}"
            )

    def init_weights(self) -> None:
        """Kaiming-normal convolutions, unit/zero norms, zero biases.

        Draws from torch's global RNG, so nets made under different seeds differ (cross pseudo
        supervision trains two differently initialised nets).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.InstanceNorm3d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @staticmethod
    def upsample_logits(logits: torch.Tensor, half_resolution: bool = False) -> torch.Tensor:
        """Trilinear ×2 upsampling of the half-resolution logits to the input size (none with
        ``half_resolution``: :func:`segcore.resample.upsampled_softmax` does it with the softmax)."""
        if half_resolution:
            return logits
        return F.interpolate(logits, scale_factor=2, mode="trilinear", align_corners=False)


def level_channels(base_channels: int, depth: int, max_channels: int) -> list[int]:
    """Channels of each resolution level: ``base_channels`` doubled per level, capped."""
    if base_channels < 1 or depth < 1 or max_channels < base_channels:
        raise ValueError(
            f"need base_channels >= 1, depth >= 1, max_channels >= base_channels; got "
            f"base_channels={base_channels}, depth={depth}, max_channels={max_channels}"
        )
    return [min(base_channels * 2**level, max_channels) for level in range(depth)]
