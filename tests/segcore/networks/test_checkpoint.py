"""Checkpoint copies for release: the notice is set, the weights and description are kept."""

from __future__ import annotations

import pytest
import torch

from segcore.inference.predictor import Predictor
from segcore.networks import build_network
from segcore.networks.checkpoint import build_networks, copy_with_notice, load_checkpoint, save_checkpoint
from testkit import TINY_NET, tiny_payload, write_tiny_weights


def test_copy_with_notice_sets_the_notice_and_drops_the_training_state(tmp_path):
    source = tmp_path / "best.pt"
    save_checkpoint(source, {**tiny_payload("fine"), "training_state": {"step": 3}})
    copy_with_notice(source, tmp_path / "out" / "fine.pt", "phantoms only")
    copied, original = load_checkpoint(tmp_path / "out" / "fine.pt"), load_checkpoint(source)
    assert copied["notice"] == "phantoms only" and "notice" not in original
    assert "training_state" not in copied and original["training_state"] == {"step": 3}
    for name, tensor in original["networks"][0]["state_dict"].items():
        assert torch.equal(copied["networks"][0]["state_dict"][name], tensor)


def test_the_predictor_reports_the_copied_notice(tmp_path):
    weights = write_tiny_weights(tmp_path / "plain")
    for stage in ("coarse", "fine"):
        copy_with_notice(weights / f"{stage}.pt", tmp_path / "release" / f"{stage}.pt", "not for real scans")
    assert Predictor.from_weights(tmp_path / "release", "cpu").info()["notice"] == "not for real scans"


def test_a_checkpoint_written_before_output_stride_rebuilds_a_half_resolution_net():
    payload = tiny_payload("fine")
    payload["networks"][0]["init_args"].pop("output_stride")
    payload["networks"][0]["init_args"].pop("full_resolution_channels")
    with pytest.raises(RuntimeError):  # the weights of a full-resolution net do not fit
        build_networks(payload)
    torch.manual_seed(0)
    half = build_network("efficient_context_net", **TINY_NET, output_stride=2)
    legacy = {k: v for k, v in half.init_args.items() if k not in ("output_stride", "deep_supervision")}
    payload["networks"] = [{"arch": "efficient_context_net", "init_args": legacy, "state_dict": half.state_dict()}]
    (net,) = build_networks(payload)
    assert net.output_stride == 2 and not net.auxiliary_levels
    probe = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(probe), half.eval()(probe))
