"""DataLoader construction for the trainer: deterministic, resumable, distributed-aware.

The sample order of an epoch depends only on ``(seed, epoch)`` (and the rank's share of it), never on
how many times the process started; that is what lets a resumed run replay exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sparse3d.utils.seed import derive_seed, seed_data_worker


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way through, shuffled from ``derive_seed(seed, epoch)``.

    Always used, even in a single process (``num_replicas=1``), so single-GPU and DDP runs shard and
    shuffle the same way: rank ``r`` of ``W`` sees elements ``r, r+W, ...`` of the epoch's permutation,
    which makes a DDP step over ``W`` ranks equal to a single-process step over the union of their
    batches.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.start_index = 0

    def set_start(self, start_index: int) -> None:
        """Skip the first ``start_index`` samples of this rank's share of the current epoch."""
        self.start_index = max(0, int(start_index))

    def __iter__(self) -> Iterator[int]:
        # torch shuffles with ``seed + epoch``, which makes (seed 1, epoch 0) replay (seed 0, epoch 1); the
        # permutation is drawn from a mixed seed instead (padding and rank sharding stay torch's).
        base = self.seed
        self.seed = derive_seed(base, self.epoch) - self.epoch
        try:
            indices = list(super().__iter__())
        finally:
            self.seed = base
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_index)


def build_epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    epoch: int,
    start_batch: int,
    seed: int,
    rank: int,
    world_size: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    pin_memory: bool,
) -> DataLoader:
    """A DataLoader over one epoch's share of ``dataset`` for this rank, starting at ``start_batch``.

    A dedicated ``torch.Generator`` (seeded from seed, epoch and rank) drives worker seeds, so creating
    the loader does not draw from the global torch RNG — otherwise a resumed run would shift every
    later random number by one draw.
    """
    sampler = ResumableDistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    sampler.set_start(start_batch * batch_size)
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, epoch, rank))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_data_worker if num_workers > 0 else None,
        generator=generator,
    )


def build_eval_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    pin_memory: bool,
    seed: int = 0,
) -> DataLoader:
    """Sequential loader over the whole dataset (validation and ``sparse3d-eval``)."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, -1))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=False,
        worker_init_fn=seed_data_worker if num_workers > 0 else None,
        generator=generator,
    )


def batches_per_epoch(dataset_len: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """How many batches each rank sees in one full epoch (mirrors the sampler + loader arithmetic)."""
    if drop_last and dataset_len % world_size != 0:
        per_rank = dataset_len // world_size
    else:
        per_rank = -(-dataset_len // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)
