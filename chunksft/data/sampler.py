"""A distributed sampler whose position is checkpointable, for exact resume.

Each epoch has one global order (a permutation seeded by seed + epoch, or 0..n-1 without shuffle).
The order is padded to a multiple of W by repeating its first indices (drop_last=False) or its
ragged tail is dropped (drop_last=True), as torch's DistributedSampler does. Rank r of W then reads
it from the pass's global start offset g with stride W: order[g + r], order[g + r + W], ...
A fresh epoch has g = 0. After a resume on a different world size, the rest order[g:] is padded
(or cut) once more to a multiple of the new W, so all ranks still yield the same count.

The state is the *global* number of samples consumed in the epoch, so a resumed run continues on
exactly the next sample, also with a different world size.
"""
from __future__ import annotations

from typing import Iterator, Sized

import torch


class StatefulDistributedSampler(torch.utils.data.Sampler[int]):
    """Distributed sampler with `set_epoch`, `state_dict()` and `load_state_dict()`.

    num_replicas / rank default to the initialised torch.distributed group (1 / 0 without one).
    The position counts what this sampler yielded: exact with a DataLoader with num_workers=0; with
    workers (which prefetch), pass the number of samples this rank really consumed to `state_dict`.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None, *,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        dist = torch.distributed
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas}); check the launcher's world size")
        self.dataset_len = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.start = 0      # global offset the current (or next) pass starts at
        self.yielded = 0    # samples this rank yielded since `start`

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.dataset_len))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_len, generator=gen).tolist()

    def _fit(self, indices: list[int]) -> list[int]:
        """Pad (repeating the head) or cut `indices` to a multiple of the world size."""
        if self.drop_last:
            return indices[:len(indices) - len(indices) % self.num_replicas]
        pad = -len(indices) % self.num_replicas
        return indices + (indices * (pad // max(len(indices), 1) + 1))[:pad] if indices else indices

    def _global_remaining(self, start: int) -> list[int]:
        return self._fit(self._fit(self._order())[start:])

    @property
    def consumed(self) -> int:
        """Global samples of this epoch consumed so far (all ranks together, padding included)."""
        return self.start + self.yielded * self.num_replicas

    def _pass_start(self) -> int:
        """Continue a resumed/interrupted pass; start over when the epoch's pass is exhausted."""
        start = self.consumed
        return 0 if len(self._global_remaining(start)) == 0 else start

    def __iter__(self) -> Iterator[int]:
        self.start, self.yielded = self._pass_start(), 0
        for index in self._global_remaining(self.start)[self.rank::self.num_replicas]:
            self.yielded += 1
            yield index

    def __len__(self) -> int:
        """Samples the next pass yields on this rank."""
        return len(self._global_remaining(self._pass_start())) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Call at the start of every epoch; a new epoch starts at its beginning, the same epoch resumes."""
        if epoch != self.epoch:
            self.epoch, self.start, self.yielded = epoch, 0, 0

    def state_dict(self, rank_samples: int | None = None) -> dict:
        """{epoch, consumed, seed, shuffle, drop_last, dataset_len}; `rank_samples` overrides the yielded count."""
        yielded = self.yielded if rank_samples is None else rank_samples
        consumed = self.start + yielded * self.num_replicas
        return {"epoch": self.epoch, "consumed": consumed, "seed": self.seed, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "dataset_len": self.dataset_len}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "shuffle", "dataset_len"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this run has {getattr(self, key)!r}; "
                                 f"resume with the same data and seed")
        self.epoch, self.start, self.yielded = state["epoch"], state["consumed"], 0
