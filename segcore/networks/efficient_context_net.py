"""The fine network: an efficient 3-D net of anisotropic convolutions and strip-pooling context."""

from __future__ import annotations

import torch
from torch import nn

from segcore.networks.blocks import (
    AnisotropicResidualBlock,
    AnisotropicStripPooling,
    ConvNormAct,
    InstanceNorm,
    SegmentationNetwork,
)


class EfficientContextNet(SegmentationNetwork):
    """Efficient encoder-decoder for the organ-region crop, after FLARE's EfficientSegNet.

    The same half-resolution start and level layout as the coarse net, but cheaper per voxel and
    with long-range context:

    - levels are :class:`AnisotropicResidualBlock` s: in-plane (1, 3, 3) and through-plane
      (3, 1, 1) convolutions instead of 3×3×3 ones;
    - downsampling is one strided 3×3×3 convolution (it runs at the lower resolution);
    - each encoder level ends with an :class:`AnisotropicStripPooling` context gate, so every
      voxel sees the whole crop along z, y and x at a cost linear in the voxels;
    - skips are added, not concatenated, so decoder blocks keep the level's width.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output channels: background + organs.
        base_channels: channels of the first level.
        depth: resolution levels after the stem; the total stride is ``2 ** depth``.
        max_channels: cap on the channels of the deeper levels.
        blocks_per_level: anisotropic residual blocks in each encoder level.
        output_stride: 1: logits at the input's resolution (a full-resolution decoder stage of
            factorised convolutions); 2: at half of it, upsampled ×2 (:class:`SegmentationNetwork`).
        full_resolution_channels: channels of the full-resolution stage (``output_stride`` 1).
        deep_supervision: auxiliary heads on the lower decoder levels, for training.
        residual_output: (``output_stride`` 1) the logits are a half-resolution head's, upsampled,
            plus a full-resolution correction that starts at zero (:class:`SegmentationNetwork`).

    Shapes:
        ``(N, in_channels, D, H, W)`` → logits ``(N, num_classes, D, H, W)``, with D, H, W
        multiples of ``input_multiple``. Softmax is left to the loss / predictor.
    """

    full_resolution_kernels = ((1, 3, 3), (3, 1, 1))

    def build_levels(self, channels: list[int], blocks_per_level: int) -> None:
        self.encoder = nn.ModuleList()
        for level, width in enumerate(channels):
            layers: list[nn.Module] = [] if level == 0 else [ConvNormAct(channels[level - 1], width, stride=2)]
            layers += [AnisotropicResidualBlock(width) for _ in range(blocks_per_level)]
            layers.append(AnisotropicStripPooling(width))
            self.encoder.append(nn.Sequential(*layers))
        self.upsamplers = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2, bias=False),
                InstanceNorm(channels[level]),
            )
            for level in range(len(channels) - 1)
        )
        self.decoder = nn.ModuleList(AnisotropicResidualBlock(channels[level]) for level in range(len(channels) - 1))

    @staticmethod
    def merge(upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Skips are added: decoder blocks keep the level's width."""
        return upsampled + skip
