"""What makes a resumed training run end bitwise equal to an uninterrupted one, shared by both stages' modules.

- Randomness of a training step is a function of (seed, rank, epoch, batch index): torch (CPU and CUDA), numpy and
  ``random`` are reseeded at the start of every training batch. Saving and restoring generator states instead
  would not be enough: whatever runs between the checkpoint and the next step (the rest of that step's hooks,
  validation, the sanity check and data-loader start-up of a resumed process) draws from them too. The position
  (epoch, batch index) is Lightning's loop state, already in every checkpoint; the seed is stored beside it and
  wins over the configured one on resume. Each DDP rank has its own stream; resumed with another world size,
  rank ``r`` continues the stream of the old rank ``r`` (new ranks start their own), but the data each rank sees
  changes (see :mod:`mmgt.data.sampling`), so the run is no longer equal to an uninterrupted one.
- The EMA is folded in right after each optimiser step (``optimizer_step``), before any ``on_train_batch_end``
  hook, so the checkpoint written at that step (ModelCheckpoint runs in ``on_train_batch_end``) already holds it;
  under gradient accumulation it runs once per optimiser step, and a step the non-finite guard skipped (no
  gradient reached the optimiser) leaves the average alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from mmgt.data.sampling import mix_seed, seed_all

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "mmgt_resume"


def optimizer_stepped(optimizer: Any) -> bool:
    """Whether the last ``step()`` had gradients to apply (``NonFiniteGuard`` clears them all to skip a step)."""
    opt = getattr(optimizer, "optimizer", optimizer)
    return any(p.grad is not None for g in opt.param_groups for p in g["params"])


class ResumableTraining:
    """Mixin placed before ``L.LightningModule`` in the bases; the module implements :meth:`update_ema`, and its
    own ``on_save_checkpoint`` / ``on_load_checkpoint`` call ``super()``."""

    _train_seed: int | None = None

    def update_ema(self) -> None:
        """Fold the current weights into the EMA (no-op without one)."""
        raise NotImplementedError

    @property
    def train_seed(self) -> int:
        """Seed of the training streams: the checkpoint's when resumed, else Lightning's global seed."""
        if self._train_seed is None:
            self._train_seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        return self._train_seed

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        seed_all(mix_seed(self.train_seed, self.global_rank, self.current_epoch, batch_idx))  # type: ignore[attr-defined]
        return super().on_train_batch_start(batch, batch_idx)  # type: ignore[misc]

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
        if optimizer_stepped(optimizer):
            with torch.no_grad():
                self.update_ema()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"seed": int(self.train_seed)}
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = (checkpoint.get(CHECKPOINT_KEY) or {}).get("seed")
        if saved is not None:
            env = os.environ.get("PL_GLOBAL_SEED")
            if env is not None and int(env) != int(saved):
                log.warning("resume: the checkpoint's training seed %d is kept (this run's seed is %s)", saved, env)
            self._train_seed = int(saved)
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
