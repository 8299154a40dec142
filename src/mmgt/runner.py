"""Training driver behind ``python -m mmgt.train``: builds data, model, callbacks, loggers and trainer from a
composed Hydra config and runs ``fit`` (and optionally ``test``). Kept out of the entry point so tests and
notebooks can call it with a composed config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mmgt")


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``"last"`` -> ``<output_dir>/checkpoints/last.ckpt`` (None if it doesn't exist yet); paths must exist."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not last.exists():
            log.warning("ckpt_path=last but %s does not exist: starting from scratch", last)
            return None
        return str(last)
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: checkpoint file not found")
    return str(ckpt_path)


def train(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> dict[str, float]:
    """Fit the configured model on the configured data; returns the final logged metrics (floats).

    ``extra_callbacks`` are added to the configured ones (notebooks, tests and probes use it).
    """
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(cfg.get("seed", 0), workers=True)
    output_dir = cfg.paths.output_dir
    datamodule = instantiate(cfg.data)
    info = datamodule.info() if hasattr(datamodule, "info") else {}
    model = instantiate(cfg.model, data_info=info, _recursive_=False)
    callbacks = instantiate_group(cfg.get("callbacks")) + list(extra_callbacks or [])
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(output_dir) / "config_resolved.yaml", resolve=True)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), output_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path="last")
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if trainer.is_global_zero:
        log.info("run folder: %s (checkpoints/, tensorboard/)", output_dir)
    return metrics
