"""Run the real training entry (mmgt.runner.train) under a given trainer setup and record, per rank, what it
saw and did: the windows of every training batch, a checksum of the weights after every step and the final
logged metrics. Run as a script (not under pytest): Lightning's ``ddp`` re-launches ``sys.argv`` for each
extra local rank, and the two-node test starts one such script per simulated node.

    python tests/ddp_probe.py OUT_DIR [hydra overrides ...]                  # fit, record, save OUT_DIR/final.ckpt
    python tests/ddp_probe.py OUT_DIR --validate CKPT [hydra overrides ...]  # validate CKPT in this process
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch


class Probe(L.Callback):
    """Records batches, weight checksums and metrics of this rank into ``<out>/rank<k>.json``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.batches: list[list[str]] = []
        self.weights: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.batches.append([f"{c}@{int(s)}" for c, s in zip(batch["clip_id"], batch["start"], strict=True)])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        flat = torch.cat([p.detach().flatten().double() for p in pl_module.parameters()])
        self.weights.append([float(flat.sum()), float(flat.abs().sum()), float(flat[::97].pow(2).sum())])
        print(f"probe: rank {trainer.global_rank} finished step {trainer.global_step}", flush=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        record = {"global_rank": trainer.global_rank, "world_size": trainer.world_size,
                  "node_rank": trainer.node_rank, "batches": self.batches, "weights": self.weights,
                  "metrics": metrics, "global_step": trainer.global_step}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
        trainer.save_checkpoint(self.out / "final.ckpt")  # collective: every rank calls it, rank 0 writes


def main() -> None:
    from hydra import compose, initialize_config_dir

    from mmgt.runner import train
    from mmgt.utils.paths import CONF_DIR

    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    ckpt = None
    if overrides[:1] == ["--validate"]:
        ckpt, overrides = overrides[1], overrides[2:]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"paths.output_dir={out / 'run'}",
                                                      f"paths.root_dir={out}"])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ckpt is None:
        train(cfg, extra_callbacks=[Probe(out)])
        return
    from hydra.utils import instantiate

    dm = instantiate(cfg.data)
    model = instantiate(cfg.model, data_info=dm.info(), _recursive_=False)
    trainer = instantiate(cfg.trainer, logger=False)
    (metrics,) = trainer.validate(model, datamodule=dm, ckpt_path=ckpt, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps({k: float(v) for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
