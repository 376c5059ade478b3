"""The two segmentation networks at tiny sizes: shapes, rebuild from spec, gradients, seeding, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segcore.labels import NUM_CLASSES
from segcore.networks import build_network, network_spec, valid_input_size
from segcore.networks.aggregating import BASES

TINY = {"base_channels": 4, "depth": 3, "max_channels": 16}
"""Tiny nets: total stride 8, a few thousand parameters."""

ARCHS = sorted(BASES)
"""The segmentation nets (``ad_generic`` wraps them: ``test_aggregating.py``)."""


def tiny(arch: str, seed: int = 0, **init_args) -> nn.Module:
    torch.manual_seed(seed)
    return build_network(arch, **TINY, **init_args)


def images(size_zyx: tuple[int, int, int], batch: int = 1, seed: int = 123) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, *size_zyx, generator=generator)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_stride", [1, 2])
@pytest.mark.parametrize("size_zyx", [(32, 32, 32), (32, 48, 40), (8, 16, 24), (24, 40, 56)])
def test_output_has_input_size_and_all_classes(arch, output_stride, size_zyx):
    """Even and odd multiples of the total stride (8): 24, 40, 56 have odd half-resolution sizes."""
    net = tiny(arch, output_stride=output_stride)
    assert net.input_multiple == 8 and net.output_stride == output_stride
    with torch.inference_mode():
        logits = net(images(size_zyx, batch=2))
    assert logits.shape == (2, NUM_CLASSES, *size_zyx)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_half_resolution_logits_are_the_output_before_its_upsampling(arch):
    net = tiny(arch, output_stride=2).eval()
    with torch.inference_mode():
        full = net(images((16, 24, 32)))
        half = net(images((16, 24, 32)), half_resolution=True)
    assert half.shape == (1, NUM_CLASSES, 8, 12, 16)
    upsampled = torch.nn.functional.interpolate(half, size=(16, 24, 32), mode="trilinear", align_corners=False)
    assert torch.equal(upsampled, full)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_resolution_is_the_default_and_has_no_half_resolution_logits(arch):
    net = tiny(arch)
    assert net.output_stride == 1 and net.init_args["full_resolution_channels"] == 8
    assert net.head.in_channels == 8  # the head reads the full-resolution stage, not the decoder
    with pytest.raises(ValueError, match="only with output_stride 2"):
        net(images((16, 16, 16)), half_resolution=True)
    with pytest.raises(ValueError, match="output_stride must be 1"):
        tiny(arch, output_stride=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_residual_net_answers_at_half_resolution_with_its_half_resolution_head(arch):
    """With ``residual_output`` the full-resolution answer corrects the half-resolution head's:
    ``half_resolution=True`` gives that head's logits, the full-resolution stage skipped."""
    net = tiny(arch, residual_output=True, deep_supervision=True).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.head.weight)  # a correction that is not zero
    with torch.inference_mode():
        half = net(images((16, 24, 32)), half_resolution=True)
        auxiliary = net(images((16, 24, 32)), auxiliary=True)
        full = net(images((16, 24, 32)))
    assert half.shape == (1, NUM_CLASSES, 8, 12, 16)
    assert torch.equal(half, auxiliary[1])  # level 0's head is the half-resolution head
    assert not torch.allclose(net.upsample_logits(half), full)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_deeply_supervised_net_answers_at_half_resolution_with_its_level_0_head(arch):
    """Without ``residual_output`` the half-resolution answer is deep supervision's head on decoder
    level 0, which training fits to the labels at half resolution."""
    net = tiny(arch, deep_supervision=True).eval()
    assert net.answers_at_half_resolution and not tiny(arch).answers_at_half_resolution
    with torch.inference_mode():
        half = net(images((16, 24, 32)), half_resolution=True)
        auxiliary = net(images((16, 24, 32)), auxiliary=True)
        both = net(images((16, 24, 32)), half_resolution=True, auxiliary=True)
    assert half.shape == (1, NUM_CLASSES, 8, 12, 16)
    assert torch.equal(half, auxiliary[1]) and torch.equal(both[0], half)
    assert not torch.equal(net.upsample_logits(half), auxiliary[0])  # the full answer is another one


@pytest.mark.parametrize("arch", ARCHS)
def test_full_resolution_answer_depends_on_the_image_at_full_resolution(arch):
    """A one-voxel checkerboard added to the image moves the logits more with the full-resolution
    stage's image branch than with that branch silenced: the stage reads the image itself."""
    net = tiny(arch).eval()
    base = images((16, 16, 16))
    z, y, x = torch.meshgrid(*(torch.arange(16),) * 3, indexing="ij")
    checker = (((z + y + x) % 2) * 2 - 1).float()[None, None]
    with torch.inference_mode():
        plain, textured = net(base), net(base + checker)
        with torch.no_grad():
            net.full_resolution.image[0].weight.zero_()
        assert not torch.allclose(plain, textured)
        blind = net(base + checker) - net(base)
    assert (textured - plain).abs().mean() > blind.abs().mean()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_stride", [1, 2])
def test_deep_supervision_adds_lower_resolution_outputs(arch, output_stride):
    net = tiny(arch, output_stride=output_stride, deep_supervision=True).eval()
    with torch.inference_mode():
        outputs = net(images((16, 24, 32)), auxiliary=True)
        main = net(images((16, 24, 32)))
    shapes = [tuple(o.shape[2:]) for o in outputs]
    # depth 3: decoder levels 0 (1/2) and 1 (1/4); a half-resolution net's main head is level 0's
    expected = [(16, 24, 32), (8, 12, 16), (4, 6, 8)] if output_stride == 1 else [(16, 24, 32), (4, 6, 8)]
    assert shapes == expected
    assert torch.equal(outputs[0], main)
    with pytest.raises(ValueError, match="need deep_supervision"):
        tiny(arch)(images((16, 16, 16)), auxiliary=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_rebuilt_from_spec_gives_identical_outputs(arch):
    net = tiny(arch, seed=0).eval()
    spec = json.loads(json.dumps(network_spec(net)))  # checkpoints keep it as plain data
    assert spec == {"arch": arch, "init_args": net.init_args}

    torch.manual_seed(99)  # a different initialisation, overwritten by the weights below
    twin = build_network(**spec).eval()
    twin.load_state_dict(net.state_dict())
    same_args_as_keywords = build_network(spec["arch"], **spec["init_args"])
    assert same_args_as_keywords.init_args == net.init_args

    x = images((16, 24, 32))
    with torch.inference_mode():
        assert torch.equal(net(x), twin(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_the_first_layer(arch):
    net = tiny(arch).train()
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32, 32), generator=torch.Generator().manual_seed(1))
    loss = nn.functional.cross_entropy(net(images((32, 32, 32), batch=2)), labels)
    loss.backward()
    first_conv = next(module for module in net.modules() if isinstance(module, nn.Conv3d))
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_initialisation_follows_torch_seed(arch):
    x = images((16, 16, 16))
    with torch.inference_mode():
        first, same_seed, other_seed = tiny(arch, 0)(x), tiny(arch, 0)(x), tiny(arch, 1)(x)
    assert torch.equal(first, same_seed)
    assert not torch.allclose(first, other_seed)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_forward(arch):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = tiny(arch)(images((16, 16, 16)))
    assert logits.shape == (1, NUM_CLASSES, 16, 16, 16)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size_zyx", [(31, 32, 32), (32, 32, 36), (4, 8, 8)])
def test_bad_size_names_size_and_multiple(arch, size_zyx):
    with pytest.raises(ValueError, match=r"multiple of 8") as error:
        tiny(arch)(images(size_zyx))
    assert str(size_zyx) in str(error.value)
    assert str(valid_input_size(size_zyx, 8)) in str(error.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_shape_is_refused(arch):
    with pytest.raises(ValueError, match=r"expected \(N, 1, z, y, x\)"):
        tiny(arch)(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(ValueError, match=r"expected \(N, 1, z, y, x\)"):
        tiny(arch)(torch.zeros(1, 16, 16, 16))


@pytest.mark.parametrize("arch", ARCHS)
def test_production_defaults(arch):
    """The defaults are the production sizes: 5 levels, total stride 32, 14 classes."""
    net = build_network(arch)
    assert net.input_multiple == 32
    assert net.init_args["num_classes"] == NUM_CLASSES
    assert 1e6 < sum(p.numel() for p in net.parameters()) < 2e7


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown network architecture 'unet'"):
        build_network("unet")
    with pytest.raises(ValueError, match="bad constructor arguments"):
        build_network("residual_unet3d", width=3)
    with pytest.raises(ValueError, match="base_channels"):
        build_network("efficient_context_net", base_channels=0)
    with pytest.raises(ValueError, match="not a registered network"):
        network_spec(nn.Conv3d(1, 1, 1))


def test_spec_unwraps_a_wrapper():
    """Distributed training wraps the net (``DistributedDataParallel.module``)."""
    net = tiny("residual_unet3d")
    wrapper = nn.Module()
    wrapper.module = net
    assert network_spec(wrapper) == network_spec(net)


def test_valid_input_size_rounds_up():
    assert valid_input_size((150, 160, 161), 32) == (160, 160, 192)
