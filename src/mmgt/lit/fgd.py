"""``FGDEncoderModule``: trains the motion autoencoder whose encoder defines FGD (:mod:`mmgt.models.fgd`).

``python -m mmgt.train experiment=fgd_encoder [data=...]`` trains it on the stage-1 pose windows of the configured
corpus (``data.stage: smga``); the resulting checkpoint (``<run>/checkpoints/last.ckpt``, or the run folder) is what
``model.metrics.encoder`` names so stage-1 validation logs ``fgd`` (see :mod:`mmgt.metrics.gesture`).

Loss (Yoon et al.'s autoencoder objective): L1 between input and reconstruction of every part's coordinates, plus L1
between their frame-to-frame differences, both over the points visible in the ground truth (the visibility channel
is an input, not a target). Validation logs the same loss (``val/loss``; the encoder's BatchNorms use their running
statistics there, as when the encoder computes FGD).

Checkpoints record ``mmgt: {kind: fgd_encoder}``; the stored ``net`` block is plain data (length, latent size,
parts), read back without instantiating anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from mmgt import checkpoints
from mmgt.lit.config import yaml_block
from mmgt.lit.optim import configure_optimizers
from mmgt.lit.resume import ResumableTraining
from mmgt.models.fgd import MotionAutoencoder, MotionAutoencoderConfig
from mmgt.utils.config import to_plain

KIND = "fgd_encoder"


def reconstruction_loss(inputs: Mapping[str, torch.Tensor], recon: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """Masked L1 of positions and of velocities per part; ``loss`` = their sum over parts."""
    terms: dict[str, torch.Tensor] = {}
    total = torch.zeros(())
    for part, x in inputs.items():
        b, n, d = x.shape
        x3, r3 = x.view(b, n, d // 3, 3), recon[part].view(b, n, d // 3, 3)
        m = x3[..., 2:3]  # visibility channel
        pos = ((r3[..., :2] - x3[..., :2]).abs() * m).sum() / (2 * m.sum()).clamp(min=1)
        mv = m[:, 1:] * m[:, :-1]
        dv = (r3[:, 1:, :, :2] - r3[:, :-1, :, :2]) - (x3[:, 1:, :, :2] - x3[:, :-1, :, :2])
        vel = (dv.abs() * mv).sum() / (2 * mv.sum()).clamp(min=1)
        terms[f"{part}_pos"], terms[f"{part}_vel"] = pos, vel
        total = total.to(pos) + pos + vel
    terms["loss"] = total
    return terms


class FGDEncoderModule(ResumableTraining, L.LightningModule):
    """Autoencoder training on pose windows (``poses`` (B, N, K, 3), ``vis`` (B, N, K) from the stage-1 DataModule)."""

    def __init__(self, net: Any = None, optim: Any = None, scheduler: Any = None, data_info: Any = None) -> None:
        super().__init__()
        info = to_plain(data_info) or {}
        net_cfg = {k: v for k, v in (to_plain(net) or {}).items() if not str(k).startswith("_")}
        if net_cfg.get("length") is None:
            if not info.get("window"):
                raise ValueError("model.net.length is null and the data gives no window length (data.window)")
            net_cfg["length"] = int(info["window"])
        cfg = MotionAutoencoderConfig.from_dict(net_cfg)
        self.save_hyperparameters({
            "net": cfg.to_dict(),
            "optim": to_plain(optim) or yaml_block("model/fgd_encoder.yaml", "optim"),
            "scheduler": to_plain(scheduler),
            "data_info": {k: info[k] for k in ("fps", "window", "normalizer", "frame_size") if k in info},
        })
        self.net = MotionAutoencoder(cfg)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoints.stamp(checkpoint, KIND)
        super().on_save_checkpoint(checkpoint)

    def update_ema(self) -> None:
        """No average of the weights: the encoder is used as trained."""

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self.net.parameters(), self.hparams.optim, self.hparams.scheduler)

    def _terms(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        x, recon, _ = self.net(batch["poses"], batch.get("vis"))
        return reconstruction_loss(x, recon)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self._terms(batch)
        bs = batch["poses"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        terms = self._terms(batch)
        bs = batch["poses"].shape[0]
        self.log("val/loss", terms["loss"], prog_bar=True, batch_size=bs, sync_dist=True)


__all__ = ["KIND", "FGDEncoderModule", "reconstruction_loss"]
