"""A training order and training randomness that a resumed run reproduces exactly.

Three pieces, used by :meth:`mmgt.data.datamodule.PATSDataModule.train_dataloader`:

- :class:`ResumableSampler`: the window order of an epoch is a function of (seed, epoch) only, sharded over the
  ranks as ``DistributedSampler`` does (it *is* one, so Lightning does not wrap it), and it can start an epoch
  after the windows a checkpoint says were already served;
- :class:`SeededItems`: every item is loaded under RNG seeds derived from (seed, epoch, position in the epoch),
  so the random window offsets, reference frames and bad-clip replacements a dataset draws with the global
  ``torch``/``numpy``/``random`` generators do not depend on the process, the worker that loads the item, the
  number of workers, or how many batches were prefetched before a kill;
- :class:`ResumableDataLoader`: a ``DataLoader`` with ``state_dict``/``load_state_dict``, which Lightning's fit
  loop saves in every checkpoint (``loops.fit_loop.state_dict.combined_loader``) and restores before iterating
  again; the state (epoch, batches served) counts batches handed to the training loop, not the ones the worker
  processes have prefetched.

Under DDP every rank serves the same number of batches, so rank 0's state (the one in the checkpoint) is every
rank's. Resumed with a different world size, the interrupted epoch continues with the windows not served yet,
resharded over the new ranks (nothing of that epoch is seen twice), but the batches then differ from any
uninterrupted run and Lightning, which counts that epoch's batches in the old size, may end it a few batches
early.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)

_M64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 over the parts): nearby (epoch, position) pairs give
    unrelated streams."""
    h = 0
    for part in parts:
        z = ((h ^ (int(part) & _M64)) + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h >> 1


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed((seed ^ (seed >> 32)) & 0xFFFFFFFF)
    random.seed(seed)


@contextlib.contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """Run the body under ``seed_all(seed)`` and give the caller's CPU generators back afterwards (loading an item
    in the main process, ``num_workers=0``, must not move the training stream)."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        seed_all(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class SeededItems(Dataset):
    """Wraps a map-style dataset: key ``(index, seed)`` loads ``dataset[index]`` under :func:`forked_rng`; a plain
    index is passed through unchanged."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            with forked_rng(int(seed)):
                return self.dataset[index]
        return self.dataset[key]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch order is a function of (seed, epoch), yielding ``(index, item seed)``
    keys for :class:`SeededItems`, and which can start an epoch after the samples already served
    (:meth:`resume`). With ``num_replicas=1`` it is a seeded shuffle of the whole dataset."""

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,  # type: ignore[arg-type]
                         drop_last=drop_last)
        self._resume: tuple[int, int, int] | None = None

    def resume(self, epoch: int, samples: int, world_size: int) -> None:
        """The next iteration of ``epoch`` skips the first ``samples`` positions of the global order, which a run
        over ``world_size`` ranks has already served (applies once; other epochs are unaffected)."""
        self._resume = (int(epoch), int(samples), int(world_size))

    def _permutation(self) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # as DistributedSampler
        return torch.randperm(n, generator=g).tolist()

    def _pad(self, order: list[int], total: int) -> list[int]:
        """Repeat (or cut) ``order`` to ``total`` entries, as ``DistributedSampler`` evens out the shards."""
        if len(order) >= total or not order:
            return order[:total]
        reps = -(-(total - len(order)) // len(order))
        return order + (order * reps)[:total - len(order)]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        perm = self._permutation()
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch and resume[2] != self.num_replicas:
            # another world size: shard what that run had not served yet over the ranks of this one
            done = min(resume[1], len(perm))
            rest = perm[done:]
            w = self.num_replicas
            total = (len(rest) // w if self.drop_last else -(-len(rest) // w)) * w
            order = self._pad(rest, total)
            keys = [(order[p], mix_seed(self.seed, self.epoch, done + p)) for p in range(self.rank, total, w)]
            return iter(keys)
        order = self._pad(perm, self.total_size)
        first = resume[1] if resume is not None and resume[0] == self.epoch else 0
        return iter([(order[p], mix_seed(self.seed, self.epoch, p))
                     for p in range(first + self.rank, self.total_size, self.num_replicas)])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ResumableSampler` (and a :class:`SeededItems` dataset) with the
    ``state_dict``/``load_state_dict`` pair Lightning's fit loop stores in checkpoints and restores on resume.

    With another sampler (Lightning swaps in a sequential one for ``overfit_batches``) it is a plain loader with
    an empty state."""

    def __init__(self, dataset: Dataset, *, sampler: Any, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._epoch = int(getattr(sampler, "epoch", 0))
        self._served = 0
        self._pending: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        pending, self._pending = self._pending, None
        self._epoch = int(getattr(self.sampler, "epoch", 0))
        self._served = pending["batches"] if pending is not None and pending["epoch"] == self._epoch else 0
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Plain ints (checkpoints load with ``weights_only=True``): the epoch being served, the batches of it
        handed to the training loop so far, and what is needed to map them onto another world size."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            return {}
        bs = int(self.batch_size or 1)
        return {"version": 1, "epoch": int(self._epoch), "batches": int(self._served), "batch_size": bs,
                "world_size": int(sampler.num_replicas), "samples": int(self._served) * bs * sampler.num_replicas,
                "seed": int(sampler.seed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue the checkpointed epoch; the checkpoint's seed is kept so the order is
        the interrupted run's."""
        sampler = self.sampler
        if not state or not isinstance(sampler, ResumableSampler):
            return
        seed, world = int(state.get("seed", sampler.seed)), int(state.get("world_size", sampler.num_replicas))
        if seed != sampler.seed:
            log.warning("resume: the checkpoint's data order was drawn with seed %d, this run's seed is %d; the "
                        "checkpoint's is kept so the interrupted epoch continues", seed, sampler.seed)
            sampler.seed = seed
        if world != sampler.num_replicas:
            log.warning("resume: checkpoint written by %d rank(s), this run has %d; epoch %d continues with the "
                        "windows not served yet, resharded, so batches differ from an uninterrupted run", world,
                        sampler.num_replicas, int(state.get("epoch", 0)))
        epoch, batches = int(state.get("epoch", 0)), int(state.get("batches", 0))
        samples = int(state.get("samples", batches * int(state.get("batch_size", self.batch_size or 1)) * world))
        sampler.set_epoch(epoch)
        sampler.resume(epoch, samples, world)
        self._epoch, self._served = epoch, batches
        self._pending = {"epoch": epoch, "batches": batches}
