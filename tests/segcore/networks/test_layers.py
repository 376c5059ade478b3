"""The nets' convolution and norm layers: the same functions as PyTorch's, on the CPU's fast kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from segcore.networks import NETWORKS, build_network
from segcore.networks.blocks import ONEDNN, Conv3d, InstanceNorm

SHAPES = [  # (input, out channels, kernel, stride, padding): the shapes the nets have
    ((1, 1, 24, 24, 24), 4, 3, 2, 1),  # a stem: one-channel CT, strided
    ((1, 1, 32, 32, 32), 4, 3, 1, 1),  # the full-resolution stage's image branch
    ((2, 8, 8, 8, 8), 8, (1, 3, 3), 1, (0, 1, 1)),  # anisotropic, in-plane
    ((1, 8, 10, 12, 14), 6, (3, 1, 1), 1, (1, 0, 0)),  # anisotropic, through-plane, uneven axes
    ((1, 4, 8, 8, 8), 4, 1, 2, 0),  # a strided 1x1x1 projection
]


def pair(in_channels: int, out_channels: int, kernel, stride: int, padding) -> tuple[nn.Conv3d, Conv3d]:
    stock = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True)
    ours = Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=True)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


@pytest.mark.parametrize("shape, out_channels, kernel, stride, padding", SHAPES)
def test_conv3d_gives_nn_conv3d_outputs_and_gradients(shape, out_channels, kernel, stride, padding):
    torch.manual_seed(0)
    stock, ours = pair(shape[1], out_channels, kernel, stride, padding)
    x = torch.randn(shape, requires_grad=True)
    expected = stock(x)
    grad_out = torch.randn_like(expected)
    (expected_x,) = torch.autograd.grad(expected, x, grad_out)
    expected_weight = torch.autograd.grad(stock(x), stock.weight, grad_out)[0]
    actual = ours(x)
    (actual_x,) = torch.autograd.grad(actual, x, grad_out)
    actual_weight = torch.autograd.grad(ours(x), ours.weight, grad_out)[0]
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual_x, expected_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual_weight, expected_weight, rtol=1e-4, atol=1e-3)


def kernels_called(module: nn.Module, x: torch.Tensor) -> set[str]:
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x)
    return {event.key for event in prof.key_averages()}


@pytest.mark.skipif(not ONEDNN, reason="this PyTorch build has no oneDNN")
def test_a_small_one_channel_volume_runs_on_onednn_where_nn_conv3d_takes_im2col():
    """The case PyTorch's size rule gets wrong: N*C*D*H = 1*1*32*32 = 1,024 <= 20,480."""
    stock, ours = pair(1, 4, 3, 1, 1)
    x = torch.randn(1, 1, 32, 32, 32)
    assert "aten::slow_conv3d_forward" in kernels_called(stock, x)  # the rule this class exists for
    called = kernels_called(ours, x)
    assert "aten::mkldnn_convolution" in called and "aten::slow_conv3d_forward" not in called


def test_under_bf16_autocast_pytorch_chooses_and_the_output_is_bf16():
    stock, ours = pair(2, 4, 3, 1, 1)
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = stock(x), ours(x)
    assert actual.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected)


def test_instance_norm_is_nn_instance_norm_and_takes_its_parameters():
    torch.manual_seed(0)
    stock = nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        stock.weight.uniform_(0.5, 2.0)
        stock.bias.uniform_(-1.0, 1.0)
    ours = InstanceNorm(6)
    ours.load_state_dict(stock.state_dict())  # strict: the same parameter names and shapes
    x = (torch.randn(3, 6, 5, 7, 9) * torch.arange(1, 7.0).view(1, 6, 1, 1, 1) + 10).requires_grad_()
    expected, actual = stock(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(expected)
    torch.testing.assert_close(
        torch.autograd.grad(actual, x, grad_out)[0], torch.autograd.grad(expected, x, grad_out)[0], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("arch", sorted(NETWORKS))
@pytest.mark.parametrize("output_stride", [1, 2])
def test_the_nets_use_these_layers_for_every_spatial_convolution_and_norm(arch, output_stride):
    net = build_network(arch, base_channels=4, depth=3, max_channels=16, output_stride=output_stride)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1)]
    assert convs and all(type(m) is Conv3d for m in convs)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(type(m) is InstanceNorm for m in norms)
    assert not [m for m in net.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
