"""S&D-Messenger's step: the CutMix of labeled blocks into unlabeled cases on hand-made volumes,
and a real run."""

from __future__ import annotations

import torch

from segcore.training.messenger_ssl import cutmix_blocks
from tests.segcore.training.conftest import run_tiny


def test_a_labeled_block_is_pasted_into_its_partner_inside_the_labeled_organs_box():
    images = torch.full((2, 1, 12, 12, 12), 5.0)
    labels = torch.zeros(2, 12, 12, 12, dtype=torch.long)
    labels[0, 6:9, 6:9, 6:9] = 3  # case 0's organ: its block is centred on it
    unlabeled = torch.zeros(2, 1, 12, 12, 12)
    pseudo = torch.full((2, 12, 12, 12), 7, dtype=torch.long)
    for seed in range(20):
        mixed, mixed_labels, mask = cutmix_blocks(
            images, labels, unlabeled, pseudo, 4, torch.Generator().manual_seed(seed)
        )
        assert mask.sum(dim=(1, 2, 3)).tolist() == [64, 64]  # a 4³ block each
        assert torch.equal(mixed[:, 0][mask], torch.full((128,), 5.0)) and (mixed[:, 0][~mask] == 0).all()
        assert torch.equal(mixed_labels[~mask], pseudo[~mask]) and torch.equal(mixed_labels[mask], labels[mask])
        centre = [int(index.float().mean().round()) for index in mask[0].nonzero().T]
        assert all(6 <= c <= 9 for c in centre), centre  # inside the organ's box (edges rounded)
        assert (mixed_labels[0][mask[0]] == 3).any()  # the pasted block carries the organ
    # the block never leaves the volume, even when it is larger than it
    _, _, mask = cutmix_blocks(images, labels, unlabeled, pseudo, 20, torch.Generator().manual_seed(0))
    assert mask.all()


def test_an_sd_messenger_run_learns_from_mixed_cases(tiny_store, tiny_supervised, tmp_path):
    """The real command (coarse_seg/run.sh, torchrun, one process), from a supervised net."""
    from segcore.networks.checkpoint import build_networks, load_checkpoint

    run_tiny(
        tiny_store, tmp_path / "sd", "network.arch=sd_messenger", "network.init_args.base=residual_unet3d",
        "semi.enabled=true", "semi.method=sd_messenger", "semi.networks=1", "semi.unlabeled_batch_size=2",
        "semi.cutmix_size=8", f"semi.init_from={tiny_supervised}",
    )  # fmt: skip
    payload = load_checkpoint(tmp_path / "sd" / "last.pt")
    assert [entry["arch"] for entry in payload["networks"]] == ["sd_messenger"]
    (net,) = build_networks(payload, torch.device("cpu"), verify=True)
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, *payload["inference"]["input_size"])).shape[1] == 14


def test_the_one_network_methods_refuse_a_pair_rounds_or_an_unknown_name():
    import pytest

    from segcore.training.cps import CPSConfig

    for method in ("ad_generic", "sd_messenger"):
        assert CPSConfig(method=method, networks=1).method == method
        with pytest.raises(ValueError, match="one network in one round"):
            CPSConfig(method=method)  # networks defaults to 2
        with pytest.raises(ValueError, match="one network in one round"):
            CPSConfig(method=method, networks=1, rounds=2)
    with pytest.raises(ValueError, match="semi.method='mean_teacher'"):
        CPSConfig(method="mean_teacher")


def test_out_of_range_settings_of_the_new_methods_are_refused():
    import pytest

    from segcore.training.cps import CPSConfig

    for bad in ({"ddim_steps": 1}, {"cutmix_size": 0}, {"ema_decay": 1.5}):
        with pytest.raises(ValueError, match="out of range"):
            CPSConfig(method="ad_generic", networks=1, **bad)


def test_a_wrapped_net_without_its_method_is_refused_by_the_config():
    """Refused where the config is read (so ``run.sh`` says it in one line before torchrun starts:
    test_training's ``..._stops_before_torchrun_with_one_line``), for either wrapped net."""
    import pytest

    from segcore.config import load_config
    from segcore.training.config import StageConfig
    from tests.segcore.training.conftest import ROOT

    def config(arch: str, semi: dict) -> StageConfig:
        values = load_config(ROOT / "coarse_seg" / "config.tiny.yaml")
        values["network"] = {"arch": arch, "init_args": {**values["network"]["init_args"], "base": "residual_unet3d"}}
        values["semi"] = {**values.get("semi", {}), **semi}
        return StageConfig.from_mapping(values)

    for arch, other in (("ad_generic", "sd_messenger"), ("sd_messenger", "cacps")):
        for semi in ({}, {"enabled": True, "method": other, "networks": 1}):
            with pytest.raises(ValueError, match=f"network.arch={arch} is trained by semi.method={arch}"):
                config(arch, semi)
        assert config(arch, {"enabled": True, "method": arch, "networks": 1}).network.arch == arch
