"""Building blocks shared by the segmentation networks.

Every block works on 3-D feature maps ``(N, C, D, H, W)`` = ``(N, C, z, y, x)``. Convolutions
carry no bias because an affine instance norm follows each one; instance norm (not batch norm)
because training batches are 1–4 volumes and inference runs one volume at a time.

The nets build their convolutions and norms from :class:`Conv3d` and :class:`InstanceNorm`: the
same functions and parameters as ``nn.Conv3d`` and ``nn.InstanceNorm3d(affine=True)`` (a
checkpoint of either loads into the other), on the CPU's fast kernels (``python -m bench.layer_kernels``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segcore.labels import NUM_CLASSES

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


ONEDNN = torch.backends.mkldnn.is_available()
"""Whether this PyTorch build has oneDNN (every official CPU and CUDA build does)."""


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs every spatial kernel on oneDNN on the CPU.

    PyTorch chooses between oneDNN and its generic im2col kernel by a size rule written for 2-D
    images (``ConvParams::use_mkldnn`` in ``aten/src/ATen/native/Convolution.cpp``: a float batch
    of one goes to im2col unless N·C·H·W > 20,480), which for a 3-D input reads N·C·D·H and ignores
    the last axis. A volume with few channels, the stems' one-channel CT at 80³ or the deeper
    levels' 16–32 channels at 10–20³, then takes im2col: 2.6–10.8× slower than oneDNN on the same
    shapes (forward, one thread; ``bench.layer_kernels``). This class calls oneDNN directly for
    float32 on the CPU; PyTorch's own choice stands under autocast and in bf16 (oneDNN there), under
    ``torch.compile`` (the compiler's) and for 1×1×1 kernels (where it is the faster one).
    Outputs and gradients equal ``nn.Conv3d`` 's up to float rounding; parameters are the same.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.kernel_size != (1, 1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and ONEDNN
            and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            return torch.ops.aten.mkldnn_convolution(
                x, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(x, weight, bias)


class InstanceNorm(nn.GroupNorm):
    """Affine instance norm: ``nn.InstanceNorm3d(channels, affine=True)`` computed as a group norm
    of one channel per group.

    The same function (each channel of each volume normalised over its voxels, eps 1e-5, then
    scaled and shifted per channel) and the same parameters (``weight``, ``bias``: checkpoints
    written with ``nn.InstanceNorm3d`` load unchanged), but PyTorch's group norm has its own CPU
    kernel where its instance norm runs batch norm on a reshaped copy: 4.0–6.5× faster forward, 2.0–3.5×
    forward and backward (``bench.layer_kernels``).
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, eps=1e-5, affine=True)


class ConvNormAct(nn.Sequential):
    """Conv3d → affine instance norm → LeakyReLU (the activation is optional)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Kernel = 3, stride: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            Conv3d(in_channels, out_channels, kernel, stride=stride, padding=_same_padding(kernel), bias=False),
            InstanceNorm(out_channels),
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


SLAB_ELEMENTS = 1 << 24
"""Values of one slab's input in the slab-wise inference paths (:func:`by_slabs`): 64 MiB as float32."""


def by_slabs() -> bool:
    """Whether the full-resolution layers run by slabs of planes: whenever no gradient is being
    recorded (inference and validation), except while tracing or compiling (the exporters and
    the compiler see the plain graph)."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def slab_planes(channels: int, plane_shape: Sequence[int], elements: int = SLAB_ELEMENTS) -> int:
    """Planes per slab so that a slab of ``channels`` planes of ``plane_shape`` holds about ``elements`` values."""
    return max(1, elements // max(1, channels * int(plane_shape[0]) * int(plane_shape[1])))


def slabs(depth: int, planes: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive slabs of at most ``planes`` planes covering ``range(depth)``."""
    return [(start, min(depth, start + planes)) for start in range(0, depth, planes)]


def conv_planes(conv: nn.Conv3d, source, start: int, stop: int, depth: int) -> torch.Tensor:
    """Output planes ``[start, stop)`` (z) of a stride-1, same-padded ``conv`` over an input of
    ``depth`` planes, from the input planes they read: ``source(low, high)`` gives input planes
    ``[low, high)``. Beyond the input's first and last plane the convolution's own zero padding
    applies, as over the whole input; the planes it pads inside a slab are cut off."""
    if conv.stride[0] != 1 or 2 * conv.padding[0] != conv.kernel_size[0] - 1:
        raise ValueError(f"{conv} is not a stride-1 same-padded convolution along z")
    halo = conv.padding[0]
    low, high = max(0, start - halo), min(depth, stop + halo)
    return conv(source(low, high))[:, :, start - low : stop - low]


def instance_norm_(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` of a ``(N, C, z, y, x)`` tensor computed in place (an :class:`InstanceNorm`: one
    channel per group), equal up to float rounding: the mean is taken out first, then the variance
    is that of the centred values, then the scale and shift. The sums are float32 (or ``x`` 's
    wider dtype) per plane and float64 over the planes: a float32 sum of squares over a whole 192³
    channel is off by about 1e-4 of the variance, as much as the rest of the net's rounding
    together. Returns ``x``."""
    if norm.num_groups != norm.num_channels:
        raise ValueError(f"{norm} is not an instance norm (one channel per group)")
    count, summed = x[0, 0].numel(), torch.promote_types(x.dtype, torch.float32)
    mean = x.sum(dim=(3, 4), dtype=summed).double().sum(2) / count
    x.sub_(mean.to(summed)[..., None, None, None])
    squares = torch.linalg.vector_norm(x, dim=(3, 4), dtype=summed).double().square_().sum(2)
    scale = (squares / count + norm.eps).rsqrt_() * norm.weight.double()
    return x.mul_(scale.to(summed)[..., None, None, None]).add_(norm.bias.to(summed).view(1, -1, 1, 1, 1))


def head_by_slabs(head: nn.Conv3d, features: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    """A 1×1×1 ``head`` on ``features`` by slabs of planes: its output, or added in place to ``into``."""
    planes = slab_planes(head.in_channels + head.out_channels, features.shape[3:])
    add = into is not None
    for start, stop in slabs(features.shape[2], planes):
        part = head(features[:, :, start:stop])
        if into is None:
            into = part.new_empty((*part.shape[:2], features.shape[2], *part.shape[3:]))
        if add:
            into[:, :, start:stop] += part
        else:
            into[:, :, start:stop] = part
    return into


def conv_norm_act_by_slabs(block: ConvNormAct, source, depth: int, planes: int) -> torch.Tensor:
    """A stride-1 :class:`ConvNormAct` over an input of ``depth`` planes given by
    ``source(low, high)`` (as :func:`conv_planes`), its convolution by slabs of ``planes``
    planes into one output, normalised and activated in place."""
    conv, norm, *act = block
    output = None
    for start, stop in slabs(depth, planes):
        part = conv_planes(conv, source, start, stop, depth)
        if output is None:
            output = part.new_empty((*part.shape[:2], depth, *part.shape[3:]))
        output[:, :, start:stop] = part
    output = instance_norm_(norm, output)
    for layer in act:
        output = layer(output)
    return output


class FullResolutionStage(nn.Module):
    """The decoder's last stage, at the input's resolution.

    The half-resolution decoder features are upsampled ×2 by a 2×2×2 transposed convolution to
    ``channels`` channels, joined (concatenated) with ``channels`` features computed from the image
    itself at full resolution (one 3×3×3 convolution), and two convolutions mix them. The image
    branch gives the thin structures (adrenals, esophagus, vessel walls) the full-resolution
    evidence a half-resolution answer cannot hold; few channels keep the full-resolution cost small.

    Args:
        in_channels: image channels.
        decoder_channels: channels of the half-resolution decoder features.
        channels: channels at full resolution.
        kernels: kernels of the two mixing convolutions (factorised ``(1, 3, 3)`` / ``(3, 1, 1)``
            for the anisotropic fine net).

    Shapes: features ``(N, decoder_channels, D/2, H/2, W/2)`` and image ``(N, in_channels, D, H, W)``
    → ``(N, channels, D, H, W)``.

    Without autograd (inference, validation) the same function is computed with the norms in
    place and the mixing convolutions by slabs of planes (:meth:`forward_by_slabs`): at most three
    full-resolution tensors of ``channels`` channels at once, against six on the plain path (its
    concatenation alone is two of them).
    """

    def __init__(self, in_channels: int, decoder_channels: int, channels: int, kernels: tuple[Kernel, Kernel] = (3, 3)):
        super().__init__()
        self.upsample = nn.Sequential(
            nn.ConvTranspose3d(decoder_channels, channels, 2, stride=2, bias=False),
            InstanceNorm(channels),
        )
        self.image = ConvNormAct(in_channels, channels)
        self.mix = nn.Sequential(
            ConvNormAct(2 * channels, channels, kernels[0]), ConvNormAct(channels, channels, kernels[1])
        )

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if by_slabs():
            return self.forward_by_slabs(features, image)
        return self.mix(torch.cat([self.upsample(features), self.image(image)], dim=1))

    def forward_by_slabs(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with every norm in place and the mixing convolutions by slabs of
        z-planes (the concatenation exists one slab at a time), equal up to float rounding. The
        full-resolution tensors that exist at once are at most three of ``channels`` channels
        (the two branches and the first mixing output), against six of the plain path."""
        transposed, upsample_norm = self.upsample
        upsampled = instance_norm_(upsample_norm, transposed(features))
        image_conv, image_norm, image_act = self.image
        from_image = image_act(instance_norm_(image_norm, image_conv(image)))
        depth, planes = image.shape[2], slab_planes(2 * self.mix[0][0].in_channels, image.shape[3:])
        branches = [upsampled, from_image]
        del upsampled, from_image  # freed once the first mixing convolution is done with them
        mixed = conv_norm_act_by_slabs(
            self.mix[0], lambda low, high: torch.cat([branch[:, :, low:high] for branch in branches], dim=1),
            depth, planes,
        )  # fmt: skip
        branches.clear()
        return conv_norm_act_by_slabs(self.mix[1], lambda low, high: mixed[:, :, low:high], depth, planes)


class SegmentationNetwork(nn.Module):
    """Shared contract of the segmentation networks.

    The constructor is shared: it keeps ``init_args`` (every constructor argument, JSON-able, so
    that ``type(net)(**net.init_args)`` rebuilds the same architecture) and ``input_multiple``
    (the total stride: every spatial axis of the input must be a multiple of it); subclasses
    build their levels (:meth:`build_levels`) and say how a decoder level joins its skip (:meth:`merge`).

    Two output grids (``output_stride``):

    - ``1`` (the default): a :class:`FullResolutionStage` after the decoder, the 1×1×1 ``head``
      on its features: logits at the input's size, no interpolation;
    - ``2``: the ``head`` on the half-resolution decoder features, logits upsampled trilinearly
      ×2 (:meth:`upsample_logits`). Checkpoints written before ``output_stride`` existed are of
      this kind (:func:`segcore.networks.checkpoint.build_networks` says so for them).

    With ``residual_output`` (``output_stride`` 1 only) the full-resolution answer is a correction
    of a half-resolution one: the logits are the ``half_resolution_head`` 's (on decoder level 0,
    where a half-resolution net's ``head`` reads) upsampled ×2, plus the ``head`` on the
    full-resolution stage, whose weights and bias start at zero. A half-resolution model given to
    such a net (:func:`segcore.training.warm_start.warm_start`) then answers exactly as before at
    step 0, and training only adds what the full resolution can see: no organ starts from nothing.

    With ``deep_supervision`` the net also has a 1×1×1 head on each lower decoder level
    (``auxiliary_heads``; with ``residual_output`` level 0's is the ``half_resolution_head``),
    trained by :func:`segcore.training.losses.deep_supervision_loss` through
    ``forward(x, auxiliary=True)``; inference ignores them.
    """

    init_args: dict[str, Any]
    input_multiple: int

    full_resolution_kernels: tuple[Kernel, Kernel] = (3, 3)
    """Kernels of the two mixing convolutions of the :class:`FullResolutionStage`."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = NUM_CLASSES,
        base_channels: int = 16,
        depth: int = 5,
        max_channels: int = 256,
        blocks_per_level: int = 1,
        output_stride: int = 1,
        full_resolution_channels: int = 8,
        deep_supervision: bool = False,
        residual_output: bool = False,
    ):
        """Record the arguments (subclasses document them), build the stride-2 ``stem``, the
        subclass's levels (:meth:`build_levels`), the output and initialise the weights."""
        super().__init__()
        if output_stride not in (1, 2):
            raise ValueError(f"output_stride must be 1 (full resolution) or 2 (half resolution), got {output_stride}")
        if residual_output and output_stride != 1:
            raise ValueError(
                "residual_output corrects a half-resolution answer at full resolution: it needs output_stride 1"
            )
        self.init_args = {
            "in_channels": in_channels, "num_classes": num_classes, "base_channels": base_channels,
            "depth": depth, "max_channels": max_channels, "blocks_per_level": blocks_per_level,
            "output_stride": output_stride, "deep_supervision": bool(deep_supervision),
        }  # fmt: skip
        if output_stride == 1:
            self.init_args["full_resolution_channels"] = full_resolution_channels
        if residual_output:  # recorded only when set: the nets written before it load unchanged
            self.init_args["residual_output"] = True
        self.input_multiple = 2**depth
        channels = level_channels(base_channels, depth, max_channels)
        self.stem = ConvNormAct(in_channels, channels[0], stride=2)
        self.build_levels(channels, blocks_per_level)
        self._build_output(channels)
        self.init_weights()

    def build_levels(self, channels: list[int], blocks_per_level: int) -> None:
        """Set ``encoder``, ``upsamplers`` and ``decoder`` (``ModuleList`` s) for levels of ``channels``."""
        raise NotImplementedError

    @property
    def output_stride(self) -> int:
        """1: logits at the input's resolution; 2: at half of it, upsampled ×2."""
        return self.init_args["output_stride"]

    @property
    def residual_output(self) -> bool:
        """Whether the logits are a half-resolution answer plus a full-resolution correction."""
        return self.init_args.get("residual_output", False)

    @property
    def answers_at_half_resolution(self) -> bool:
        """Whether ``forward(x, half_resolution=True)`` exists: the head before its upsampling
        (``output_stride`` 2), the ``half_resolution_head`` (``residual_output``) or deep
        supervision's head on decoder level 0."""
        return self.output_stride == 2 or self.residual_output or 0 in self.auxiliary_levels

    @property
    def auxiliary_levels(self) -> list[int]:
        """Decoder levels (0: half resolution) with an auxiliary output, highest resolution first."""
        if not self.init_args["deep_supervision"]:
            return []
        return list(range(self.output_stride - 1, len(self.decoder)))

    @property
    def auxiliary_head_levels(self) -> list[int]:
        """The decoder level each of ``auxiliary_heads`` reads (level 0's output is the
        ``half_resolution_head`` 's with ``residual_output``)."""
        return [level for level in self.auxiliary_levels if not (self.residual_output and level == 0)]

    def _build_output(self, channels: list[int]) -> None:
        """The head (and full-resolution stage, auxiliary heads) after the decoder levels."""
        args = self.init_args
        num_classes = args["num_classes"]
        if self.output_stride == 1:
            width = args["full_resolution_channels"]
            self.full_resolution = FullResolutionStage(
                args["in_channels"], channels[0], width, self.full_resolution_kernels
            )
            self.head = nn.Conv3d(width, num_classes, 1)
            if self.residual_output:
                self.half_resolution_head = nn.Conv3d(channels[0], num_classes, 1)
        else:
            self.head = nn.Conv3d(channels[0], num_classes, 1)
        if args["deep_supervision"]:
            self.auxiliary_heads = nn.ModuleList(
                nn.Conv3d(channels[level], num_classes, 1) for level in self.auxiliary_head_levels
            )

    @staticmethod
    def merge(upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """How a decoder level joins the upsampled features and the encoder's skip."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, half_resolution: bool = False, auxiliary: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(N, num_classes, D, H, W)`` for images ``(N, in_channels, D, H, W)``.

        The skeleton both nets share: ``stem``, the ``encoder`` levels (their outputs are the
        skips), then from the deepest level up ``decoder[l](merge(upsamplers[l](features), skip[l]))``,
        then the full-resolution stage (``output_stride`` 1) and the 1×1×1 ``head`` (with
        ``residual_output`` added to the ``half_resolution_head`` 's upsampled logits).

        Args:
            half_resolution: the logits at half the input's size, ``(N, num_classes, D/2, H/2, W/2)``:
                with ``output_stride`` 2 those before the final trilinear ×2 upsampling; with
                ``residual_output`` the ``half_resolution_head`` 's, else deep supervision's head
                on decoder level 0; the full-resolution stage skipped (a coarse answer where only
                the organs' box is wanted; :attr:`answers_at_half_resolution`).
            auxiliary: (``deep_supervision`` only) a list: the logits, then those of each
                auxiliary head, highest resolution first (decoder level ``l`` is at ``1 / 2**(l+1)``).
        """
        self.check_input(x, half_resolution, auxiliary)
        return self.decode(self.encode(x), x, half_resolution, auxiliary)

    def decode(
        self,
        skips: list[torch.Tensor],
        x: torch.Tensor,
        half_resolution: bool = False,
        auxiliary: bool = False,
        level_bias: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """The decoder and the output on :meth:`encode` 's ``skips`` of the image ``x`` (as :meth:`forward`);
        ``level_bias[l]`` (broadcasting, e.g. ``(N, C_l, 1, 1, 1)``) is added to decoder level ``l`` 's output."""
        features = skips[-1]
        heads = dict(zip(self.auxiliary_head_levels, self.auxiliary_heads)) if auxiliary else {}
        outputs = {}  # decoder level -> its auxiliary logits
        for level in reversed(range(len(self.decoder))):
            features = self.decoder[level](self.merge(self.upsamplers[level](features), skips[level]))
            if level_bias is not None:
                features = features + level_bias[level]
            if level in heads:
                outputs[level] = heads[level](features)
        if self.output_stride == 2:
            logits = self.upsample_logits(self.head(features), half_resolution)
        elif self.residual_output and half_resolution:
            logits = outputs[0] = self.half_resolution_head(features)
        elif half_resolution:  # deep supervision's level-0 head: the full-resolution stage skipped
            if 0 not in outputs:
                outputs[0] = self.auxiliary_heads[self.auxiliary_head_levels.index(0)](features)
            logits = outputs[0]
        elif self.residual_output:
            outputs[0] = self.half_resolution_head(features)
            full_resolution = self.full_resolution(features, x)
            logits = self.upsample_logits(outputs[0])
            if by_slabs():
                logits = head_by_slabs(self.head, full_resolution, logits)
            else:
                logits = logits + self.head(full_resolution)
        else:
            full_resolution = self.full_resolution(features, x)
            logits = head_by_slabs(self.head, full_resolution) if by_slabs() else self.head(full_resolution)
        if not auxiliary:
            return logits
        return [logits] + [outputs[level] for level in self.auxiliary_levels]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ``stem`` and every ``encoder`` level: each level's features (the skips), highest
        resolution (half the input's) first."""
        features = self.stem(x)
        skips = []
        for level in self.encoder:
            features = level(features)
            skips.append(features)
        return skips

    def check_input(self, x: torch.Tensor, half_resolution: bool = False, auxiliary: bool = False) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(N, in_channels, D, H, W)`` with a valid size and
        the outputs asked for exist."""
        name = type(self).__name__
        if half_resolution and not self.answers_at_half_resolution:
            raise ValueError(
                f"{name}: half_resolution logits exist only with output_stride 2, residual_output or deep_supervision"
            )
        if auxiliary and not self.init_args["deep_supervision"]:
            raise ValueError(f"{name}: auxiliary outputs need deep_supervision")
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
        """Kaiming-normal convolutions, unit/zero norms, zero biases; with ``residual_output`` a
        zero ``head`` (the full-resolution correction starts at nothing).

        Draws from torch's global RNG, so nets made under different seeds differ (cross pseudo
        supervision trains two differently initialised nets).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv1d | nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.residual_output:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @staticmethod
    def upsample_logits(logits: torch.Tensor, half_resolution: bool = False) -> torch.Tensor:
        """Trilinear ×2 upsampling of the half-resolution logits to the input size (none with
        ``half_resolution``: :func:`segcore.volumes.resample.upsampled_softmax` does it with the softmax)."""
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
