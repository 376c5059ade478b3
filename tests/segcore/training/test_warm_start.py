"""``train.init_weights``: a run's nets start from a trained model, the layers it lacks fresh."""

from __future__ import annotations

import pytest
import torch

from coarse_seg.train import STAGE as COARSE
from segcore.networks import build_network
from segcore.networks.checkpoint import save_checkpoint
from segcore.training.cli import main
from segcore.training.warm_start import warm_start
from tests.segcore.training.test_training import ROOT, train

HALF = ["network.init_args.output_stride=2", "network.init_args.deep_supervision=false"]
NET = {"base_channels": 4, "depth": 3, "max_channels": 16}


def test_a_half_resolution_model_starts_a_full_resolution_run_its_head_on_the_same_level(tiny_store, tmp_path, capsys):
    half = train(tiny_store, tmp_path / "half", *HALF, "train.epochs=1")
    source = half["networks"][0]["state_dict"]
    # A zero learning rate keeps every net where it started.
    fresh = train(tiny_store, tmp_path / "fresh", "train.epochs=1", "optimizer.lr=0.0")
    capsys.readouterr()
    started = train(
        tiny_store, tmp_path / "started", "train.epochs=1", "optimizer.lr=0.0",
        f"train.init_weights={tmp_path / 'half' / 'best.pt'}",
    )  # fmt: skip
    assert "fresh: auxiliary_heads, full_resolution, head" in capsys.readouterr().out
    mine, new = started["networks"][0]["state_dict"], fresh["networks"][0]["state_dict"]
    for name, value in mine.items():
        if name.startswith("auxiliary_heads.0."):  # reads decoder level 0, as the half-resolution head did
            expected = source[name.replace("auxiliary_heads.0.", "head.")]
        elif name.startswith(("head.", "full_resolution.", "auxiliary_heads.")):
            expected = new[name]
        else:
            expected = source[name]
        torch.testing.assert_close(value, expected, msg=name)
    assert not torch.equal(new["stem.0.weight"], source["stem.0.weight"]), "the start must differ from a fresh net"


def _checkpoint(path, stage="coarse", nets=1, **init_args):
    networks = []
    for index in range(nets):
        torch.manual_seed(index)
        net = build_network("residual_unet3d", **{**NET, **init_args})
        networks.append({"arch": "residual_unet3d", "init_args": net.init_args, "state_dict": net.state_dict()})
    save_checkpoint(path, {"stage": stage, "networks": networks, "inference": {"ensemble": [0]}})
    return path


def _nets(count=1, **init_args):
    return [build_network("residual_unet3d", **{**NET, **init_args}) for _ in range(count)]


@pytest.mark.parametrize(
    ("checkpoint", "nets", "reason"),
    [
        ({"stage": "fine"}, {}, "a fine checkpoint, this is the coarse stage"),
        ({"base_channels": 8}, {}, "does not fit this one (base_channels 8 vs 4)"),
        ({"num_classes": 5}, {}, "does not fit this one (num_classes 5 vs 14)"),
        ({"max_channels": 32}, {}, "does not fit this one (max_channels 32 vs 16)"),
        (
            {"full_resolution_channels": 8},
            {"full_resolution_channels": 4},
            "holds layers this network lacks or has in another shape (full_resolution.upsample.0.weight",
        ),
        ({}, {"count": 2}, "holds 1 network(s) for 2"),
    ],
)
def test_a_model_that_does_not_fit_is_refused_naming_the_file(tmp_path, checkpoint, nets, reason):
    path = _checkpoint(tmp_path / "model.pt", **checkpoint)
    targets = _nets(**nets)
    before = [{name: value.clone() for name, value in net.state_dict().items()} for net in targets]
    with pytest.raises(ValueError, match="model.pt: ") as error:
        warm_start(targets, path, "coarse")
    assert reason in str(error.value)
    for net, state in zip(targets, before):  # nothing half-loaded
        for name, value in net.state_dict().items():
            assert torch.equal(value, state[name]), name


def test_a_pair_starts_from_a_pair_net_by_net_and_a_full_resolution_model_can_start_a_half_resolution_one(tmp_path):
    path = _checkpoint(tmp_path / "pair.pt", nets=2, output_stride=2)
    saved = torch.load(path, weights_only=True)["networks"]
    nets = _nets(2, output_stride=1, deep_supervision=True)
    fresh = warm_start(nets, path, "coarse")
    assert {name.split(".")[0] for name in fresh} == {"full_resolution", "head", "auxiliary_heads"}
    for net, entry in zip(nets, saved):
        for name, value in entry["state_dict"].items():
            assert torch.equal(net.state_dict()[name.replace("head.", "auxiliary_heads.0.")], value), name

    full = _checkpoint(tmp_path / "full.pt", output_stride=1, deep_supervision=True)
    (half,) = _nets(output_stride=2)
    assert warm_start([half], full, "coarse") == []
    state = torch.load(full, weights_only=True)["networks"][0]["state_dict"]
    assert torch.equal(half.state_dict()["head.weight"], state["auxiliary_heads.0.weight"])


def test_two_starts_a_missing_or_unfitting_model_stop_the_run_before_it_trains(tiny_store, tmp_path, capsys):
    argv = ["--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"), f"store={tiny_store}"]
    missing = tmp_path / "missing.pt"
    assert main(COARSE, ROOT, [*argv, f"output_dir={tmp_path / 'a'}", f"train.init_weights={missing}"]) == 2
    assert f"train.init_weights: {missing} does not exist" in capsys.readouterr().err
    both = [f"train.init_weights={missing}", f"train.init_encoder={missing}"]
    assert main(COARSE, ROOT, [*argv, f"output_dir={tmp_path / 'b'}", *both]) == 2
    assert "give one start, not both" in capsys.readouterr().err
    pair = ["semi.enabled=true", f"semi.init_from={missing}", f"train.init_weights={missing}"]
    assert main(COARSE, ROOT, [*argv, f"output_dir={tmp_path / 'c'}", *pair]) == 2
    assert "semi.init_from with train.init_weights or train.init_encoder: give one start" in capsys.readouterr().err
    wrong = ROOT / "model_weights" / "fine.pt"
    assert main(COARSE, ROOT, [*argv, f"output_dir={tmp_path / 'd'}", f"train.init_weights={wrong}"]) == 2
    assert f"train.init_weights: {wrong}: a fine checkpoint, this is the coarse stage" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c", "d"))


def test_a_pair_whose_second_net_does_not_fit_leaves_the_first_as_it_was(tmp_path):
    path = _checkpoint(tmp_path / "pair.pt", nets=2)
    first, second = _nets()[0], build_network("residual_unet3d", **{**NET, "base_channels": 8})
    before = {name: value.clone() for name, value in first.state_dict().items()}
    with pytest.raises(ValueError, match="base_channels 4 vs 8"):
        warm_start([first, second], path, "coarse")
    for name, value in first.state_dict().items():
        assert torch.equal(value, before[name]), name
