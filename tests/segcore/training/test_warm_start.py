"""``train.init_weights``: a run's nets start from a trained model, the layers it lacks fresh."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from coarse_seg.train import STAGE as COARSE
from segcore.inference.predictor import Predictor
from segcore.inference.stage import Stopwatch
from segcore.networks import build_network
from segcore.networks.checkpoint import LEGACY_INIT_ARGS, load_checkpoint, network_entry, save_checkpoint
from segcore.phantom import write_dataset
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


RESIDUAL = ["network.init_args.residual_output=true"]


def test_a_residual_run_started_from_a_half_resolution_model_answers_as_it_did_at_step_zero(
    tiny_store, tmp_path, capsys
):
    half = train(tiny_store, tmp_path / "half", *HALF, "train.epochs=1")
    capsys.readouterr()
    started = train(
        tiny_store, tmp_path / "started", *RESIDUAL, "train.epochs=1", "optimizer.lr=0.0",
        f"train.init_weights={tmp_path / 'half' / 'best.pt'}",
    )  # fmt: skip
    fresh = capsys.readouterr().out.split("fresh: ")[1].splitlines()[0]
    assert fresh == "auxiliary_heads, full_resolution, head"  # level 1's head; level 0's is the shipped one
    source, entry = half["networks"][0], started["networks"][0]
    assert entry["init_args"]["residual_output"] is True
    assert torch.equal(entry["state_dict"]["half_resolution_head.weight"], source["state_dict"]["head.weight"])
    assert not entry["state_dict"]["head.weight"].any() and not entry["state_dict"]["head.bias"].any()
    old = build_network(source["arch"], **source["init_args"]).eval()
    old.load_state_dict(source["state_dict"])
    new = build_network(entry["arch"], **entry["init_args"]).eval()
    new.load_state_dict(entry["state_dict"])
    image = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, (logits, level0, *_) = old(image), new(image, auxiliary=True)
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(level0, old(image, half_resolution=True), rtol=0, atol=1e-6)


def test_a_residual_net_trains_its_correction_from_zero():
    torch.manual_seed(0)
    net = build_network("residual_unet3d", **NET, output_stride=1, deep_supervision=True, residual_output=True)
    assert not net.head.weight.any() and not net.head.bias.any()
    outputs = net(torch.randn(1, 1, 16, 16, 16), auxiliary=True)
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]  # main, level 0, level 1
    sum(output.square().mean() for output in outputs).backward()
    assert net.head.weight.grad.abs().sum() > 0, "the zero correction must get a gradient, or it never leaves zero"
    with pytest.raises(ValueError, match="residual_output .* needs output_stride 1"):
        build_network("residual_unet3d", **NET, output_stride=2, residual_output=True)


SHIPPED = ROOT / "model_weights"


def _half_and_residual(stage: str, folder) -> tuple[dict, dict]:
    """A trained half-resolution model (the shipped ``stage`` net's body and level-0 head, as a
    ``output_stride`` 2 net), and the same model started in a full-resolution net with a zero
    correction (``residual_output``) as ``train.init_weights`` starts a run."""
    shipped = load_checkpoint(SHIPPED / f"{stage}.pt")
    entry, size = shipped["networks"][0], shipped["inference"]["input_size"]
    arguments = {**LEGACY_INIT_ARGS, **entry["init_args"], "residual_output": False}
    half_net = build_network(entry["arch"], **{**arguments, "output_stride": 2, "deep_supervision": False})
    warm_start([half_net], SHIPPED / f"{stage}.pt", stage)
    half = {**shipped, "networks": [network_entry(half_net, size)]}
    save_checkpoint(folder / f"{stage}_half.pt", half)
    residual = {"output_stride": 1, "full_resolution_channels": 8, "deep_supervision": True, "residual_output": True}
    net = build_network(entry["arch"], **{**arguments, **residual})
    assert "half_resolution_head.weight" not in warm_start([net], folder / f"{stage}_half.pt", stage)
    return half, {**shipped, "networks": [network_entry(net, size)]}


def test_a_trained_half_resolution_model_in_a_residual_net_labels_a_phantom_as_it_does(tmp_path):
    """A candidate started from a trained half-resolution model loses nothing at step 0: on a
    phantom its labels are that model's voxel for voxel and each stage's probabilities agree to 1e-5."""
    write_dataset(tmp_path, labeled=0, unlabeled=0, val=1, size="small", seed=4242, progress=False)
    (image_path,) = (tmp_path / "val_images").glob("*_0000.nii.gz")
    (coarse, coarse_residual), (fine, fine_residual) = (
        _half_and_residual(stage, tmp_path) for stage in ("coarse", "fine")
    )
    half = Predictor(coarse, fine, "cpu", "fp32", verify=True)
    candidate = Predictor(coarse_residual, fine_residual, "cpu", "fp32", verify=True)
    assert all(net.output_stride == 1 for net in candidate.locator.model.nets + candidate.fine.nets)
    expected, got = half.predict_file(image_path)[0], candidate.predict_file(image_path)[0]
    # A comparison over nearly every organ (the shipped nets' level-0 head alone may miss a small one).
    assert len(np.unique(expected.labels)) >= 13, "the phantom's labels must hold at least 12 organs"
    np.testing.assert_array_equal(got.labels, expected.labels)
    volume = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).astype(np.float32))
    watch = Stopwatch(torch.device("cpu"))
    for old, new in ((half.locator.model, candidate.locator.model), (half.fine, candidate.fine)):
        with torch.inference_mode():
            torch.testing.assert_close(
                new.probabilities(volume, watch), old.probabilities(volume, watch), rtol=0, atol=1e-5
            )
