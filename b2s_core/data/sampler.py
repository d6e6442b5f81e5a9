"""Distributed, resumable sampling: which frames each rank sees, in which order, from where.

``EpochSampler`` wraps :class:`torch.utils.data.DistributedSampler` (the same per-epoch shuffle
and rank split as every DDP job) and adds two things the training loop needs:

* it yields ``(epoch, index)`` keys, so that the dataset draws a sample's augmentation from the
  pair and not from the worker's state;
* ``start_at(epoch, skip)`` drops the first ``skip`` samples of an epoch, so that a resumed run
  continues with exactly the batch that the interrupted run would have loaded next, without
  decoding the skipped frames.

``CyclingLoader`` turns a loader into an endless stream of batches for the S+B strategy ("a
random batch of pre-training binary samples each step") and counts what it has consumed, so that
it resumes exactly too.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler, Sampler


class EpochSampler(Sampler):
    def __init__(self, num_samples: int, *, num_replicas: int, rank: int, seed: int, shuffle: bool, drop_last: bool):
        self._inner = DistributedSampler(
            range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.epoch = 0
        self.skip = 0

    def start_at(self, epoch: int, skip: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from its ``skip``-th sample on."""
        self.epoch, self.skip = epoch, skip
        self._inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self._inner)[self.skip:]
        epoch = self.epoch
        return iter([(epoch, int(i)) for i in indices])

    def __len__(self) -> int:
        return max(0, len(self._inner) - self.skip)

    @property
    def samples_per_epoch(self) -> int:
        """Samples this rank sees in one full epoch."""
        return len(self._inner)


class CyclingLoader:
    """Endless batches from ``loader`` (whose sampler is an :class:`EpochSampler`), epoch after epoch."""

    def __init__(self, loader: torch.utils.data.DataLoader, batch_size: int):
        self.loader = loader
        self.sampler: EpochSampler = loader.sampler if isinstance(loader.sampler, EpochSampler) else loader.batch_sampler.sampler
        self.batch_size = batch_size
        self.batches_done = 0  # batches handed out so far: the whole resumable state
        self._iterator = None

    def batches_per_epoch(self) -> int:
        per_epoch = self.sampler.samples_per_epoch // self.batch_size
        if per_epoch == 0:
            raise ValueError("pre-training data has fewer frames per process than one batch")
        return per_epoch

    def restore(self, batches_done: int) -> None:
        self.batches_done = batches_done
        self._iterator = None

    def next(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            epoch, batch = divmod(self.batches_done, self.batches_per_epoch())
            self.sampler.start_at(epoch, batch * self.batch_size)
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            return self.next()
        self.batches_done += 1
        return batch
