"""Self-supervised dense pre-training of a segmentation net's encoder, on images without labels.

The idea of dense contrastive learning (DenseCL, PixPro; DenseMP's first stage) for volumes:
two independently augmented views of one volume (each its own random affine and intensity
augmentation of the stage config) go through the net's ``stem`` and ``encoder``; at points
drawn inside both views, whose position in each view follows from the two known affines, the
features of every encoder level are sampled (trilinear) and concatenated, a small projection
head maps them to an embedding, and InfoNCE pulls the two embeddings of each point together and
pushes those of every other point of the batch (the same volume's and the others') apart.
The decoder is not trained here: fine-tuning starts it fresh.

Run (any stage config; its ``store``, ``fold``, network, input size, optimiser, augmentation,
``train.max_steps`` / ``train.epochs`` and ``data.batch_size`` apply; ``pretrain`` holds the rest)::

    python -m segcore.training.pretrain --config coarse_seg/config.yaml output_dir=runs/pretrain [--resume]
    sh coarse_seg/run.sh train.init_encoder=runs/pretrain/encoder.pt ...   # fine-tune from it

It learns from the fold's training cases and the ``unlabeled`` split (never the validation or
test cases), one process or several under ``torchrun`` (each draws its own negatives). It writes
``last.pt`` (to ``--resume``) after every epoch and ``encoder.pt`` at the end: the architecture
and the weights of ``stem`` and ``encoder`` only, which :func:`load_encoder` puts into a net.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segcore.networks import SegmentationNetwork, build_network, network_spec
from segcore.networks.blocks import level_channels
from segcore.networks.checkpoint import load_checkpoint, make_payload, save_checkpoint
from segcore.runtime import distributed
from segcore.store import COARSE_IMAGE, FINE_IMAGE, CaseStore
from segcore.training.augment import augment_intensity, random_affines, resample_batch
from segcore.training.config import StageConfig, load_stage_config
from segcore.training.data import StoreDataset, make_loader
from segcore.training.optim import lr_schedule, make_optimizer
from segcore.volumes.intensity import normalize_hu

ENCODER_KIND = "dense_pretrained_encoder"
ENCODER_PREFIXES = ("stem.", "encoder.")
ENCODER_ARGS = ("in_channels", "base_channels", "depth", "max_channels", "blocks_per_level")
"""Constructor arguments that shape the stem and the encoder: they must match to load one."""
CANDIDATES = 4
"""Candidate points drawn per wanted point (those outside either view are dropped)."""


# -- the loss ------------------------------------------------------------------------------------
def corresponding_points(
    thetas_a: torch.Tensor, thetas_b: torch.Tensor, count: int, margin: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` points per volume, as positions in view a and in view b of the same source voxel.

    Args:
        thetas_a, thetas_b: ``(N, 3, 4)`` affines of the two views (``affine_grid``'s: a view's
            normalised ``(x, y, z)`` position to the source volume's).
        count: points per volume.
        margin: every point lies in ``[-1 + margin, 1 - margin]`` in both views (the hull of the
            coarsest feature map's voxel centres: ``1 / its size``), so sampling never reads padding.
        generator: CPU generator of the draws.

    Returns:
        ``(points_a, points_b)``, each ``(N, count, 3)`` in ``grid_sample``'s ``(x, y, z)`` order.

    Raises:
        ValueError: the two views of a volume share no region.
    """
    batch = thetas_a.shape[0]
    low = -1 + margin
    candidates = torch.rand(batch, CANDIDATES * count, 3, generator=generator) * (2 - 2 * margin) + low
    source = candidates @ thetas_a[:, :, :3].transpose(1, 2) + thetas_a[:, None, :, 3]
    in_b = (source - thetas_b[:, None, :, 3]) @ torch.linalg.inv(thetas_b[:, :, :3]).transpose(1, 2)
    inside = (in_b.abs() <= 1 - margin).all(-1)
    points_a, points_b = [], []
    for i in range(batch):
        kept = inside[i].nonzero()[:, 0]
        if kept.numel() == 0:
            raise ValueError("dense pre-training: the two views of a volume do not overlap")
        kept = kept[torch.arange(count) % kept.numel()]
        points_a.append(candidates[i, kept])
        points_b.append(in_b[i, kept])
    return torch.stack(points_a), torch.stack(points_b)


def sample_features(levels: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """``(N * P, sum of channels)``: every feature map ``(N, C, z, y, x)`` sampled (trilinear,
    ``align_corners=False`` as the affine grids) at ``points`` ``(N, P, 3)``, concatenated."""
    grid = points[:, :, None, None, :].to(levels[0].dtype)
    sampled = [F.grid_sample(f, grid.to(f.device), mode="bilinear", align_corners=False)[..., 0, 0] for f in levels]
    return torch.cat(sampled, dim=1).transpose(1, 2).flatten(0, 1)


def info_nce(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of ``(M, D)`` embeddings: row i of a and of b are the positive pair,
    every other row of the other view a negative."""
    a, b = F.normalize(embeddings_a.float(), dim=1), F.normalize(embeddings_b.float(), dim=1)
    logits = a @ b.T / temperature
    targets = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def dense_contrastive_loss(
    levels_a: list[torch.Tensor],
    levels_b: list[torch.Tensor],
    points_a: torch.Tensor,
    points_b: torch.Tensor,
    temperature: float,
    head: nn.Module | None = None,
) -> torch.Tensor:
    """InfoNCE between the two views' features at corresponding points (``head``: projection)."""
    features_a, features_b = sample_features(levels_a, points_a), sample_features(levels_b, points_b)
    if head is not None:
        features_a, features_b = head(features_a), head(features_b)
    return info_nce(features_a, features_b, temperature)


# -- the model and the encoder checkpoint ---------------------------------------------------------
class DenseContrastModel(nn.Module):
    """A segmentation net's stem and encoder with a projection head; ``forward`` is the loss."""

    def __init__(self, net: SegmentationNetwork, hidden: int, out: int, temperature: float):
        super().__init__()
        self.net, self.temperature = net, temperature
        args = net.init_args
        width = sum(level_channels(args["base_channels"], args["depth"], args["max_channels"]))
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.LeakyReLU(0.01), nn.Linear(hidden, out))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.net.encode(images)

    def forward(self, view_a, view_b, points_a, points_b) -> torch.Tensor:
        return dense_contrastive_loss(
            self.encode(view_a), self.encode(view_b), points_a, points_b, self.temperature, self.head
        )

    def parameters_to_train(self):
        """The stem's, the encoder's and the head's (the decoder gets no gradient here)."""
        prefixes = ("head.", *(f"net.{prefix}" for prefix in ENCODER_PREFIXES))
        return [p for name, p in self.named_parameters() if name.startswith(prefixes)]


def encoder_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a net's ``stem`` and ``encoder``."""
    return {k: v for k, v in net.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def load_encoder(net: SegmentationNetwork, path: Path) -> None:
    """Put an ``encoder.pt``'s stem and encoder weights into ``net`` (the rest is left as it is).

    Raises:
        ValueError: the file is not a pre-trained encoder, or of another architecture or shape.
    """
    payload = load_checkpoint(path)
    if payload.get("kind") != ENCODER_KIND:
        raise ValueError(f"{path}: not an encoder written by dense pre-training (segcore.training.pretrain)")
    entry, spec = payload["networks"][0], network_spec(net)
    differ = [f"arch {entry['arch']} vs {spec['arch']}"] if entry["arch"] != spec["arch"] else []
    differ += [
        f"{key} {entry['init_args'].get(key)} vs {spec['init_args'].get(key)}"
        for key in ENCODER_ARGS
        if entry["init_args"].get(key) != spec["init_args"].get(key)
    ]
    if differ:
        raise ValueError(f"{path}: its encoder does not fit this network ({'; '.join(differ)})")
    net.load_state_dict({**net.state_dict(), **entry["state_dict"]})


# -- the loop --------------------------------------------------------------------------------------
class Pretrainer:
    """The pre-training loop: data, model, optimiser, schedule; ``last.pt`` and ``encoder.pt``."""

    def __init__(self, config: StageConfig, image_key: str, context: distributed.DistributedContext):
        self.config, self.image_key, self.context = config, image_key, context
        torch.manual_seed(config.train.seed)
        self.output_dir = Path(config.output_dir)
        self.generator = torch.Generator().manual_seed(config.train.seed * 1000 + context.rank)
        self.store = CaseStore(config.store)
        train_ids, _ = self.store.fold(config.fold)
        ids = sorted({*train_ids, *self.store.ids("unlabeled")})
        self.loader = make_loader(
            StoreDataset(self.store, ids, image_key), config.data.batch_size, context.rank, context.world_size,
            config.train.seed, config.data.workers, pin=context.device.type == "cuda",
        )  # fmt: skip
        self.steps_per_epoch = len(self.loader)
        total = config.train.epochs * self.steps_per_epoch
        self.max_steps = min(total, config.train.max_steps or total)
        settings = config.pretrain
        net = build_network(config.network.arch, **config.network.init_args)
        self.model = DenseContrastModel(net, settings.hidden_channels, settings.out_channels, settings.temperature)
        self.model.to(context.device)
        self.optimizer = make_optimizer(self.model.parameters_to_train(), config.optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config.optimizer, total, self.max_steps)
        )
        self.trained = DistributedDataParallel(self.model) if context.distributed else self.model
        args = net.init_args
        # half a voxel of the coarsest level, in normalised units: the hull of its voxel centres
        self.margin = max(1 / (s // 2 ** args["depth"]) for s in config.input_size)
        self.step, self.train_seconds = 0, 0.0

    def views(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Two augmented, windowed views of the batch and their corresponding points."""
        images = batch["image"].to(self.context.device).float()
        augment, window = self.config.augment, tuple(self.config.data.hu_window)
        thetas = [random_affines(images.shape[0], augment, self.generator) for _ in range(2)]
        views = []
        for theta in thetas:
            view, _ = resample_batch(images, None, theta, self.config.input_size)
            views.append(normalize_hu(augment_intensity(view, None, augment, self.generator, window), window))
        points = corresponding_points(*thetas, self.config.pretrain.points, self.margin, self.generator)
        return (*views, *(p.to(self.context.device) for p in points))

    def fit(self) -> None:
        """Train until ``train.max_steps`` (or the epochs); ``last.pt`` after every epoch, then ``encoder.pt``."""
        start_epoch, skip = divmod(self.step, self.steps_per_epoch)
        for epoch in range(start_epoch, self.config.train.epochs):
            if self.step >= self.max_steps:
                break
            self.loader.sampler.set_epoch(epoch, start=skip * self.config.data.batch_size)
            skip, started, losses = 0, time.perf_counter(), []
            self.model.train()
            for batch in self.loader:
                loss = self.trained(*self.views(batch))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.config.optimizer.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters_to_train(), self.config.optimizer.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                losses.append(loss.item())
                if self.step >= self.max_steps:
                    break
            self.train_seconds += time.perf_counter() - started
            if self.context.is_main:
                print(f"pretrain: epoch {epoch} step {self.step}: loss {sum(losses) / len(losses):.4f}", flush=True)
            self.save_last()
        if self.context.is_main:
            self.save_encoder()

    def save_last(self) -> None:
        generators = distributed.gather_objects(self.generator.get_state())
        if not self.context.is_main:
            return
        save_checkpoint(self.output_dir / "last.pt", {
            "kind": "dense_pretraining_state", "networks": [], "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "step": self.step,
            "train_seconds": self.train_seconds, "generators": generators, "torch_rng": torch.get_rng_state(),
        })  # fmt: skip

    def resume(self) -> None:
        """Continue from ``output_dir/last.pt``."""
        state = load_checkpoint(self.output_dir / "last.pt", map_location=self.context.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.train_seconds = int(state["step"]), float(state["train_seconds"])
        if len(state["generators"]) == self.context.world_size:
            self.generator.set_state(state["generators"][self.context.rank].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())

    def save_encoder(self) -> None:
        net = self.model.net
        entry = {**network_spec(net), "state_dict": encoder_state(net)}
        payload = make_payload(
            self.image_key.split("_")[0], [entry], self.config.input_size, self.config.data.hu_window,
            self.config.as_dict(),
        )  # fmt: skip
        payload.update(kind=ENCODER_KIND, pretrain={"steps": self.step, "train_seconds": round(self.train_seconds, 1)})
        save_checkpoint(self.output_dir / "encoder.pt", payload)

    def close(self) -> None:
        self.loader = None
        self.store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segcore.training.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a stage config (YAML)")
    parser.add_argument("--stage", choices=("coarse", "fine"), default="coarse", help="which stored images")
    parser.add_argument("--resume", action="store_true", help="continue from output_dir's last.pt")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    try:
        config = load_stage_config(args.config, args.overrides)
    except (OSError, ValueError, TypeError) as error:
        print(f"pretrain: bad config: {error}", file=sys.stderr)
        return 2
    last = Path(config.output_dir) / "last.pt"
    if last.exists() != args.resume:
        problem = "already exists: pass --resume to continue" if last.exists() else "does not exist (--resume)"
        print(f"pretrain: {last} {problem}", file=sys.stderr)
        return 2
    context = distributed.setup(args.device)
    try:
        trainer = Pretrainer(config, COARSE_IMAGE if args.stage == "coarse" else FINE_IMAGE, context)
        if args.resume:
            trainer.resume()
        trainer.fit()
        trainer.close()
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
    if context.is_main:
        print(f"pretrain: done at step {trainer.step}; encoder in {Path(config.output_dir) / 'encoder.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
