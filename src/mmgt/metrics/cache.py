"""A bounded reference-feature cache for metrics that compare against fixed ground truth.

Validation scores the same ground-truth windows every epoch and ``mmgt.evaluate`` a fixed reference folder, so
the reference side's feature-network pass (I3D for FVD, the AlexNet trunk for LPIPS) is the same work each time.
:class:`FeatureCache` keeps those features, keyed by a BLAKE2b digest of the reference tensor's bytes (plus its
shape, dtype and the metric's settings), in least-recently-used order under a byte budget. A hit returns exactly
the tensors the network produced before, so values are identical to an uncached run.

Off by default (``reference_cache_mb: 0``). Costs when on: hashing reads the reference once per update (about 1 GB/s
on one core; a CUDA tensor is copied to the host first, so on a fast GPU hashing costs more than the I3D pass it
saves: 3x slower on an H200, see experiments/README.md; it pays off on CPU and wherever the networks are slow) and
the budget in host or device memory. The cache outlives ``reset()`` on purpose (that is the point: next epoch, same
references). Under DDP each rank caches its own inputs; metric states are untouched, so synchronisation is
unchanged.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def content_key(x: Tensor, *context: object) -> bytes:
    """Digest of ``x``'s values, shape, dtype and device plus ``context`` (settings that change the features)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((tuple(x.shape), str(x.dtype), str(x.device), context)).encode())
    data = x.detach()
    if data.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
        data = data.view(torch.int16)
    h.update(data.contiguous().cpu().numpy().tobytes())
    return h.digest()


def _nbytes(value: Tensor | Sequence[Tensor]) -> int:
    items = [value] if isinstance(value, Tensor) else list(value)
    return sum(t.numel() * t.element_size() for t in items)


class FeatureCache:
    """LRU map ``key -> tensor | tuple of tensors`` holding at most ``max_bytes`` of tensor data.

    ``hits``/``misses`` count look-ups (for tests and logs). An entry larger than the whole budget is not stored.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[bytes, Tensor | tuple[Tensor, ...]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get_or_compute(self, key: bytes, compute: Callable[[], Tensor | tuple[Tensor, ...]]
                       ) -> Tensor | tuple[Tensor, ...]:
        """The cached value for ``key`` or ``compute()`` (stored if it fits the budget)."""
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = compute()
        size = _nbytes(value)
        if 0 < size <= self.max_bytes:
            self._items[key] = value
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.nbytes -= _nbytes(old)
        return value

    def for_tensor(self, x: Tensor, compute: Callable[[], Tensor | tuple[Tensor, ...]], *context: object
                   ) -> Tensor | tuple[Tensor, ...]:
        """:meth:`get_or_compute` keyed by :func:`content_key` of ``x`` and ``context`` (the metric's settings)."""
        return self.get_or_compute(content_key(x, *context), compute)

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0
