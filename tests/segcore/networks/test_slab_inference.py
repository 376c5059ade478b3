"""The full-resolution stage and head without autograd: computed by slabs of planes with the
norms in place (:func:`segcore.networks.blocks.by_slabs`), the same function as the plain path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segcore.networks import blocks
from segcore.networks.blocks import Conv3d, FullResolutionStage, InstanceNorm, conv_planes, instance_norm_
from tests.segcore.networks.test_networks import ARCHS, images, tiny


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("residual_output", [False, True])
def test_slab_path_equals_the_plain_path(arch, residual_output, monkeypatch):
    """One plane per slab (every slab border is a halo border), two volumes, float64 so that only
    a wrong halo, parity or statistic can make a difference; the slab path must have run."""
    net = tiny(arch, deep_supervision=True, residual_output=residual_output).double().eval()
    with torch.no_grad():
        for parameter in net.parameters():  # zero heads and unit norms would hide a wrong path
            parameter.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(7))
    image = images((24, 16, 40), batch=2).double()
    with torch.enable_grad():
        plain = [output.detach() for output in net(image, auxiliary=True)]
    calls = []
    original = FullResolutionStage.forward_by_slabs
    monkeypatch.setattr(
        FullResolutionStage, "forward_by_slabs", lambda self, *args: calls.append(1) or original(self, *args)
    )
    monkeypatch.setattr(blocks, "SLAB_ELEMENTS", 1)
    with torch.no_grad():
        sliced = net(image, auxiliary=True)
    assert calls == [1]
    for expected, found in zip(plain, sliced, strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-10)


def test_instance_norm_in_place_equals_the_group_norm():
    """A channel far from zero mean (where a one-pass variance loses its digits) and one near it."""
    norm = InstanceNorm(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.5]))
        norm.bias.copy_(torch.tensor([0.25, 2.0]))
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 20, 30, 40, generator=generator) * torch.tensor([0.01, 3.0]).view(1, 2, 1, 1, 1)
    x += torch.tensor([500.0, -1.0]).view(1, 2, 1, 1, 1)
    expected = F.group_norm(x.double(), 2, norm.weight.double(), norm.bias.double(), eps=norm.eps)
    with torch.no_grad():
        found = instance_norm_(norm, x.clone())
    # float32 data near 500 is quantised at 3e-5, a third of a percent of its 0.01 spread
    torch.testing.assert_close(found.double(), expected, rtol=0, atol=2e-3)


def test_instance_norm_in_place_refuses_a_group_norm_of_several_channels():
    with pytest.raises(ValueError, match="not an instance norm"):
        instance_norm_(torch.nn.GroupNorm(1, 2), torch.zeros(1, 2, 2, 2, 2))


@pytest.mark.parametrize("kernel", [(3, 3, 3), (3, 1, 1), (1, 3, 3)])
@pytest.mark.parametrize("slab", [(0, 1), (0, 4), (3, 9), (9, 10)])
def test_conv_planes_are_the_whole_convolutions_planes(kernel, slab):
    conv = Conv3d(3, 2, kernel, padding=tuple(k // 2 for k in kernel), bias=False).double()
    x = torch.randn(1, 3, 10, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = conv(x)
        planes = conv_planes(conv, lambda low, high: x[:, :, low:high], *slab, depth=10)
    torch.testing.assert_close(planes, whole[:, :, slice(*slab)], rtol=0, atol=1e-12)


def test_conv_planes_refuse_a_strided_convolution():
    conv = Conv3d(1, 1, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="stride-1 same-padded"):
        conv_planes(conv, lambda low, high: torch.zeros(1, 1, high - low, 4, 4), 0, 2, depth=4)
