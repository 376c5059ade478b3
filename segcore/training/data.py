"""Datasets and samplers over the case store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from segcore.store import CaseStore


class StoreDataset(Dataset):
    """Cases of a :class:`CaseStore` as tensors: ``image`` ``(1, z, y, x)`` int16 HU and, when
    ``label_key`` is given, ``label`` ``(z, y, x)`` uint8. Worker processes open the store lazily."""

    def __init__(self, store: CaseStore, ids: Sequence[str], image_key: str, label_key: str | None = None):
        if not ids:
            raise ValueError(f"{store.path}: no cases to load for {image_key}")
        self.store, self.ids, self.image_key, self.label_key = store, list(ids), image_key, label_key

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        arrays = self.store.arrays(self.ids[index])
        # One copy out of the memory map: the views are read-only and the collate stacks anyway.
        item = {"image": torch.from_numpy(np.array(arrays[self.image_key]))[None], "index": index}
        if self.label_key is not None:
            item["label"] = torch.from_numpy(np.array(arrays[self.label_key]))
        return item


class ResumableSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start an epoch part-way, to resume at an exact step."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Reshuffle for ``epoch`` and skip its first ``start`` samples (of this rank)."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def make_loader(dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int, workers: int, pin: bool):
    """A loader whose sampler reshuffles every epoch (``loader.sampler.set_epoch``).

    Worker processes are spawned, not forked: the trainer has the store open, and a forked child
    inherits LMDB's record of open environments, so its own open would be refused ("already open
    in this process"); a spawned one unpickles a closed :class:`CaseStore` and opens its own.
    """
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=len(sampler) >= batch_size,
        persistent_workers=workers > 0,
        multiprocessing_context="spawn" if workers > 0 else None,
    )


class EndlessBatches:
    """Batches drawn for ever from a loader, reshuffled at every pass (a new epoch of its sampler),
    never a replay of a cached order. Used for the unlabeled stream of semi-supervised training.
    Its position (pass, batches drawn) goes into checkpoints so a resumed run draws the same batches."""

    def __init__(self, loader: DataLoader):
        self.loader, self.epoch, self.drawn, self._iterator = loader, 0, 0, None

    def next(self) -> dict[str, torch.Tensor]:
        while True:
            if self._iterator is None:
                self.loader.sampler.set_epoch(self.epoch, start=self.drawn * self.loader.batch_size)
                self._iterator = iter(self.loader)
            try:
                batch = next(self._iterator)
                self.drawn += 1
                return batch
            except StopIteration:
                self._iterator = None
                self.epoch, self.drawn = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.drawn, self._iterator = int(state["epoch"]), int(state["drawn"]), None
