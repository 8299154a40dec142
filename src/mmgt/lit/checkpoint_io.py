"""Lightning's checkpoint I/O through mmgt's one reader/writer (:mod:`mmgt.checkpoints`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmgt.checkpoints import load_torch
from mmgt.data.video_io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that writes beside the target, fsyncs and renames (a kill or a full disk never
    leaves a truncated file under the final name, whatever filesystem ``$TMPDIR`` is on), and loads with
    ``weights_only=True`` forced, memory-mapped, so resuming a run cannot execute pickled code.

    The save streams: ``torch.save`` to the temp *file* writes one tensor storage at a time, where Lightning's own
    ``TorchCheckpointIO`` serialises the whole checkpoint into an in-memory buffer first (measured on a 3 GB
    stage-2 checkpoint: peak RSS 1.01x the weights instead of 2.01x, ``experiments/bench/fullsize.py``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)  # to a path: streamed storage by storage, never buffered whole

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        p = Path(str(path))
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint not found: {p}")
        return load_torch(p)
