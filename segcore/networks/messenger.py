"""S&D-Messenger's domain messenger (Zhang et al., ICCV 2023 / TMI; ``xmed-lab/SD-Messenger``),
rewritten for 3-D feature maps.

A batch holds labeled cases in its first half and unlabeled ones in its second. Every voxel of a
feature map is a token. The **labeled** half's tokens attend to the **unlabeled** half's (the
domain messenger, "unlabeled to labeled": what the other domains look like reaches the labeled
features); the unlabeled half attends to itself. The attention is over channels, as in the
released code: queries' channels against keys' channels, the voxels contracted, the logits
instance-normalised rather than scaled, softmax, dropout. The unlabeled half does it per head (a
``C × C`` map each); a labeled case's ``C·H`` query channels attend, as one head, to the key
channels of every unlabeled case of the batch side by side (``B·C·H`` of them in training, the
case's own ``C·H`` at inference, where it is its own partner), as the released code does.

Around it: a 1×1×1 convolution and GELU make the tokens, a LayerNorm before the attention, a
residual, a LayerNorm and a 1×1×1 convolution and GELU after it (the released block), and an
outer residual whose last projection starts at zero, so that a messenger put into a trained net
starts as the identity. At inference a case is its own partner: the batch is paired with itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segcore.networks.aggregating import BASES, WrappedNet
from segcore.networks.blocks import level_channels


def channel_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, dropout: nn.Module
) -> torch.Tensor:
    """``(B, N, Cq)`` queries, ``(B, N, Ck)`` keys and values -> ``(B, N, Cq)``: a ``Cq × Ck`` map of
    channel affinities (the ``N`` tokens contracted), instance-normalised, softmax over the keys'
    channels, applied to the values' channels."""
    logits = queries.transpose(1, 2) @ keys  # (B, Cq, Ck)
    weights = dropout(torch.softmax(F.instance_norm(logits[:, None]).squeeze(1), dim=-1))
    return (weights @ values.transpose(1, 2)).transpose(1, 2)


class DomainMessenger(nn.Module):
    """The domain messenger on ``(2B, C, D, H, W)`` features: labeled ``[:B]``, unlabeled ``[B:]``."""

    def __init__(self, channels: int, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.channels, self.heads = channels, heads
        self.tokens = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.GELU())
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        width = channels * heads
        self.query_labeled = nn.Linear(channels, width, bias=False)
        self.key_unlabeled = nn.Linear(channels, width, bias=False)
        self.value_unlabeled = nn.Linear(channels, width, bias=False)
        self.query_self = nn.Linear(channels, width, bias=False)
        self.key_self = nn.Linear(channels, width, bias=False)
        self.value_self = nn.Linear(channels, width, bias=False)
        self.out_labeled = nn.Linear(width, channels)
        self.out_unlabeled = nn.Linear(width, channels)
        self.dropout = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(channels, eps=1e-6)
        self.project = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.GELU())
        self.gate = nn.Conv3d(channels, channels, 1)  # the outer residual's last projection: starts at zero
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Labeled and unlabeled halves in training; in eval mode each case is paired with itself
        alone (so that no other case of the batch changes its answer)."""
        if not self.training:
            return torch.cat([self.exchange(torch.cat([case, case]))[:1] for case in features.split(1)])
        if features.shape[0] % 2:
            raise ValueError(
                f"the domain messenger needs a labeled and an unlabeled half, got a batch of {features.shape[0]}"
            )
        return self.exchange(features)

    def exchange(self, features: torch.Tensor) -> torch.Tensor:
        """The block on a batch of a labeled half and an unlabeled half."""
        half = features.shape[0] // 2
        batch, channels, *grid = features.shape
        heads = self.heads
        tokens = self.tokens(features).flatten(2).transpose(1, 2)  # (2B, N, C)
        normed = self.norm(tokens)
        labeled, unlabeled = normed[:half], normed[half:]
        # Labeled queries against the keys and values of every unlabeled case side by side.
        width = half * channels * heads
        shared_keys = self.key_unlabeled(unlabeled).transpose(0, 1).reshape(1, -1, width).expand(half, -1, -1)
        shared_values = self.value_unlabeled(unlabeled).transpose(0, 1).reshape(1, -1, width).expand(half, -1, -1)
        told = channel_attention(self.query_labeled(labeled), shared_keys, shared_values, self.dropout)

        def per_head(layer: nn.Linear) -> torch.Tensor:  # (B, N, C·H) -> (B·H, N, C): each case and head alone
            x = layer(unlabeled).reshape(half, -1, heads, channels)
            return x.permute(0, 2, 1, 3).reshape(half * heads, -1, channels)

        own = channel_attention(
            per_head(self.query_self), per_head(self.key_self), per_head(self.value_self), self.dropout
        )
        own = own.reshape(half, heads, -1, channels).permute(0, 2, 1, 3).reshape(half, -1, heads * channels)
        attended = torch.cat([self.out_labeled(told), self.out_unlabeled(own)])
        mixed = self.norm_out(tokens + self.dropout(attended)).transpose(1, 2).reshape(batch, channels, *grid)
        return features + self.gate(self.project(mixed))


class MessengerNet(WrappedNet):
    """One of this product's segmentation nets with a :class:`DomainMessenger` on its deepest
    encoder level (``network.arch: sd_messenger``, ``init_args.base``). In training its batches are
    a labeled half and an unlabeled half; at inference it answers each case alone."""

    def __init__(self, base: str = "residual_unet3d", heads: int = 2, dropout: float = 0.1, **init_args: Any):
        super().__init__()
        if base not in BASES:
            raise ValueError(f"unknown base network {base!r}; known: {', '.join(sorted(BASES))}")
        self.net = BASES[base](**init_args)
        args = self.net.init_args
        self.init_args = {"base": base, "heads": heads, "dropout": dropout, **args}
        self.input_multiple = self.net.input_multiple
        channels = level_channels(args["base_channels"], args["depth"], args["max_channels"])
        self.messenger = DomainMessenger(channels[-1], heads, dropout)

    own_arguments = ("heads", "dropout")

    def inner(self) -> nn.Module:
        return self.net

    @classmethod
    def from_net(cls, net: nn.Module, **options: Any) -> MessengerNet:
        """A messenger net with ``net``'s architecture and weights (the messenger starts as the identity)."""
        combined = cls(cls.base_of(net), **options, **net.init_args)
        combined.net.load_state_dict(net.state_dict())
        return combined

    def forward(
        self, x: torch.Tensor, half_resolution: bool = False, auxiliary: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        self.net.check_input(x, half_resolution, auxiliary)
        skips = self.net.encode(x)
        skips[-1] = self.messenger(skips[-1])
        return self.net.decode(skips, x, half_resolution, auxiliary)
