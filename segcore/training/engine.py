"""The training loop over named hooks, shared by the coarse and fine stages.

Launch (one process per GPU, or CPU processes with Gloo)::

    torchrun --nproc-per-node 2 -m coarse_seg.train --config coarse_seg/config.yaml [key=value ...]

The loop is the short :meth:`Trainer.fit`; what a step does lives in a step object
(:class:`SupervisedStep` here, the cross-pseudo-supervision step in
:mod:`segcore.training.cps`), so semi-supervised training changes only the step.
Rank 0 alone logs (console bar, TensorBoard, ``metrics.jsonl``) and writes checkpoints:
``last.pt`` (everything ``--resume`` needs) and ``best.pt`` (the best validation Dice, for
inference).

The module is over 400 lines on purpose: :class:`Trainer` is the loop's whole state (nets,
optimisers, schedules, scalers, loaders, random streams, step), which ``--resume`` must save and
restore together; the optimisers and schedules are in :mod:`segcore.training.optim`.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segcore.labels import NUM_CLASSES, ORGANS
from segcore.networks import AggregatingDecouplingNet, MessengerNet, build_network
from segcore.networks.checkpoint import (
    load_checkpoint,
    make_payload,
    network_entry,
    save_checkpoint,
    unwrap,
    weights_digest,
)
from segcore.runtime import distributed
from segcore.store import CaseStore
from segcore.training.augment import AugmentConfig, augment_views, random_fourier_mix
from segcore.training.config import StageConfig
from segcore.training.cps import CPSStep
from segcore.training.data import StoreDataset, make_loader
from segcore.training.generic_ssl import AggregatingDecouplingStep
from segcore.training.losses import deep_supervision_loss, dice_ce_loss, hard_dice_per_class
from segcore.training.messenger_ssl import SemanticDomainStep
from segcore.training.optim import autocast_settings, lr_schedule, make_optimizer, use_channels_last
from segcore.training.warm_start import warm_start
from segcore.volumes.intensity import normalize_hu


@dataclass(frozen=True)
class Stage:
    """What differs between the coarse and the fine stage: which stored arrays they read."""

    name: str
    image_key: str
    label_key: str


@dataclass
class Member:
    """One trained network with its optimizer, schedule and gradient scaler."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    @property
    def module(self) -> nn.Module:
        """The plain network (no DDP or compile wrapper): weights, checkpoints, no-grad passes."""
        return unwrap(self.net)


class TrainingStep(Protocol):
    """What the engine calls once per labeled batch: :class:`SupervisedStep` or
    :class:`segcore.training.cps.CPSStep`."""

    def __call__(self, trainer: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Update every member of ``trainer`` from one labeled ``batch``; returns the values to log."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` keeps for ``--resume`` (e.g. where the unlabeled stream stands)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`state_dict`'s ``state``."""
        ...


class SupervisedStep:
    """One optimisation step of every member on a labeled batch: Dice + cross-entropy
    (Fourier amplitude sources: the labeled batch itself)."""

    def __call__(self, trainer: Trainer, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        images, labels = trainer.prepare_batch(batch, with_labels=True)
        images = random_fourier_mix(images, images, trainer.augment, trainer.generator)
        return trainer.supervised_updates(images, labels)

    def state_dict(self) -> dict[str, Any]:
        return {}  # the labeled loader's place is the trainer's

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class Trainer:
    """Holds the nets, the data and the loop state; :meth:`fit` runs the loop.

    ``stop_share`` < 1 stops :meth:`fit` after that share of the run's steps, with the schedule of
    the whole run (a round that another one continues: ``semi.round_init=continue``).
    """

    config: StageConfig
    stage: Stage
    context: distributed.DistributedContext
    stop_share: float = 1.0

    def __post_init__(self) -> None:
        config, context = self.config, self.context
        train_cfg = config.train
        torch.manual_seed(train_cfg.seed)
        self.input_size = list(config.input_size)
        self.semi = config.semi
        self.augment = config.augment
        self.hu_window = tuple(config.data.hu_window)
        self.generator = torch.Generator().manual_seed(train_cfg.seed * 1000 + context.rank)
        self.amp_dtype, use_scaler = autocast_settings(train_cfg.amp, context.device)
        self.channels_last = use_channels_last(train_cfg.channels_last, context.device)
        self.output_dir = Path(config.output_dir)

        self.store = CaseStore(config.store)
        train_ids, self.val_ids = self.store.fold(config.fold)
        if not train_ids:
            raise ValueError(f"{config.store}: fold {config.fold} leaves no training cases")
        data_cfg = config.data
        dataset = StoreDataset(self.store, train_ids, self.stage.image_key, self.stage.label_key)
        self.loader = make_loader(
            dataset, data_cfg.batch_size, context.rank, context.world_size, train_cfg.seed,
            data_cfg.workers, pin=context.device.type == "cuda",
        )  # fmt: skip
        self.steps_per_epoch = len(self.loader)
        self.total_steps = train_cfg.epochs * self.steps_per_epoch
        self.max_steps = min(self.total_steps, train_cfg.max_steps or self.total_steps)
        self.stop_step = round(self.max_steps * self.stop_share)

        self.members = [self._make_member(i, use_scaler) for i in range(self.network_count())]
        if self.semi.enabled and self.semi.init_from:
            self.load_weights(Path(self.semi.init_from))
        if train_cfg.init_encoder:
            from segcore.training.pretrain import load_encoder

            for member in self.members:
                load_encoder(member.module, Path(train_cfg.init_encoder))
        if train_cfg.init_weights:
            fresh = warm_start([member.module for member in self.members], train_cfg.init_weights, self.stage.name)
            if context.is_main:
                print(f"{self.stage.name}_seg: nets start from {train_cfg.init_weights}; fresh: "
                      f"{', '.join(sorted({name.split('.')[0] for name in fresh})) or 'none'}", flush=True)  # fmt: skip
        self.step, self.best_dice, self.history, self.finished = 0, -math.inf, [], False
        self.train_seconds = 0.0
        """Wall time spent in training steps (data, augmentation, passes, updates) so far, resumes
        included; validation and checkpoints are not counted: the x axis of time-to-accuracy curves."""
        self.step_fn: TrainingStep = SupervisedStep()
        if self.semi.enabled:
            methods = {step.method: step for step in (AggregatingDecouplingStep, SemanticDomainStep)}
            self.step_fn = methods.get(self.semi.method, CPSStep)(self, self.semi)
        self.tensorboard = None
        if context.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.output_dir / "tensorboard"))

    def network_count(self) -> int:
        return self.semi.networks if self.semi.enabled else 1

    def unlabeled_ids(self) -> list[str]:
        """The unlabeled cases CPS learns from: the ``unlabeled`` split or a named (UIF) selection."""
        name = self.semi.unlabeled_split
        return self.store.ids("unlabeled") if name == "unlabeled" else self.store.selection(name)

    def _make_member(self, index: int, use_scaler: bool) -> Member:
        net_cfg = self.config.network
        # Differently seeded initialisations (cross pseudo supervision needs two distinct nets).
        torch.manual_seed(self.config.train.seed + 7919 * index)
        net = build_network(net_cfg.arch, **net_cfg.init_args).to(self.context.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        if self.context.distributed:
            device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=device_ids)
        if self.config.train.compile:
            net = torch.compile(net)
        optimizer = make_optimizer(net.parameters(), self.config.optimizer)
        schedule = lr_schedule(self.config.optimizer, self.total_steps, self.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return Member(net, optimizer, scheduler, torch.amp.GradScaler(self.context.device.type, enabled=use_scaler))

    # -- helpers used by steps --------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.context.device.type, dtype=self.amp_dtype)

    def run(self, net: nn.Module, images: torch.Tensor, auxiliary: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Logits of ``net`` on a prepared batch, in the memory format and autocast of this run;
        with ``auxiliary`` the list of every output of a deeply supervised net (main first)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        with self.autocast():
            return net(images, auxiliary=True) if auxiliary else net(images)

    def supervised_loss_of(self, member: Member, outputs, labels: torch.Tensor) -> torch.Tensor:
        """Dice + cross-entropy of outputs from :meth:`run` with ``auxiliary=self.deep(member)``."""
        return deep_supervision_loss(outputs, labels) if self.deep(member) else dice_ce_loss(outputs, labels)

    @staticmethod
    def deep(member: Member) -> bool:
        """Whether the member's net has auxiliary heads (every one of them must get a gradient: DDP)."""
        return bool(member.module.auxiliary_levels)

    def _augmented(self, batch: dict[str, torch.Tensor], with_labels: bool, augment: bool):
        """Weak and strong HU views (one geometry) and labels of a batch, on the device, at input size."""
        device = self.context.device
        images = batch["image"].to(device, non_blocking=True).float()
        labels = batch["label"].to(device, non_blocking=True).long() if with_labels else None
        config = self.augment if augment else AugmentConfig(enabled=False)
        return augment_views(images, labels, self.input_size, config, self.generator, self.hu_window)

    def prepare_views(self, batch: dict[str, torch.Tensor], with_labels: bool, augment: bool = True):
        """Move to the device, augment at input size, window and z-score: ``(weak, strong, labels)``
        (one geometry; the strong view adds the intensity augmentation)."""
        weak, strong, labels = self._augmented(batch, with_labels, augment)
        return normalize_hu(weak, self.hu_window), normalize_hu(strong, self.hu_window), labels

    def prepare_batch(self, batch: dict[str, torch.Tensor], with_labels: bool, augment: bool = True):
        """The strong view and labels of :meth:`prepare_views` (the weak one is not normalised)."""
        _, strong, labels = self._augmented(batch, with_labels, augment)
        return normalize_hu(strong, self.hu_window), labels

    def supervised_loss(self, member: Member, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Dice + cross-entropy of one member on a prepared labeled batch; over every output
        (:func:`segcore.training.losses.deep_supervision_loss`) when its net has auxiliary heads."""
        return self.supervised_loss_of(member, self.run(member.net, images, self.deep(member)), labels)

    def supervised_updates(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One supervised step (:meth:`supervised_loss`) of every member on a prepared labeled batch."""
        logs = {}
        for i, member in enumerate(self.members):
            loss = self.supervised_loss(member, images, labels)
            self.optimize(member, loss)
            logs[f"loss/net{i}"] = loss.item()
        return logs

    def optimize(self, member: Member, loss: torch.Tensor) -> None:
        member.optimizer.zero_grad(set_to_none=True)
        member.scaler.scale(loss).backward()
        if self.config.optimizer.grad_clip:
            member.scaler.unscale_(member.optimizer)
            nn.utils.clip_grad_norm_(member.net.parameters(), self.config.optimizer.grad_clip)
        member.scaler.step(member.optimizer)
        member.scaler.update()
        member.scheduler.step()

    # -- hooks ---------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until ``train.epochs`` (or ``train.max_steps``, or the ``stop_share``), validating
        every ``val_every`` epochs."""
        max_steps, stop_step = self.max_steps, self.stop_step
        self.saved_step = self.step
        start_epoch, skip = divmod(self.step, self.steps_per_epoch)
        for epoch in range(start_epoch, self.config.train.epochs):
            if self.step >= stop_step:
                break
            self.loader.sampler.set_epoch(epoch, start=skip * self.config.data.batch_size)
            skip = 0
            bar = tqdm(
                self.loader, desc=f"{self.stage.name} epoch {epoch}", disable=not self.context.is_main, leave=False
            )
            started = time.perf_counter()
            for batch in bar:
                for member in self.members:
                    member.net.train()
                logs = self.step_fn(self, batch)
                self.step += 1
                self.on_step_end(logs, bar)
                if self.step >= stop_step:
                    break
            bar.close()
            self.train_seconds += time.perf_counter() - started
            if self.step == (epoch + 1) * self.steps_per_epoch:  # a whole epoch, not one cut by max_steps
                self.on_epoch_end(epoch)
            self.finished = self.step >= max_steps or epoch + 1 == self.config.train.epochs
            self.save_last()

    def on_step_end(self, logs: dict[str, float], bar) -> None:
        if self.context.is_main:
            logs = {**logs, "lr": self.members[0].scheduler.get_last_lr()[0]}
            bar.set_postfix({k.replace("/", "_"): f"{v:.4g}" for k, v in logs.items()})
            for key, value in logs.items():
                self.tensorboard.add_scalar(f"train/{key}", value, self.step)

    def on_epoch_end(self, epoch: int) -> None:
        val_every = self.config.train.val_every
        if (epoch + 1) % val_every == 0 or epoch + 1 == self.config.train.epochs:
            metrics = self.validate()
            self.log_validation(epoch, metrics)

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Per-organ Dice on this fold's held-out cases, each net and their average; ranks share the cases."""
        if not self.val_ids:
            return {}
        for member in self.members:
            member.net.eval()
        variants = [f"net{i}" for i in range(len(self.members))] + (["ensemble"] if len(self.members) > 1 else [])
        sums = torch.zeros(len(variants), NUM_CLASSES - 1, dtype=torch.float64)
        counts = torch.zeros_like(sums)
        my_ids = self.val_ids[self.context.rank :: self.context.world_size]
        dataset = StoreDataset(self.store, self.val_ids, self.stage.image_key, self.stage.label_key)
        for case_id in my_ids:
            item = dataset[self.val_ids.index(case_id)]
            batch = {"image": item["image"][None], "label": item["label"][None]}
            images, labels = self.prepare_batch(batch, with_labels=True, augment=False)
            probabilities = [torch.softmax(self.run(m.module, images).float(), dim=1) for m in self.members]
            predictions = [p.argmax(1) for p in probabilities]
            if len(self.members) > 1:
                predictions.append(torch.stack(probabilities).mean(0).argmax(1))
            for v, prediction in enumerate(predictions):
                dice = hard_dice_per_class(prediction, labels, NUM_CLASSES)[0].cpu().double()
                present = ~torch.isnan(dice)
                sums[v][present] += dice[present]
                counts[v][present] += 1
        distributed.all_reduce_sum(sums)
        distributed.all_reduce_sum(counts)
        per_organ = (sums / counts.clamp_min(1)).where(counts > 0, torch.full_like(sums, float("nan")))
        result = {}
        for v, name in enumerate(variants):
            values = per_organ[v]
            result[name] = {
                "mean_dice": float(np.nanmean(values.numpy())) if (counts[v] > 0).any() else float("nan"),
                "dice": {ORGANS[o + 1]: float(values[o]) for o in range(NUM_CLASSES - 1)},
            }
        return result

    def log_validation(self, epoch: int, metrics: dict[str, Any]) -> None:
        if not metrics:
            return
        best_variant = max(metrics, key=lambda name: metrics[name]["mean_dice"])
        score = metrics[best_variant]["mean_dice"]
        if self.context.is_main:
            summary = ", ".join(f"{name} {m['mean_dice']:.4f}" for name, m in metrics.items())
            tqdm.write(f"{self.stage.name} epoch {epoch} step {self.step}: validation mean Dice {summary}")
            for name, m in metrics.items():
                self.tensorboard.add_scalar(f"val/{name}/mean_dice", m["mean_dice"], self.step)
                for organ, value in m["dice"].items():
                    self.tensorboard.add_scalar(f"val/{name}/{organ}", value, self.step)
            record = {
                "epoch": epoch, "step": self.step, "time": time.time(), "train_seconds": round(self.train_seconds, 2),
                "load_average": list(os.getloadavg()), **metrics,
            }  # fmt: skip
            with (self.output_dir / "metrics.jsonl").open("a") as stream:
                stream.write(json.dumps(record) + "\n")
        if score > self.best_dice:
            self.best_dice = score
            self.save_best(best_variant, metrics)

    # -- checkpoints ---------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return make_payload(
            self.stage.name,
            [network_entry(member.net, self.input_size) for member in self.members],
            self.input_size,
            self.config.data.hu_window,
            self.config.as_dict(),
        )

    def save_best(self, variant: str, metrics: dict[str, Any]) -> None:
        if not self.context.is_main:
            return
        payload = self._payload()
        if variant != "ensemble":  # keep only the better net when it beats the average of both
            index = int(variant.removeprefix("net"))
            payload["networks"] = [payload["networks"][index]]
            payload["inference"]["ensemble"] = [0]
        payload["metrics"] = {"step": self.step, "variant": variant, **metrics}
        save_checkpoint(self.output_dir / "best.pt", payload)

    def save_last(self) -> None:
        # Every rank's augmentation stream, and a digest of every rank's weights (they must agree).
        generators = distributed.gather_objects(self.generator.get_state())
        digests = distributed.gather_objects([weights_digest(m.net) for m in self.members])
        if not self.context.is_main:
            return
        payload = self._payload()
        payload["training_state"] = {
            "step": self.step,
            "finished": self.finished,
            "best_dice": self.best_dice,
            "train_seconds": self.train_seconds,
            "optimizers": [m.optimizer.state_dict() for m in self.members],
            "schedulers": [m.scheduler.state_dict() for m in self.members],
            "scalers": [m.scaler.state_dict() for m in self.members],
            "generators": generators,
            "rank_weight_digests": digests,
            "step_fn": self.step_fn.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint(self.output_dir / "last.pt", payload)
        for step in self.config.train.keep_steps:
            if self.saved_step < step <= self.step:
                shutil.copyfile(self.output_dir / "last.pt", self.output_dir / f"step{step}.pt")
        self.saved_step = self.step

    def load_weights(self, path: Path) -> None:
        """Start every member from the matching net of a checkpoint (``semi.init_from``)."""
        payload = load_checkpoint(path, map_location=self.context.device)
        if len(payload["networks"]) < len(self.members):
            raise ValueError(f"{path}: holds {len(payload['networks'])} network(s), {len(self.members)} needed")
        for member, entry in zip(self.members, payload["networks"]):
            if isinstance(member.module, AggregatingDecouplingNet) and entry["arch"] != "ad_generic":
                for decoder in member.module.decoders.values():  # a trained net into all three (A&D's start)
                    decoder.load_state_dict(entry["state_dict"])
            elif isinstance(member.module, MessengerNet) and entry["arch"] != "sd_messenger":
                member.module.net.load_state_dict(entry["state_dict"])  # the messenger starts as the identity
            else:
                member.module.load_state_dict(entry["state_dict"])

    def resume(self, path: Path | None = None) -> None:
        """Continue from ``output_dir/last.pt``: weights, optimizer, schedule, scaler, step and RNG.

        ``path``: continue another run's ``last.pt`` instead (a round of ``semi.round_init=continue``:
        the previous round's state, except its unlabeled stream, which drew from another pool, and
        its best validation score, so that this round's ``best.pt`` is its own).
        """
        own = path is None
        path = self.output_dir / "last.pt" if own else path
        payload = load_checkpoint(path, map_location=self.context.device)
        state = payload.get("training_state")
        if state is None or len(payload["networks"]) != len(self.members):
            raise ValueError(f"{path}: not a resumable checkpoint of this configuration")
        for member, entry, opt, sched, scaler in zip(
            self.members, payload["networks"], state["optimizers"], state["schedulers"], state["scalers"]
        ):
            member.module.load_state_dict(entry["state_dict"])
            member.optimizer.load_state_dict(opt)
            member.scheduler.load_state_dict(sched)
            member.scaler.load_state_dict(scaler)
        self.step, self.best_dice = int(state["step"]), float(state["best_dice"])
        self.finished = bool(state.get("finished", False))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        generators = state["generators"]
        if len(generators) == self.context.world_size:
            self.generator.set_state(generators[self.context.rank].cpu())
        else:  # resumed on another number of processes: same data order is impossible anyway
            self.generator.manual_seed(self.step * 1000 + self.context.rank)
        torch.set_rng_state(state["torch_rng"].cpu())
        if not own:
            self.best_dice, self.finished = -math.inf, False
        else:
            self.step_fn.load_state_dict(state["step_fn"])

    def close(self) -> None:
        """Stop data workers and close the store and logs (every reader, so the store may be written)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        self.loader = self.step_fn = None
        gc.collect()  # shuts down persistent DataLoader workers, which hold their own store handles
        self.store.close()
