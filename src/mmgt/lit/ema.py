"""``EMA``: the one exponential moving average of both stages' LightningModules.

Update ``k`` (1-based) folds the weights in with ``torch._foreach_lerp_`` and decay ``min(decay, (1+n)/(10+n))``
(``warmup``; else ``decay``), so short runs still validate a useful average. The shadows are modules' tensors, so
they are checkpointed, moved by ``.to()`` and resumed with the rest of the state dict. Two storages, because the
checkpoints of each stage were written with one and must keep loading unchanged:

- :meth:`EMA.copy_of` (stage 1, small network): a full copy of the module, laid out as torch's ``AveragedModel``
  (``module.<name>`` + ``n_averaged``) and with its convention: the first update copies the weights, update ``k``
  uses ``n = k - 1``; buffers (BatchNorm statistics) are copied, not averaged. ``ema.module`` samples directly.
- :meth:`EMA.of_params` (stage 2): float32 shadows of chosen parameters only (the trainable ones: a copy of the
  frozen UNets/VAE would double memory at paper size), stored as ``<name with "__" for ".">`` + ``steps``; the
  average starts from the weights at construction and update ``k`` uses ``n = k``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class EMA(nn.Module):
    """Exponential moving average of a parameter list (build with :meth:`copy_of` or :meth:`of_params`)."""

    def __init__(self, decay: float, warmup: bool, copy_first: bool, counter: str) -> None:
        super().__init__()
        self.decay, self.warmup, self.copy_first, self._counter = float(decay), bool(warmup), bool(copy_first), counter
        self.module: nn.Module | None = None
        self.names: list[str] = []

    @classmethod
    def copy_of(cls, module: nn.Module, decay: float, warmup: bool) -> EMA:
        """Average of every parameter of ``module`` in a frozen copy of it (torch ``AveragedModel`` layout)."""
        ema = cls(decay, warmup, copy_first=True, counter="n_averaged")
        ema.module = copy.deepcopy(module).requires_grad_(False)
        ema.names = [n for n, _ in module.named_parameters()]
        ema.register_buffer(ema._counter, torch.zeros((), dtype=torch.long))
        return ema

    @classmethod
    def of_params(cls, named_params: Sequence[tuple[str, nn.Parameter]], decay: float, warmup: bool) -> EMA:
        """Average of the given parameters only, as float32 buffers named after them."""
        ema = cls(decay, warmup, copy_first=False, counter="steps")
        ema.names = [n for n, _ in named_params]
        for n, p in named_params:
            ema.register_buffer(n.replace(".", "__"), p.detach().clone().float())
        ema.register_buffer(ema._counter, torch.zeros((), dtype=torch.long))  # last: the old key order
        return ema

    @property
    def count(self) -> int:
        """Updates folded in so far."""
        return int(getattr(self, self._counter))

    def shadows(self) -> list[torch.Tensor]:
        """The averages, in the order of ``names``."""
        if self.module is not None:
            return [p for p in self.module.parameters()]
        return [getattr(self, n.replace(".", "__")) for n in self.names]

    def shadow_buffers(self) -> Iterator[torch.Tensor]:
        return self.module.buffers() if self.module is not None else iter(())

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor] = ()) -> None:
        """Fold ``params`` (same order as ``names``) in; ``buffers`` are copied into the copy's buffers."""
        shadows = self.shadows()
        n = self.count
        new = [p.detach().to(s.dtype) for s, p in zip(shadows, params, strict=True)]
        if self.copy_first and n == 0:
            for s, p in zip(shadows, new, strict=True):
                s.copy_(p)
        else:
            torch._foreach_lerp_(shadows, new, 1.0 - self.decay_at(n if self.copy_first else n + 1))
        for b_avg, b in zip(self.shadow_buffers(), buffers, strict=True):
            b_avg.copy_(b.detach())
        getattr(self, self._counter).add_(1)

    @contextlib.contextmanager
    def applied(self, params: Sequence[torch.Tensor]) -> Iterator[None]:
        """Temporarily copy the averages into ``params`` (e.g. for validation); restored exactly afterwards."""
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self.shadows(), strict=True):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averages (and, for a full copy, its buffers) into ``module``'s tensors of the same names."""
        if self.module is not None:
            module.load_state_dict(self.module.state_dict())
            return
        named = dict(module.named_parameters())
        for name, shadow in zip(self.names, self.shadows(), strict=True):
            named[name].copy_(shadow.to(named[name].dtype))


__all__ = ["EMA"]
