"""Deterministic data order and augmentation, independent of workers, ranks and resumption.

``EpochSampler`` yields ``(index, epoch)`` pairs: a permutation seeded by (seed, epoch), sharded over
ranks like ``DistributedSampler`` (padded by repetition), optionally starting mid-epoch on resume;
with repeat factors (``data.repeat_threshold``, LVIS) rare images fill more of each epoch's places.
``SeededDataset`` reseeds torch / numpy / random from (seed, epoch, index) before every sample, so an
image's augmentation is a pure function of those three numbers; a dataset with ``epoch_aware = True``
(the synthetic stream) receives ``(index, epoch)`` and draws a new image every epoch. In the main
process (``num_workers 0``) the global random states are restored afterwards, so loading data never
perturbs the training stream (dropout, mining); together with a private generator for the loader's
base seed (see the trainer) this makes a resumed run draw exactly the random numbers of an uninterrupted one.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


class EpochSampler(Sampler):
    """repeat_factors: (size,) factors >= 1 of repeat-factor sampling (``hqm.data.repeat_factors``) or
    None. With them an epoch lists image ``i`` ``floor(r_i)`` times plus once more with probability
    ``r_i - floor(r_i)`` (LVIS's stochastic rounding), shuffles that list and keeps its first ``size``
    entries, so the epoch keeps its length and number of steps; the k-th copy of an image in an epoch
    is yielded as ``(index, epoch, k)`` for k >= 1, so that ``SeededDataset`` augments each copy
    differently."""

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        repeat_factors=None,
    ):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.repeat_factors = (
            None if repeat_factors is None else torch.as_tensor(repeat_factors, dtype=torch.float64)
        )
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # first local position to yield (resume mid-epoch)
        self.num_local = math.ceil(size / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list:
        """This rank's entries of the epoch: indices, or ``(index, k)`` copies with repeat factors."""
        if self.shuffle and self.repeat_factors is not None:
            g = torch.Generator().manual_seed((self.seed * 100003 + self.epoch) % 2**63)
            r = self.repeat_factors
            copies = (
                r.floor() + (torch.rand(len(r), generator=g, dtype=torch.float64) < r - r.floor())
            ).long()
            index = torch.repeat_interleave(torch.arange(len(r)), copies)
            first = torch.cumsum(copies, 0) - copies  # position of each image's first copy in ``index``
            copy = torch.arange(len(index)) - torch.repeat_interleave(first, copies)
            keep = torch.randperm(len(index), generator=g)[: self.size]
            order = list(zip(index[keep].tolist(), copy[keep].tolist()))
        elif self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 100003 + self.epoch) % 2**63)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_local * self.world_size
        order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self):
        for i in self.indices()[self.start :]:
            if isinstance(i, tuple):
                yield (i[0], self.epoch, i[1]) if i[1] else (i[0], self.epoch)
            else:
                yield (i, self.epoch)

    def __len__(self) -> int:
        return self.num_local - self.start


class SeededDataset(Dataset):
    """Wraps a dataset indexed by ``(index, epoch)``; seeds every RNG from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch, copy = (tuple(key) + (0,))[:3] if isinstance(key, tuple) else (key, 0, 0)
        # the k-th copy of an image in an epoch (repeat-factor sampling) gets its own augmentation
        s = (self.seed * 1_000_003 + epoch * 10_007 + index + copy * 999_983) % (2**31)
        if get_worker_info() is not None:  # a worker process: its random state is its own
            return self._seeded(index, epoch, s)
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        try:
            return self._seeded(index, epoch, s)
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])

    def _seeded(self, index: int, epoch: int, s: int):
        torch.default_generator.manual_seed(s)  # CPU only: never touch the CUDA streams
        np.random.seed(s)
        random.seed(s)
        # a dataset that draws new samples every epoch (the synthetic stream) is indexed by both
        return (
            self.dataset[(index, epoch)]
            if getattr(self.dataset, "epoch_aware", False)
            else self.dataset[index]
        )
