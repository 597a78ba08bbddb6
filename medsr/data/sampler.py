"""Resumable, shardable batch sampling: a batch is a pure function of (seed, epoch, index, rank).

Each epoch draws a permutation from ``default_rng([seed, epoch])``; the permutation is split
across ranks the way ``torch.utils.data.DistributedSampler`` does (padded by wrapping, rank r
takes every world-th entry), then cut into batches, dropping the ragged tail so every step has
the same batch on every rank. A run resumed at step s starts its epoch at batch
``s % steps_per_epoch`` and sees exactly the batches an uninterrupted run would.

Items are tuples ``(ix, iy, seed_x, seed_y)``: the X and Y items and a per-item seed for
anything random the dataset does (random positions, flips), so data workers hold no RNG state.
Paired sampling yields ``ix == iy`` and ``seed_x == seed_y``; unpaired sampling draws Y from an
independent permutation (never the same item as X when there is more than one), of the same items
or, with ``n_items_y``, of a second, separate set of Y items (disjoint domains: X patches from some
subjects, Y patches from others).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

Item = tuple[int, int, int, int]


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of items for one rank.

    Args:
        n_items: dataset size N (items 0..N-1).
        batch_size: items per batch (per rank).
        seed: run seed.
        rank, world_size: this process's shard.
        unpaired: draw Y independently of X.
        n_items_y: unpaired only: Y items are 0..n_items_y-1 of another set (None: the X items). An epoch
            is one pass over the X items; Y follows its own permutation, repeated or cut to that length.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 unpaired: bool = False, n_items_y: int | None = None) -> None:
        if n_items <= 0:
            raise ValueError("no training items to sample from")
        self.n_items = int(n_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.unpaired = bool(unpaired)
        if n_items_y is not None and (not self.unpaired or n_items_y <= 0):
            raise ValueError("a separate Y item set needs unpaired sampling and at least one Y item")
        self.n_items_y = None if n_items_y is None else int(n_items_y)
        self.per_rank = -(-self.n_items // self.world_size)  # ceil, as DistributedSampler pads
        self.steps_per_epoch = self.per_rank // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{self.n_items} training patches cannot fill one batch of {self.batch_size} on each of "
                f"{self.world_size} process(es); lower train.batch_size or add data"
            )
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the first batch to yield (to resume mid-epoch)."""
        self.epoch = int(epoch)
        self.start = int(start_batch)

    def epoch_items(self, epoch: int) -> list[Item]:
        """All items of this rank for ``epoch`` in order (steps_per_epoch * batch_size of them)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.n_items
        px = rng.permutation(n)
        sx = rng.integers(0, 2**31 - 1, n)
        if self.unpaired and self.n_items_y is not None:  # another set: no item can meet itself
            py = np.resize(rng.permutation(self.n_items_y), n)
            sy = rng.integers(0, 2**31 - 1, n)
        elif self.unpaired:
            py = rng.permutation(n)
            if n > 1:
                # Never pair an item with itself: swap clashes with the next entry.
                for i in np.flatnonzero(py == px):
                    j = (i + 1) % n
                    py[i], py[j] = py[j], py[i]
            sy = rng.integers(0, 2**31 - 1, n)
        else:
            py, sy = px, sx
        total = self.per_rank * self.world_size
        idx = np.arange(total) % n  # pad by wrapping around
        mine = idx[self.rank::self.world_size][: self.steps_per_epoch * self.batch_size]
        return [(int(px[i]), int(py[i]), int(sx[i]), int(sy[i])) for i in mine]

    def __iter__(self) -> Iterator[list[Item]]:
        items = self.epoch_items(self.epoch)
        b = self.batch_size
        for k in range(self.start, self.steps_per_epoch):
            yield items[k * b:(k + 1) * b]

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start
