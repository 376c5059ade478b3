"""The coarse network: a residual 3-D U-Net whose encoder starts at half resolution."""

from __future__ import annotations

import torch
from torch import nn

from segcore.networks.blocks import ResidualBlock, SegmentationNetwork


class ResidualUNet3D(SegmentationNetwork):
    """Residual 3-D U-Net for whole-scan localisation of the organs.

    A stride-2 stem brings the input to half resolution at once (the coarse stage only needs the
    organs' region, and every later layer then costs 1/8); ``depth`` levels follow, each
    halving the resolution and doubling the channels (capped at ``max_channels``). Encoder
    levels are residual blocks (3×3×3 convolutions, the first strided), decoder levels upsample
    with a 2×2×2 transposed convolution, concatenate the skip and apply a residual block. A
    full-resolution stage (the upsampled decoder features joined with the image's own
    features) and a 1×1×1 head give the logits at the input size (``output_stride=1``), or the
    head gives them at half resolution, upsampled trilinearly (``output_stride=2``).

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output channels: background + organs.
        base_channels: channels of the first level.
        depth: resolution levels after the stem; the total stride is ``2 ** depth``.
        max_channels: cap on the channels of the deeper levels.
        blocks_per_level: residual blocks in each encoder level.
        output_stride: 1: logits at the input's resolution (a full-resolution decoder stage);
            2: at half of it, upsampled ×2 (:class:`SegmentationNetwork`).
        full_resolution_channels: channels of the full-resolution stage (``output_stride`` 1).
        deep_supervision: auxiliary heads on the lower decoder levels, for training.
        residual_output: (``output_stride`` 1) the logits are a half-resolution head's, upsampled,
            plus a full-resolution correction that starts at zero (:class:`SegmentationNetwork`).

    Shapes:
        ``(N, in_channels, D, H, W)`` → logits ``(N, num_classes, D, H, W)``, with D, H, W
        multiples of ``input_multiple``. Softmax is left to the loss / predictor.
    """

    def build_levels(self, channels: list[int], blocks_per_level: int) -> None:
        self.encoder = nn.ModuleList()
        for level, width in enumerate(channels):
            previous = channels[max(level - 1, 0)]
            blocks = [ResidualBlock(previous, width, stride=1 if level == 0 else 2)]
            blocks += [ResidualBlock(width, width) for _ in range(blocks_per_level - 1)]
            self.encoder.append(nn.Sequential(*blocks))
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose3d(channels[level + 1], channels[level], 2, stride=2, bias=False)
            for level in range(len(channels) - 1)
        )
        self.decoder = nn.ModuleList(
            ResidualBlock(2 * channels[level], channels[level]) for level in range(len(channels) - 1)
        )

    @staticmethod
    def merge(upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Skips are concatenated (the decoder block takes twice the level's channels)."""
        return torch.cat([upsampled, skip], dim=1)
