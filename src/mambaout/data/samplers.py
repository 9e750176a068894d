"""Samplers for training that resumes mid-epoch and evaluation that counts each image once."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Shuffled (index, epoch) pairs for one rank, resumable at any position.

    Each epoch draws one permutation from (seed, epoch); rank r takes every world-th
    element starting at r, cut to the same length on every rank. Global batch k is
    therefore the same set of images whatever the number of processes, provided the
    global batch size is the same. `start` skips the first samples of this rank's
    share (used when resuming mid-epoch)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True):
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = n // world

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return order[self.rank::self.world][:self.per_rank]

    def __iter__(self):
        for i in self.indices()[self.start:]:
            yield (i, self.epoch)

    def __len__(self):
        return self.per_rank - self.start


class EvalShardSampler(Sampler):
    """Rank r gets indices r, r+world, ...: no padding, no duplicates, so summing counts
    over ranks counts every image exactly once."""

    def __init__(self, n: int, rank: int = 0, world: int = 1):
        self.ids = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.ids)

    def __len__(self):
        return len(self.ids)
