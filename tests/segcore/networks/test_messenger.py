"""S&D-Messenger's domain messenger on hand-made 3-D features: shapes, identity at the start, and
the direction of the exchange (unlabeled to labeled, never the other way)."""

from __future__ import annotations

import pytest
import torch

from segcore.networks.messenger import DomainMessenger


def messenger(seed: int = 0) -> DomainMessenger:
    torch.manual_seed(seed)
    block = DomainMessenger(channels=6, heads=2, dropout=0.0)
    torch.nn.init.normal_(block.gate.weight, std=0.5)  # as if trained: the block does something
    return block


def features(seed: int, batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 6, 3, 4, 5, generator=torch.Generator().manual_seed(seed))


def test_a_new_messenger_is_the_identity_and_keeps_the_shape():
    torch.manual_seed(0)
    block = DomainMessenger(channels=6)
    x = features(1)
    assert torch.equal(block.train()(x), x)
    assert torch.equal(block.eval()(x[:1]), x[:1])  # one case at inference: paired with itself
    assert messenger().train()(x).shape == x.shape
    with pytest.raises(ValueError, match="labeled and an unlabeled half"):
        block.train()(x[:3])


def test_the_labeled_half_hears_the_unlabeled_one_and_not_the_other_way_round():
    block = messenger().train()
    x = features(1)
    other_unlabeled = torch.cat([x[:2], features(2)[2:]])
    other_labeled = torch.cat([features(3)[:2], x[2:]])
    with torch.no_grad():
        base, changed_unlabeled, changed_labeled = block(x), block(other_unlabeled), block(other_labeled)
    # the domain messenger: the labeled outputs move when only the unlabeled cases change
    assert not torch.allclose(base[:2], changed_unlabeled[:2], atol=1e-4)
    # the unlabeled outputs depend on the unlabeled cases alone
    assert torch.allclose(base[2:], changed_labeled[2:], atol=1e-6)
    # every unlabeled case of the batch speaks to every labeled one
    one_changed = torch.cat([x[:3], features(4)[3:]])
    with torch.no_grad():
        assert not torch.allclose(block(one_changed)[0], base[0], atol=1e-4)


def test_at_inference_each_case_is_answered_on_its_own():
    block = messenger().eval()
    x = features(1, batch=2)
    with torch.no_grad():
        together = block(x)
        alone = torch.cat([block(x[:1]), block(x[1:])])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("base", ["residual_unet3d", "efficient_context_net"])
def test_a_messenger_net_made_from_a_trained_net_answers_as_it_at_step_0(base):
    import json

    from segcore.networks import MessengerNet, build_network, network_spec

    torch.manual_seed(0)
    tiny = {"base_channels": 4, "depth": 3, "max_channels": 16, "deep_supervision": True, "residual_output": True}
    net = build_network(base, **tiny).eval()
    combined = MessengerNet.from_net(net)
    x = torch.randn(4, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(x)
        assert torch.equal(combined.eval()(x), expected)
        assert torch.equal(combined.train()(x), expected)  # two labeled, two unlabeled: identity still
        assert len(combined.eval()(x, auxiliary=True)) == 3
    spec = json.loads(json.dumps(network_spec(combined)))
    assert spec["arch"] == "sd_messenger" and spec["init_args"]["base"] == base
    twin = build_network(**spec)
    twin.load_state_dict(combined.state_dict())
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), expected)
