"""Mode (b) of ``python -m mmgt.evaluate ckpt_path=<stage-2 .ckpt or run folder> split=test``.

The checkpoint's own DataModule settings (recorded in the checkpoint, validated as data; ``data_root`` may point
elsewhere) serve the split, the video module generates every window with its recorded sampling settings and the
suite of this command's config scores them: the module's test loop, so the numbers are those a training run logs
under ``test/``. The suite's protocol card (of that compute) is written beside them (``metrics.json``, TensorBoard
hparams).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmgt.evaluation.reports import print_table, write_reports

log = logging.getLogger("mmgt.evaluate")


def evaluate_checkpoint(cfg: DictConfig) -> int:
    """Mode (b): a stage-2 checkpoint scored on a split of its DataModule. Returns the process exit code."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger

    from mmgt import checkpoints
    from mmgt.data.datamodule import PATSDataModule
    from mmgt.errors import CheckpointError

    try:
        ckpt = checkpoints.read(cfg.ckpt_path, "ckpt_path")
        if ckpt.kind != "video" or ckpt.format != "ckpt":
            raise CheckpointError(f"{ckpt.path} is {ckpt.describe()} ({ckpt.format}); mode (b) needs a stage-2 "
                                  "Lightning checkpoint written by `mmgt.train`")
        dm_hp = dict(ckpt.datamodule)
        if not dm_hp:
            raise CheckpointError(f"{ckpt.path} records no DataModule settings (not written by `mmgt.train`?)")
        checkpoints.check_stored_config(dm_hp, ckpt.path, "datamodule_hyper_parameters")
        split = str(cfg.get("split") or "test")
        if split not in ("val", "test"):
            raise ValueError(f"split={split}: expected val or test")
        validation = {**(ckpt.hparams.get("validation") or {}), "log_media": False,
                      "max_batches": int(cfg.max_batches) if cfg.get("max_batches") else 10**9}
        # the metric suite comes from this command's config (trusted), never from the file
        ckpt.hparams.update(validation=validation, metrics=OmegaConf.to_container(cfg.metrics, resolve=True))
        model = checkpoints.build_module(ckpt, "video", key="ckpt_path")
    except (CheckpointError, ValueError) as err:
        log.error("%s", err)
        return 1
    path = ckpt.path
    del ckpt
    if cfg.get("data_root"):
        dm_hp["root"] = str(cfg.data_root)
    dm = PATSDataModule(**{**dm_hp, "progress": bool(cfg.get("progress", True))})
    out_dir = Path(cfg.paths.output_dir)
    accel = "gpu" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    logger = TensorBoardLogger(str(out_dir), name="tensorboard", version="") if cfg.tensorboard else False
    trainer = L.Trainer(accelerator=accel, devices=1, logger=logger, enable_checkpointing=False,
                        enable_model_summary=False)
    run = trainer.test if split == "test" else trainer.validate
    (results,) = run(model, datamodule=dm, verbose=False)
    prefix = f"{split}/"
    metrics = {k[len(prefix):]: float(v) for k, v in results.items() if k.startswith(prefix) and k != f"{split}/loss"}
    n = len(dm.datasets[split]) if split in getattr(dm, "datasets", {}) else 0
    if cfg.get("max_batches"):  # windows actually generated and scored
        n = min(n, int(cfg.max_batches) * int(dm_hp.get("val_batch_size") or dm_hp.get("batch_size") or 1))
    info = {"checkpoint": str(path), "split": split, "windows": n, "data_root": dm_hp.get("root"),
            "metrics_config": OmegaConf.to_container(cfg.metrics, resolve=True)}
    write_reports(out_dir, metrics, info, tensorboard=bool(cfg.tensorboard), protocol=_card(model), tb_scalars=False)
    print_table(metrics, n)
    log.info("wrote %s and %s", out_dir / "metrics.json", out_dir / "metrics.csv")
    return 0


def _card(model: object) -> dict:
    """The protocol card of the metric suite inside a module (its latest compute), found as a submodule."""
    from mmgt.metrics import Suite

    modules = model.modules() if hasattr(model, "modules") else []
    return next((m.last_card for m in modules if isinstance(m, Suite)), {})


__all__ = ["evaluate_checkpoint"]
