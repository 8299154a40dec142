"""The ``evaluate`` task: ``conf/evaluate.yaml`` -> mode (a) two folders or mode (b) a checkpoint -> exit code."""

from __future__ import annotations

from omegaconf import DictConfig

from mmgt.evaluation.checkpoint import evaluate_checkpoint
from mmgt.evaluation.folders import evaluate_folders

USAGE = "mmgt.evaluate: set generated=<folder of mp4s> and reference=<folder of mp4s>"


def run(cfg: DictConfig) -> int | str:
    """Mode (b) when ``ckpt_path`` is set, else mode (a); returns the exit code (a message when nothing to do)."""
    if cfg.get("ckpt_path"):
        return evaluate_checkpoint(cfg)
    if not (cfg.get("generated") and cfg.get("reference")):
        return USAGE
    return evaluate_folders(cfg)


__all__ = ["USAGE", "run"]
