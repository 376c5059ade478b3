"""The training engine: real torchrun/Gloo runs, gradient equivalence, exact resume, learning."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from coarse_seg.train import STAGE as COARSE
from fine_seg.train import STAGE as FINE
from segcore.config import load_config
from segcore.networks import build_network
from segcore.networks.checkpoint import build_networks, load_checkpoint
from segcore.store import CaseStore
from segcore.training.cli import main
from segcore.training.losses import dice_ce_loss, hard_dice_per_class
from segcore.training.optim import autocast_settings, poly_schedule
from segcore.volumes.intensity import normalize_hu

ROOT = Path(__file__).resolve().parents[3]
TINY_NET = {"base_channels": 4, "depth": 3, "max_channels": 16}


def run_stage(stage: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ROOT / f"{stage}_seg" / "run.sh"), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_two_process_gloo_run_keeps_ranks_identical_and_checkpoint_rebuilds(stage, tiny_store, tmp_path):
    out = tmp_path / stage
    result = run_stage(
        stage, "--nproc", "2", "--config", str(ROOT / f"{stage}_seg" / "config.tiny.yaml"),
        f"store={tiny_store}", f"output_dir={out}", "train.epochs=2", "train.val_every=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 process(es) on cpu" in result.stdout

    last = load_checkpoint(out / "last.pt")
    state = last["training_state"]
    store = CaseStore(tiny_store)
    train_ids, _ = store.fold(0)
    assert state["step"] == 2 * (len(train_ids) // 2 // 2)  # 2 epochs of (cases per rank // batch 2) steps
    digests = state["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # rank 1 holds exactly rank 0's weights

    # The checkpoint alone rebuilds the net: same outputs on the input recorded at save time.
    for name in ("last.pt", "best.pt"):
        payload = load_checkpoint(out / name)
        assert payload["stage"] == stage
        (net,) = build_networks(payload, verify=True)
        assert payload["networks"][0]["init_args"] == net.init_args
    assert (out / "metrics.jsonl").read_text().count("\n") == 2  # validated after both epochs


def _ddp_gradients(rank, world_size, init_file, images, labels, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    net = DistributedDataParallel(build_network("residual_unet3d", **TINY_NET))
    dice_ce_loss(net(images[rank : rank + 1]), labels[rank : rank + 1]).backward()
    if rank == 0:
        torch.save({name: p.grad for name, p in net.module.named_parameters()}, out)
    # Both ranks done, then out without tearing Gloo down: its teardown (destroy_process_group, or
    # the interpreter's exit with Gloo's threads alive) aborts now and then with "terminate called
    # without an active exception", even after a barrier (1 run in 5 of this suite on a loaded
    # 2-core machine). os._exit skips the C++ destructors; rank 0's file is closed already.
    dist.barrier()
    os._exit(0)


@pytest.mark.parametrize(
    "override, reason",
    [
        ("store={tmp}/missing.lmdb", "{tmp}/missing.lmdb: no case store here (run data_prepare first)"),
        ("optimizer.grad_clp=1", "bad config: override 'optimizer.grad_clp=1'"),
        ("semi.enabled=true semi.init_from={tmp}/pair.pt", "semi.init_from: {tmp}/pair.pt does not exist"),
        (
            "network.arch=sd_messenger",
            "bad config: {config}: network.arch=sd_messenger is trained by semi.method=sd_messenger",
        ),
    ],
)
def test_a_two_process_run_with_a_mistake_stops_before_torchrun_with_one_line(override, reason, tiny_store, tmp_path):
    overrides = [f"store={tiny_store}", f"output_dir={tmp_path / 'run'}", *override.format(tmp=tmp_path).split()]
    result = run_stage("coarse", "--nproc", "2", "--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"), *overrides)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    reason = reason.format(tmp=tmp_path, config=ROOT / "coarse_seg" / "config.tiny.yaml")
    assert len(lines) == 1 and lines[0].startswith(f"coarse_seg: {reason}"), result.stderr
    assert not (tmp_path / "run").exists()


def test_two_processes_of_batch_one_give_the_gradient_of_one_process_of_batch_two(tmp_path):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn((2, 1, 16, 16, 16), generator=generator)
    labels = torch.randint(0, 14, (2, 16, 16, 16), generator=generator)
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_gradients, args=(2, tmp_path / "init", images, labels, out), nprocs=2, join=True)
    distributed = torch.load(out)

    torch.manual_seed(0)
    net = build_network("residual_unet3d", **TINY_NET)
    dice_ce_loss(net(images), labels).backward()
    for name, parameter in net.named_parameters():
        torch.testing.assert_close(distributed[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)


def train(tiny_store, out, *overrides, resume=False, name="last.pt"):
    argv = ["--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"), "--device", "cpu"]
    argv += ["--resume"] if resume else []
    argv += [f"store={tiny_store}", f"output_dir={out}", "train.epochs=3", "train.val_every=2", *overrides]
    assert main(COARSE, ROOT / "coarse_seg" / "config.tiny.yaml", argv) == 0
    return load_checkpoint(out / name)


@pytest.mark.parametrize(
    "semi", [[], ["semi.enabled=true", "semi.unlabeled_batch_size=1"]], ids=["supervised", "semi_default_cacps"]
)
def test_resume_continues_at_the_saved_step_lr_and_optimizer_state(semi, tiny_store, tmp_path):
    # train.max_steps stands in for an interruption: under poly the plan (train.epochs) stays the
    # same; a wsd run's plan is train.max_steps itself, so stopping early this way would change it.
    semi = [*semi, "optimizer.schedule=poly"]
    straight = train(tiny_store, tmp_path / "straight", *semi)
    total = straight["training_state"]["step"]
    steps_per_epoch = total // 3
    stop = steps_per_epoch + 1  # mid-epoch: the resumed sampler must skip what this epoch already used
    assert steps_per_epoch > 1

    first = train(tiny_store, tmp_path / "resumed", f"train.max_steps={stop}", *semi)
    state = first["training_state"]
    assert state["step"] == stop
    lr = state["schedulers"][0]["_last_lr"][0]
    warmup = first["config"]["optimizer"]["warmup_steps"]
    assert lr == pytest.approx(first["config"]["optimizer"]["lr"] * poly_schedule(total, warmup)(stop))
    assert all(s["step"] == stop for s in state["optimizers"][0]["state"].values())

    resumed = train(tiny_store, tmp_path / "resumed", *semi, resume=True)
    assert resumed["training_state"]["step"] == total
    assert all(s["step"] == total for s in resumed["training_state"]["optimizers"][0]["state"].values())
    assert len(resumed["networks"]) == len(straight["networks"]) == (2 if len(semi) > 1 else 1)
    for resumed_net, straight_net in zip(resumed["networks"], straight["networks"]):
        for name, expected in straight_net["state_dict"].items():
            torch.testing.assert_close(resumed_net["state_dict"][name], expected, msg=name)


def test_deeply_supervised_wsd_run_cools_down_to_zero_and_logs_its_training_time(tiny_store, tmp_path):
    out = tmp_path / "run"
    overrides = ["optimizer.schedule=wsd", "optimizer.decay_share=0.5", "network.init_args.deep_supervision=true"]
    payload = train(tiny_store, out, *overrides)
    state = payload["training_state"]
    assert state["schedulers"][0]["_last_lr"][0] == 0.0  # the cool-down ends at the run's last step
    assert payload["networks"][0]["init_args"]["deep_supervision"] is True
    assert any(key.startswith("auxiliary_heads.") for key in payload["networks"][0]["state_dict"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [record["train_seconds"] for record in records]
    assert seconds == sorted(seconds) and 0 < seconds[-1] <= round(state["train_seconds"], 2)  # records round to 0.01 s
    assert all(len(record["load_average"]) == 3 for record in records)


def test_confidence_aware_cps_with_fourier_mixing_trains_and_logs_its_confidence(tiny_store, tmp_path):
    semi = [
        "semi.enabled=true", "semi.unlabeled_batch_size=1", "semi.weak_strong=true", "semi.fourier_confidence=true",
        "semi.pseudo_dice=0.5", "augment.fourier_sources=all", "augment.fourier_probability=1.0",
    ]  # fmt: skip
    payload = train(tiny_store, tmp_path / "cacps", *semi)
    assert payload["training_state"]["finished"] and len(payload["networks"]) == 2
    logged = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", TENSORBOARD_TAGS, str(tmp_path / "cacps" / "tensorboard")],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "train/confidence/net0" in logged and "train/cps/net1" in logged


TENSORBOARD_TAGS = """
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1]); events.Reload(); print(" ".join(events.Tags()["scalars"]))
"""


def test_init_from_starts_both_nets_from_a_pairs_checkpoint(tiny_store, tmp_path):
    pair = train(tiny_store, tmp_path / "pair", "semi.enabled=true", "semi.weight=0", "train.epochs=1")
    # With a zero learning rate the nets cannot move: what comes out is what went in.
    started = train(
        tiny_store, tmp_path / "started", "semi.enabled=true", "semi.unlabeled_batch_size=1", "train.epochs=1",
        "optimizer.lr=0.0", f"semi.init_from={tmp_path / 'pair' / 'last.pt'}",
    )  # fmt: skip
    for mine, source in zip(started["networks"], pair["networks"]):
        for name, value in source["state_dict"].items():
            torch.testing.assert_close(mine["state_dict"][name], value, msg=name)
    assert not torch.equal(
        started["networks"][0]["state_dict"]["stem.0.weight"], started["networks"][1]["state_dict"]["stem.0.weight"]
    )


def test_fine_stage_cps_refuses_unlabeled_crops_from_the_body_outline(tiny_store, tmp_path, capsys):
    # The tiny store was prepared without --coarse-weights: its unlabeled fine crops are whole bodies.
    argv = [
        "--config", str(ROOT / "fine_seg" / "config.tiny.yaml"), "--device", "cpu", f"store={tiny_store}",
        "train.epochs=1", "semi.enabled=true", "semi.unlabeled_batch_size=1",
    ]  # fmt: skip
    assert main(FINE, ROOT, [*argv, f"output_dir={tmp_path / 'refused'}"]) == 1
    error = capsys.readouterr().err
    assert "body outline" in error and "--coarse-weights" in error and str(tiny_store) in error
    assert main(FINE, ROOT, [*argv, f"output_dir={tmp_path / 'allowed'}", "semi.allow_body_crops=true"]) == 0


def test_fresh_run_refuses_to_overwrite_and_resume_needs_a_run(tiny_store, tmp_path, capsys):
    argv = ["--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"), f"store={tiny_store}"]
    assert main(COARSE, ROOT, [*argv, f"output_dir={tmp_path}", "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "last.pt").write_bytes(b"")
    assert main(COARSE, ROOT, [*argv, f"output_dir={tmp_path}"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_tiny_network_overfits_one_phantom(tiny_store):
    """Loss, labels and orientation fit together: one case is learned to Dice > 0.9.

    The coarse volume (32^3, every organ present, the adrenals in 4 and 6 voxels): 3.4x fewer voxels
    than the fine crop for about the same number of steps (275 against 250 at 48^3 on one CPU)."""
    store = CaseStore(tiny_store)
    arrays = store.arrays(store.ids("labeled")[0])
    image = normalize_hu(torch.from_numpy(np.array(arrays["coarse_image"])).float()[None, None], (-325, 325))
    labels = torch.from_numpy(np.array(arrays["coarse_label"])).long()[None]
    present = torch.unique(labels)[1:] - 1
    assert len(present) == 13

    torch.manual_seed(0)
    net = build_network("residual_unet3d", base_channels=8, depth=3, max_channels=32)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for step in range(1, 401):
        loss = dice_ce_loss(net(image), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            with torch.no_grad():
                dice = hard_dice_per_class(net(image).argmax(1), labels, 14)[0][present]
            if dice.mean() > 0.9 and dice.min() > 0.5:
                break
    assert dice.mean() > 0.9 and dice.min() > 0.5, f"step {step}: Dice per organ {dice.numpy().round(3)}"


def test_amp_settings_per_device_including_yaml_off(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_settings("auto", cpu) == (None, False)
    assert autocast_settings("auto", cuda) == (torch.float16, True)
    assert autocast_settings("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        autocast_settings("fp16", cpu)
    config = tmp_path / "c.yaml"
    config.write_text("train: {amp: auto}\n")
    off = load_config(config, ["train.amp=off"])["train"]["amp"]  # YAML 1.1 reads it as False
    assert autocast_settings(off, cuda) == (None, False)


@pytest.mark.parametrize(
    "layout, deep", [("channels_last", "false"), ("channels_last", "true"), ("compile", "false")]
)  # compile with deep supervision is refused by the config (test_compile_with_deep_supervision_is_refused)
def test_channels_last_and_compiled_nets_train_like_the_plain_ones(layout, deep, tiny_store, tmp_path, monkeypatch):
    """The GPU speed switches, forced on the CPU: same weights (up to float order), plain checkpoints.

    With SGD: AdamW's first steps move each weight by about the rate times the sign of its gradient,
    so a gradient that float order tips across zero moves a weight by twice the rate (seen for the
    compiled net on one CPU); SGD's steps are proportional to the gradients, float order stays small.

    Compiled with dynamo's ``aot_eager`` backend: the wrapper, the traced graph and autograd through
    it are the run's own, only inductor's code generation is left out (PyTorch's part, and 2-3 min
    of a cold CPU for this net, where the rest of the test takes seconds)."""
    if layout == "compile":
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    switch = "train.channels_last=true" if layout == "channels_last" else "train.compile=true"
    common = ["train.epochs=1", "train.channels_last=false", f"network.init_args.deep_supervision={deep}",
              "optimizer.name=sgd"]  # fmt: skip
    plain = train(tiny_store, tmp_path / "plain", *common)
    fast = train(tiny_store, tmp_path / layout, *common, switch)
    assert fast["networks"][0]["state_dict"].keys() == plain["networks"][0]["state_dict"].keys()  # no wrapper prefix
    for name, value in plain["networks"][0]["state_dict"].items():
        torch.testing.assert_close(fast["networks"][0]["state_dict"][name], value, rtol=1e-3, atol=1e-4, msg=name)
    build_networks(fast, verify=True)


def test_compile_with_deep_supervision_is_refused(tiny_store, tmp_path, capsys):
    argv = ["--config", str(ROOT / "coarse_seg" / "config.tiny.yaml"), "--device", "cpu"]
    argv += [f"store={tiny_store}", f"output_dir={tmp_path}", "train.compile=true"]
    assert main(COARSE, ROOT / "coarse_seg" / "config.tiny.yaml", argv) == 2
    assert "deep_supervision" in capsys.readouterr().err


def test_loader_workers_read_a_store_the_trainer_already_opened(tiny_store):
    """The production configs use data.workers: 2, and the trainer opens the store before its loader starts."""
    from segcore.training.data import StoreDataset, make_loader

    store = CaseStore(tiny_store)
    ids = store.ids("labeled")  # opens the environment in this process
    loader = make_loader(StoreDataset(store, ids, "coarse_image", "coarse_label"), 2, 0, 1, 0, 2, pin=False)
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert sum(batch["image"].shape[0] for batch in batches) == len(loader.sampler)
    assert sorted(i for batch in batches for i in batch["index"].tolist()) == sorted(loader.sampler)
    store.close()


def test_a_supervised_pair_needs_no_unlabeled_cases(tiny_store, tmp_path):
    # weight 0 with amplitude sources from the labeled batch never draws an unlabeled batch, so a
    # store (or a named selection) without unlabeled cases must not stop it: the upper-bound pair
    payload = train(
        tiny_store, tmp_path / "pair", "semi.enabled=true", "semi.weight=0", "semi.unlabeled_split=no_such_selection"
    )  # fmt: skip
    assert payload["training_state"]["finished"] and len(payload["networks"]) == 2


def test_keep_steps_keeps_a_copy_of_the_first_checkpoint_at_or_past_each_step(tiny_store, tmp_path):
    out = tmp_path / "run"
    final = train(tiny_store, out, "train.keep_steps=[3]")
    steps_per_epoch = final["training_state"]["step"] // 3
    kept = load_checkpoint(out / "step3.pt")["training_state"]["step"]
    assert 3 <= kept < 3 + steps_per_epoch and kept % steps_per_epoch == 0
    assert sorted(p.name for p in out.glob("step*.pt")) == ["step3.pt"]


def test_continued_rounds_carry_one_schedule_and_the_optimisers_across_uif(tiny_store, tmp_path):
    semi = ["semi.enabled=true", "semi.unlabeled_batch_size=1", "semi.rounds=2", "semi.uif_keep=2"]
    wsd = ["optimizer.schedule=wsd", "optimizer.decay_share=0.5", "optimizer.warmup_steps=0", "train.epochs=4"]
    out = tmp_path / "continued"
    final = train(tiny_store, out, *semi, *wsd, "semi.round_init=continue", name="round1/last.pt")
    total = final["training_state"]["step"]
    half = load_checkpoint(out / "round0" / "last.pt")["training_state"]
    assert half["step"] == total // 2 and not half["finished"]
    lr = final["config"]["optimizer"]["lr"]
    # round 0 stops half-way through the one schedule: still at the full rate, not cooled down
    assert half["schedulers"][0]["_last_lr"][0] == pytest.approx(lr)
    state = final["training_state"]
    assert state["schedulers"][0]["_last_lr"][0] == 0.0 and state["finished"]
    # the optimisers went on: Adam's step count is the run's, not the second round's
    assert all(s["step"] == total for s in state["optimizers"][0]["state"].values())
    assert (out / "round0" / "uif.csv").exists()
