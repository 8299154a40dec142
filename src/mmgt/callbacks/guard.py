"""``NonFiniteGuard``: a NaN/inf loss or gradient never reaches the weights, the EMA or a checkpoint."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from mmgt.checkpoints import non_finite

log = logging.getLogger(__name__)


class NonFiniteGuard(L.Callback):
    """Skip an optimiser step whose gradients are not finite (a NaN/inf loss makes them so), warning with the
    batch's clip ids; stop with a clear message after ``max_consecutive`` such steps in a row; refuse to write a
    checkpoint that holds non-finite tensors, so the last good checkpoint is never overwritten.

    Gradients are checked after DDP's all-reduce, so every rank skips the same steps. A skipped step leaves the
    parameters and the optimiser state untouched (AdamW skips parameters whose ``.grad`` is None).
    """

    def __init__(self, max_consecutive: int = 5) -> None:
        if int(max_consecutive) < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.consecutive = 0
        self.skipped = 0
        self._clips: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        ids = batch.get("clip_id") if isinstance(batch, dict) else None
        self._clips = [str(c) for c in ids] if isinstance(ids, list | tuple) else ([str(ids)] if ids else [])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads or all(bool(torch.isfinite(g).all()) for g in grads):
            self.consecutive = 0
            return
        for g in optimizer.param_groups:
            for p in g["params"]:
                p.grad = None
        self.consecutive += 1
        self.skipped += 1
        log.warning("step %d: non-finite loss/gradients, optimiser step skipped (%d in a row); batch clips: %s",
                    trainer.global_step, self.consecutive, ", ".join(self._clips) or "?")
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(f"{self.consecutive} optimiser steps in a row had non-finite gradients (last batch: "
                               f"{', '.join(self._clips) or '?'}); training stopped before the weights were damaged. "
                               "Lower the learning rate or check those clips (`python -m mmgt.prepare task=validate`)"
                               "; `callbacks.non_finite_guard.max_consecutive` sets the limit")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = non_finite(checkpoint.get("state_dict") or {})
        if bad:
            raise RuntimeError(f"refusing to write a checkpoint with {len(bad)} non-finite tensors (e.g. "
                               f"{', '.join(bad[:3])}); the previous checkpoints are kept")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
