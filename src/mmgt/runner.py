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
    """``"last"`` -> the newest loadable checkpoint of ``<output_dir>/checkpoints`` by training step (across
    ``last*.ckpt`` and ``step-*.ckpt``; unreadable files are named and skipped; None when the run has none yet);
    a run folder -> its newest loadable checkpoint; a file must exist."""
    from mmgt import checkpoints

    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        d = Path(output_dir) / "checkpoints"
        present = [f for g in checkpoints.CHECKPOINT_GLOBS for f in d.glob(g)] if d.is_dir() else []
        if not present:
            log.warning("ckpt_path=last but %s holds no checkpoint: starting from scratch", d)
            return None
        found = checkpoints.latest_checkpoint(d)
        if found is None:
            raise checkpoints.CheckpointError(f"ckpt_path=last: none of the {len(present)} checkpoints in {d} can be "
                                              "loaded (see the warnings above); remove them to start from scratch")
        log.info("ckpt_path=last: resuming from %s", found)
        return str(found)
    p = Path(ckpt_path)
    if p.is_dir():
        return str(checkpoints.resolve(p, "ckpt_path"))
    if not p.exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: checkpoint file not found")
    return str(ckpt_path)


def save_final_checkpoint(trainer: Any) -> None:
    """Write ``last.ckpt`` at the end of fit when the checkpoint callback's last save is older than the final step
    (it saves at validation or every n steps, so the steps after the last one would otherwise be lost)."""
    cb = getattr(trainer, "checkpoint_callback", None)
    if cb is None or not getattr(cb, "dirpath", None) or not getattr(cb, "save_last", False) or trainer.interrupted:
        return
    if getattr(cb, "_last_global_step_saved", -1) < trainer.global_step:
        trainer.save_checkpoint(str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"))
        log.info("saved the final step %d to %s", trainer.global_step, cb.dirpath)


def check_recipe(cfg: DictConfig) -> None:
    """Refuse compositions that would train silently from nothing: sub-stage B (motion + audio modules on a trained
    image model) with no ``model.init_from`` builds a random image model; ablation sweeps would then compare noise."""
    model = cfg.get("model") or {}
    if model.get("substage") == "b" and not model.get("init_from") and cfg.get("require_init", True):
        raise ValueError("model.init_from is empty for sub-stage B: give the stage-A checkpoint "
                         "(model.init_from=<run>/checkpoints/last.ckpt), or set require_init=false to train "
                         "sub-stage B from a random image model on purpose")


def train(cfg: DictConfig, extra_callbacks: list[Any] | None = None) -> dict[str, float]:
    """Fit the configured model on the configured data; returns the final logged metrics (floats).

    ``extra_callbacks`` are added to the configured ones (notebooks, tests and probes use it).
    """
    import lightning as L
    from hydra.utils import instantiate

    check_recipe(cfg)
    # fixes the initial weights; the training randomness, window order and per-window draws are derived from this
    # seed and the (epoch, batch) position (mmgt.lit.resume, mmgt.data.sampling), so a resumed run reseeding here
    # still continues exactly where the checkpoint left off
    L.seed_everything(cfg.get("seed", 0), workers=True)
    output_dir = cfg.paths.output_dir
    datamodule = instantiate(cfg.data)
    info = datamodule.info() if hasattr(datamodule, "info") else {}
    model = instantiate(cfg.model, data_info=info, _recursive_=False)
    from mmgt.callbacks.heartbeat import RankHeartbeat

    heartbeat = RankHeartbeat()
    callbacks = instantiate_group(cfg.get("callbacks")) + list(extra_callbacks or []) + [heartbeat]
    loggers = instantiate_group(cfg.get("logger"))
    from mmgt.lit.checkpoint_io import AtomicCheckpointIO

    # checkpoints written atomically and resumed with weights_only=True whatever the environment says
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    if trainer.is_global_zero:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, Path(output_dir) / "config_resolved.yaml", resolve=True)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), output_dir))
    except Exception as err:
        clear = heartbeat.explain(err)  # a timed-out collective: name the rank that stopped answering
        if clear is not None:
            log.error("%s", clear)
            raise clear from err
        raise
    save_final_checkpoint(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path="last")
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if trainer.is_global_zero:
        log.info("run folder: %s (checkpoints/, tensorboard/)", output_dir)
    return metrics
