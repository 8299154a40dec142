"""``SMGAModule``: training logic of stage 1 (audio -> poses); the network is :class:`mmgt.models.smga.GestureDecoder`.

What lives here (and nothing architectural):

- training: x0-prediction diffusion step (:class:`~mmgt.models.gesture_diffusion.GestureDiffusion`, per-sample
  audio dropout for classifier-free guidance) and the configured loss (``loss`` group, :class:`SMGALoss`);
- an EMA copy of the network (:meth:`mmgt.lit.ema.EMA.copy_of`, laid out and updated as torch's ``AveragedModel``;
  decay with the usual (1+n)/(10+n) warm-up so short CPU runs do not validate a near-random average); it is saved
  in checkpoints (resume keeps it) and used for validation sampling and :meth:`SMGAModule.sample_poses`;
- validation/test: loss on every batch, DDIM + CFG sampling of the first ``sampling.val_batches`` batches,
  gesture metrics (:class:`~mmgt.metrics.GestureSuite`: per-region keypoint L2, random-projection
  FGD, diversity, beat alignment) and, on rank 0, a TensorBoard video: ground truth | generated | region masks of
  the generated poses (face red, lips green, hands blue, as :class:`~mmgt.pose.masks.RegionMaskBuilder` derives
  them for stage 2).

All constructor arguments arrive as DictConfigs (``_recursive_=False``) and are stored as plain dicts, so
checkpoints load with ``weights_only=True``. The ``sampling``, ``ema`` and ``video`` blocks are typed
(:mod:`mmgt.lit.config`); their defaults, and a missing ``optim``'s, are those of ``conf/model/smga.yaml``.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from mmgt import checkpoints
from mmgt.lit.config import EMAConfig, PoseSamplingConfig, PoseVideoConfig, yaml_block
from mmgt.lit.ema import EMA
from mmgt.lit.optim import configure_optimizers
from mmgt.lit.resume import ResumableTraining
from mmgt.losses.smga import SMGALoss
from mmgt.metrics import GestureSuite, build_suite
from mmgt.models.gesture_diffusion import GestureDiffusion
from mmgt.models.smga import GestureDecoder, GestureDecoderConfig
from mmgt.pose.layout import PoseNormalizer, visibility
from mmgt.utils.config import instantiate_partial, to_plain

log = logging.getLogger(__name__)


class SMGAModule(ResumableTraining, L.LightningModule):
    """Stage-1 training/validation/sampling around a :class:`GestureDecoder`."""

    def __init__(self, net: Any, loss: Any = None, optim: Any = None, scheduler: Any = None, sampling: Any = None,
                 ema: Any = None, diffusion: Any = None, video: Any = None, metrics: Any = None,
                 data_info: Any = None, init_from: str | None = None) -> None:
        super().__init__()
        info = to_plain(data_info) or {}
        net_cfg = {k: v for k, v in (to_plain(net) or {}).items() if not str(k).startswith("_")}
        if info.get("audio_feature_dim"):
            net_cfg["audio_dim"] = int(info["audio_feature_dim"])
        if "max_len" not in net_cfg and info.get("window"):
            net_cfg["max_len"] = int(info["window"])
        loss_cfg = to_plain(loss) or {}
        self.save_hyperparameters({
            "net": net_cfg, "loss": loss_cfg, "optim": to_plain(optim) or yaml_block("model/smga.yaml", "optim"),
            "scheduler": to_plain(scheduler),
            "sampling": PoseSamplingConfig.from_dict(sampling, "model.sampling").to_dict(),
            "ema": EMAConfig.from_dict(ema, "model.ema").to_dict(), "diffusion": to_plain(diffusion) or {},
            "video": PoseVideoConfig.from_dict(video, "model.video").to_dict(), "metrics": to_plain(metrics) or {},
            "data_info": info,
        })
        hp = self.hparams
        self.net = GestureDecoder(GestureDecoderConfig.from_dict(net_cfg))
        if init_from:  # before the EMA copy is made, so the average starts from these weights
            self.load_net(init_from)
        self.diffusion = GestureDiffusion(**hp.diffusion)
        self.loss_fn = (instantiate_partial(loss_cfg) if "_target_" in loss_cfg else SMGALoss(**loss_cfg))
        self.ema: EMA | None = None
        if hp.ema["enabled"]:
            self.ema = EMA.copy_of(self.net, float(hp.ema["decay"]), bool(hp.ema["warmup"]))
        self.val_metrics = build_suite(hp.metrics, GestureSuite)  # a node without _target_: older checkpoints
        norm = info.get("normalizer") or {}
        fs = info.get("frame_size") or (512, 512)
        self.frame_size = (int(fs[0]), int(fs[1]))
        self.normalizer = PoseNormalizer(int(norm.get("width", fs[1])), int(norm.get("height", fs[0])),
                                         float(norm.get("margin", 0.5)), bool(norm.get("legacy", False)))
        self.fps = float(info.get("fps", 25.0))

    # ------------------------------------------------------------------------------------------- helpers

    def load_net(self, path: str) -> None:
        """Initialise the network (fine-tuning) from an SMGA checkpoint, run folder or export (EMA weights when
        present; e.g. the released model converted by ``python -m mmgt.convert``); every tensor must fit."""
        sd = checkpoints.net_state(path, key="model.init_from")
        checkpoints.check_state(Path(str(path)), self.net, sd, "model")
        self.net.load_state_dict(sd)
        log.info("initialised the SMGA network from %s (%d tensors)", path, len(sd))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoints.stamp(checkpoint, "smga")
        super().on_save_checkpoint(checkpoint)  # the training seed (mmgt.lit.resume)

    def inference_view(self) -> SMGAModule:
        """Put the EMA weights into ``net`` and drop the average: the module as generation and exports use it."""
        if self.ema is not None:
            self.ema.copy_to(self.net)
            self.ema = None
        return self

    def sampling_settings(self) -> dict[str, Any]:
        """The recorded DDIM settings of :meth:`sample_poses` (defaults filled in): steps, guidance, eta, overlap."""
        s = self.hparams.sampling
        return {k: s[k] for k in ("steps", "guidance", "eta", "overlap")}

    @property
    def sampling_net(self) -> nn.Module:
        """The EMA network when enabled, else the trained one."""
        return self.ema.module if self.ema is not None else self.net

    def configure_optimizers(self) -> Any:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return configure_optimizers(params, self.hparams.optim, self.hparams.scheduler)

    def _loss(self, net: nn.Module, batch: Mapping[str, Any], generator: torch.Generator | None = None
              ) -> dict[str, torch.Tensor]:
        x0, cond = batch["poses"], batch["cond_pose"]
        pred, _ = self.diffusion.training_pair(net, x0, batch["audio_feat"], cond, generator)
        return self.loss_fn(pred, x0, batch["vis"], cond, visibility(cond))

    # ------------------------------------------------------------------------------------------- training

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self._loss(self.net, batch)
        bs = batch["poses"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=bs)
        return terms["loss"]

    def update_ema(self) -> None:
        """Fold the current weights into the EMA copy (no-op without EMA); buffers (the audio BatchNorm's running
        statistics) are copied instead of averaged. Called by
        :class:`~mmgt.lit.resume.ResumableTraining` right after each optimiser step that changed the weights, so the
        checkpoint of that step holds it."""
        if self.ema is not None:
            self.ema.update(list(self.net.parameters()), list(self.net.buffers()))

    # ------------------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample_poses(self, audio_feat: torch.Tensor, cond_pose: torch.Tensor, steps: int | None = None,
                     eta: float | None = None, guidance: float | None = None, overlap: int | None = None,
                     generator: torch.Generator | None = None, use_ema: bool = True) -> torch.Tensor:
        """Normalised poses (B, L, 134, 3) for audio features (B, L, F) of any length, from ``cond_pose``."""
        s = self.hparams.sampling
        net = self.sampling_net if use_ema else self.net
        was_training = net.training
        net.eval()
        try:
            cfg = self.net.cfg
            return self.diffusion.sample(
                net, audio_feat, cond_pose, window=cfg.max_len, num_keypoints=cfg.num_keypoints,
                channels=cfg.channels, overlap=s["overlap"] if overlap is None else overlap,
                steps=s["steps"] if steps is None else steps, eta=s["eta"] if eta is None else eta,
                guidance=s["guidance"] if guidance is None else guidance, generator=generator)
        finally:
            net.train(was_training)

    # ------------------------------------------------------------------------------------------- evaluation

    def window_generators(self, batch: Mapping[str, Any]) -> list[torch.Generator]:
        """One generator per window, seeded by (sampling.seed, clip id, start): evaluation noise belongs to the
        window, not to its batch, so validation values do not depend on batching or on the number of ranks."""
        seed = int(self.hparams.sampling["seed"])
        return [torch.Generator(device=self.device).manual_seed(zlib.crc32(f"{seed}:{c}:{int(s)}".encode()))
                for c, s in zip(batch["clip_id"], batch["start"], strict=True)]

    def _eval_step(self, batch: Mapping[str, Any], batch_idx: int, prefix: str) -> None:
        bs = batch["poses"].shape[0]
        gen = self.window_generators(batch)
        terms = self._loss(self.sampling_net, batch, gen)
        self.log(f"{prefix}/loss", terms["loss"], batch_size=bs, sync_dist=True, prog_bar=prefix == "val")
        for k in ("pos", "vel", "face_pos", "lips_pos"):
            self.log(f"{prefix}/loss_{k}", terms[k], batch_size=bs, sync_dist=True)
        s = self.hparams.sampling
        if batch_idx >= int(s["val_batches"]):
            return
        poses = self.sample_poses(batch["audio_feat"], batch["cond_pose"], steps=int(s["val_steps"]),
                                  generator=self.window_generators(batch))
        self.val_metrics.update(poses, batch["poses"], vis=batch["vis"], audio=batch.get("audio"))
        if batch_idx == 0 and self.trainer.is_global_zero and self.hparams.video["enabled"]:
            self._log_video(f"{prefix}/pose_video", batch, poses)

    def _epoch_end(self, prefix: str) -> None:
        if self.val_metrics.update_count == 0:
            return
        for k, v in self.val_metrics.compute().items():
            if math.isfinite(v):
                self.log(f"{prefix}/{k}", v)
        self.val_metrics.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # ------------------------------------------------------------------------------------------- media

    def render_panel(self, gt: torch.Tensor, gen: torch.Tensor) -> np.ndarray:
        """(N, 134, 3) normalised GT and generated poses -> (N, s + S, 3S+4, 3) uint8: GT | generated | masks, each
        labelled in an s-pixel strip above it."""
        from mmgt.callbacks.media import side_by_side
        from mmgt.pose.masks import RegionMaskBuilder
        from mmgt.pose.render import render_pose

        v = self.hparams.video
        h, w = self.frame_size
        size = int(v["size"])
        scale = size / max(h, w)
        canvas = (int(round(h * scale)), int(round(w * scale)))
        gt_px, gen_px = self.normalizer.denormalize(gt.float().cpu()), self.normalizer.denormalize(gen.float().cpu())
        gt_img = render_pose(gt_px, *canvas, scale=scale)
        gen_img = render_pose(gen_px, *canvas, scale=scale)
        builder = RegionMaskBuilder(v["masks"])
        official = builder.cfg.mode == "official"  # its masks live on the blur_side canvas only
        masks = builder(gen_px, (h, w), None if official else canvas).clamp(0, 1)  # (K, N, H, W)
        if tuple(masks.shape[-2:]) != canvas:
            masks = torch.nn.functional.interpolate(masks, size=canvas, mode="bilinear", align_corners=False)
        masks = masks.numpy()
        overlay = gen_img.astype(np.float32) * 0.5
        for i in range(min(3, masks.shape[0])):
            overlay[..., i] = np.maximum(overlay[..., i], masks[i] * 255.0)
        return side_by_side(gt_img, gen_img, overlay.clip(0, 255).astype(np.uint8),
                            labels=("ground truth", "generated", "masks"))

    def _log_video(self, tag: str, batch: Mapping[str, Any], poses: torch.Tensor) -> None:
        from mmgt.callbacks.media import log_video

        n = int(self.hparams.video["max_frames"])
        panel = self.render_panel(batch["poses"][0, :n], poses[0, :n])
        audio = batch.get("audio")  # the window's speech, cut to the panel's frames
        log_video(self.loggers, tag, panel, step=self.global_step, fps=self.fps,
                  caption=f"ground truth | generated | region masks of the generated pose (clip {batch['clip_id'][0]})",
                  audio=None if audio is None else audio[0, : int(round(len(panel) / self.fps * 16000))])
