"""GenericSSL's A&D network: one encoder, three decoders; made from a trained net it answers as
that net does at step 0, and the diffusion decoder learns to read the noisy label."""

from __future__ import annotations

import json

import pytest
import torch

from segcore.networks import AggregatingDecouplingNet, build_network, network_spec

TINY = {"base_channels": 4, "depth": 3, "max_channels": 16, "deep_supervision": True, "residual_output": True}
BASES = ["residual_unet3d", "efficient_context_net"]


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("base", BASES)
def test_made_from_a_net_its_three_decoders_answer_as_that_net_at_step_0(base):
    torch.manual_seed(0)
    net = build_network(base, **TINY).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.head.weight, std=0.1)  # a trained net's correction is not zero
    combined = AggregatingDecouplingNet.from_net(net).eval()
    x = images()
    noisy = torch.randn(2, 14, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = net(x)
        assert torch.equal(combined(x), expected)
        assert torch.equal(combined.labeled_logits(x), expected)
        assert torch.allclose(combined.denoise(x, noisy, torch.tensor([0, 999])), expected, atol=1e-6)


def test_the_encoder_is_one_and_the_decoders_three():
    combined = AggregatingDecouplingNet("residual_unet3d", **TINY)
    assert combined.labeled.encoder is combined.unlabeled.encoder is combined.diffusion.encoder
    assert combined.labeled.decoder is not combined.unlabeled.decoder
    base = build_network("residual_unet3d", **TINY)
    encoder = sum(p.numel() for p in base.stem.parameters()) + sum(p.numel() for p in base.encoder.parameters())
    decoder = sum(p.numel() for p in base.parameters()) - encoder
    extra = sum(
        p.numel() for m in (combined.label_stem, combined.time_mlp, combined.time_projections) for p in m.parameters()
    )
    assert sum(p.numel() for p in combined.parameters()) == encoder + 3 * decoder + extra


def test_it_rebuilds_from_its_spec_and_predicts_with_the_unlabeled_decoder():
    torch.manual_seed(3)
    combined = AggregatingDecouplingNet("efficient_context_net", **TINY).eval()
    spec = json.loads(json.dumps(network_spec(combined)))
    assert spec["arch"] == "ad_generic" and spec["init_args"]["base"] == "efficient_context_net"
    twin = build_network(**spec).eval()
    twin.load_state_dict(combined.state_dict())
    with torch.inference_mode():
        assert torch.equal(twin(images()), combined.unlabeled(images()))
        assert len(twin(images(), auxiliary=True)) == 3  # deep supervision passes through


def test_the_diffusion_decoder_reads_the_noisy_label_and_the_step_once_trained():
    torch.manual_seed(0)
    combined = AggregatingDecouplingNet("residual_unet3d", **TINY).eval()
    with torch.no_grad():
        torch.nn.init.normal_(combined.label_stem.weight, std=0.5)
        for projection in combined.time_projections:
            torch.nn.init.normal_(projection.weight, std=0.5)
    x = images()
    one, other = (torch.randn(2, 14, 16, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    with torch.inference_mode():
        base = combined.denoise(x, one, torch.tensor([10, 10]))
        assert not torch.allclose(base, combined.denoise(x, other, torch.tensor([10, 10])))
        assert not torch.allclose(base, combined.denoise(x, one, torch.tensor([900, 900])))
        assert torch.equal(combined(x), combined.unlabeled(x))  # the image-only paths never see them
