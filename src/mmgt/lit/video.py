"""``VideoModule``: training logic of the stage-2 video diffusion model (sub-stages A and B).

The architecture is :class:`mmgt.models.video.VideoNet`; this module only decides *what* is trained and *how*:

- sub-stage ``a`` (image model): single frames, no audio; trainable groups e.g. denoising UNet, reference UNet,
  pose guider (+ the tiny conv image encoder). Sub-stage ``b`` (temporal + audio): N-frame windows; trainable
  groups motion modules, audio modules, audio projection; the rest comes frozen from a stage-A checkpoint
  (``init_from``, loaded with ``weights_only=True``). Groups are named in the config (``model.trainable``);
  every other parameter is frozen (``requires_grad=False``, so its ``.grad`` stays None).
- diffusion: one diffusers ``DDIMScheduler`` (v-prediction, zero-terminal-SNR, trailing spacing) used for the
  training targets *and* for sampling, so the two can never disagree on the betas (the original did);
  uniform timesteps per sample; noise offset; min-SNR-γ weighting per sample; classifier-free-guidance
  dropout of the image and the audio condition drawn per sample (``loss.cfg_per_sample=false`` reproduces the
  original's one draw per batch).
- MM-HAA branch weights are explicit: ``attention.branch_weights`` is passed to every training forward, and
  sampling uses ``sampling.branch_weights`` (null = the same weights), through the same ``VideoNet.forward``.
- optional EMA of the *trainable* parameters only (:class:`mmgt.lit.ema.EMA`; a full copy of the frozen
  UNets/VAE would double memory at paper size), used for validation and saved in the checkpoint; gradient
  checkpointing and autocast switches.
- settings: typed blocks (:mod:`mmgt.lit.config`) whose defaults are those of ``conf/model/video.yaml`` and
  ``conf/loss/video.yaml``; the optimiser and LR schedule are ``_partial_`` nodes, as in stage 1.
- validation: held-out windows are generated with DDIM + CFG (context windows for clips longer than
  ``sampling.context_frames``); PSNR/SSIM per frame against ground truth (``mmgt.metrics``), and the PSNR of
  "copy the reference frame" (tells whether the model learned anything beyond appearance); rank 0 logs
  ground truth | pose | masks | generated videos to TensorBoard.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from mmgt import checkpoints
from mmgt.data.corpus import HOP
from mmgt.lit import lean
from mmgt.lit.config import (
    NoiseScheduleConfig,
    ValidationConfig,
    VideoEMAConfig,
    VideoLossConfig,
    VideoSamplingConfig,
    yaml_block,
)
from mmgt.lit.ema import EMA
from mmgt.lit.optim import configure_optimizers, legacy_video_optim, require_target
from mmgt.lit.resume import ResumableTraining
from mmgt.models.video import VideoNet, VideoSampler, make_scheduler
from mmgt.pose.masks import MaskConfig
from mmgt.utils.config import to_plain

log = logging.getLogger(__name__)

STAGES = ("a", "b")
DEFAULT_TRAINABLE = {
    "a": ["denoising_unet", "reference_unet", "pose_guider", "image_encoder"],
    "b": ["motion_modules", "audio_modules", "audio_proj"],
}


COMPILE_KEYS = ("backend", "mode", "fullgraph", "dynamic")


def compile_options(value: Any) -> dict[str, Any] | None:
    """``model.compile`` as ``torch.compile`` keyword arguments: None = off, {} = torch's defaults (inductor)."""
    value = to_plain(value)
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping) or set(value) - set(COMPILE_KEYS):
        raise ValueError(f"model.compile must be true/false or a mapping with keys from {COMPILE_KEYS}, got {value!r}")
    return dict(value)


def snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float | None,
                plus_one: bool = True) -> torch.Tensor:
    """Per-sample min-SNR-γ weights for a v-prediction loss.

    ``plus_one`` (the original, via Moore-AnimateAnyone): min(SNR+1, γ)/(SNR+1), which keeps weight 1 at the
    zero-SNR terminal step; otherwise the Min-SNR paper's v form min(SNR, γ)/(SNR+1) (weight 0 there).
    ``gamma`` None/0 disables the weighting (all ones).
    """
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = a / (1 - a).clamp_min(1e-12)
    if not gamma:
        return torch.ones_like(snr)
    num = snr + 1 if plus_one else snr
    return num.clamp_max(float(gamma)) / (snr + 1)


load_net_state = checkpoints.video_net_state  # the name earlier code imports


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def mask_video(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, F, h, w) region masks -> (F, 3, H, W) in [0, 1]: branches 1..3 as R, G, B (branch 0, often the whole
    frame, is skipped when there are more than one); one branch is shown grey."""
    k = masks.shape[0]
    show = masks[1:4] if k > 1 else masks[:1].expand(3, *masks.shape[1:])
    rgb = torch.zeros(3, *masks.shape[1:], device=masks.device, dtype=torch.float32)
    rgb[:show.shape[0]] = show.float()
    rgb = rgb.transpose(0, 1)  # (F, 3, h, w)
    return torch.nn.functional.interpolate(rgb, size=size, mode="nearest")


class VideoModule(ResumableTraining, L.LightningModule):
    """Stage-2 video diffusion (MM-HAA) — sub-stage ``a`` or ``b``; see the module docstring.

    Args (``conf/model/video.yaml``; sub-configs arrive as DictConfigs or dicts):
        net: the ``size.video`` block (codec, image_encoder, unet, pose_guider, audio_proj, audio_attention).
        attention: the ``attention`` group (``_target_``: the variant class, or its alias ``type``
            none|cross|haa|mm_haa; ``module``, ``blocks``, ``n_branches``, ``branch_weights``).
        loss: the ``loss`` group (snr_gamma, snr_plus_one, noise_offset, drop_image, drop_audio, cfg_per_sample).
        optim: a ``_partial_`` optimiser node (called with ``params=``); a flat block without ``_target_`` (older
            checkpoints: lr, weight_decay, betas, eps, warmup_steps, schedule, total_steps, min_lr_ratio) means
            AdamW + :class:`~mmgt.lit.optim.WarmupCosine`; None: the YAML's optimiser and LR schedule.
        lr_scheduler: a ``_partial_`` LR scheduler node (called with ``optimizer=``; ``interval``); None: none.
        substage: ``a`` or ``b`` (named so as not to clash with the DataModule's ``stage`` hparam).
        trainable: group names to train (default by stage, see ``DEFAULT_TRAINABLE``).
        init_from: checkpoint to initialise the net from (stage B: the stage-A ``.ckpt``); None = random init.
        init_exclude: groups NOT taken from ``init_from`` (e.g. ``[motion_modules]`` keeps the AnimateDiff weights
            loaded at build time instead of stage A's identity motion modules, as the original).
        scheduler: ``make_scheduler`` kwargs (one beta schedule for training and sampling).
        sampling: steps, guidance, context_frames, context_overlap, branch_weights (None = attention's), eta.
        ema: {enabled, decay, warmup, init_from_ema}.
        validation: {max_batches: generate for this many val batches, log_media: bool, max_videos, seed}.
        gradient_checkpointing: recompute UNet activations in backward: True (both UNets), False, or the UNets to
            checkpoint (``[denoising_unet]`` / ``[reference_unet]``).
        autocast: None | "bf16" | "fp16" — autocast around the network forward.
        frozen_dtype: None | "bf16" | "fp16" — hold every frozen parameter of the net (VAE, CLIP, the frozen UNets and
            pose guider of sub-stage B) in this dtype (needs ``autocast``: frozen and trainable layers of one UNet
            then meet in the autocast dtype); trainable parameters, their EMA and the optimiser state stay float32.
        attention_processor: ``sdpa`` (torch's fused attention, diffusers' default) | ``plain`` (matmul + softmax)
            for every diffusers attention of the net.
        stage_a_temporal: False builds sub-stage A as an image model (no motion modules, no audio modules: they are
            identities / unused there); sub-stage B initialised from it starts with identity motion modules and
            zero-output audio modules, the function a sub-stage-A checkpoint with them gives.
        channels_last: convolution weights (and so activations) in channels-last memory format.
        vae_slicing / vae_tiling: diffusers' VAE memory switches (:meth:`~mmgt.models.video.codec.VAECodec.set_memory`).
        compile: ``torch.compile`` the backbone's networks (in place: state-dict names unchanged): true (torch's
            default backend, inductor) or a mapping of ``torch.compile`` options (backend, mode, fullgraph, dynamic).
        load_weights: load the pretrained files named in ``net`` (False: random init, e.g. tests at full size).
        data_info: ``datamodule.info()`` (audio_embed_shape, num_branches, frame_size, fps).
        metrics: the ``metrics`` group (a ``mmgt.metrics.MetricSuite`` node: PSNR, SSIM, LPIPS, FVD, Sync-C/D on the
            generated validation/test clips, logged as ``val/<name>``); None = PSNR and SSIM only.

    Rebuilding a trained module from its checkpoint's hparams (inference): pass ``init_from=None,
    load_weights=False`` — every weight then comes from that checkpoint's state dict.
    """

    def __init__(self, net: Any, attention: Any = None, loss: Any = None, optim: Any = None, substage: str = "a",
                 trainable: Sequence[str] | None = None, init_from: str | None = None, scheduler: Any = None,
                 sampling: Any = None, ema: Any = None, validation: Any = None, gradient_checkpointing: bool = False,
                 autocast: str | None = None, load_weights: bool = True, init_exclude: Sequence[str] | None = None,
                 data_info: Any = None, metrics: Any = None, lr_scheduler: Any = None, frozen_dtype: str | None = None,
                 attention_processor: str = "sdpa", stage_a_temporal: bool = True, channels_last: bool = False,
                 vae_slicing: bool = False, vae_tiling: bool = False, compile: bool | Mapping[str, Any] = False,
                 ) -> None:
        super().__init__()
        stage = str(substage).lower()
        if stage not in STAGES:
            raise ValueError(f"model.substage must be one of {STAGES}, got {stage!r}")
        if autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"model.autocast must be null, bf16 or fp16, got {autocast!r}")
        if frozen_dtype not in (None, "bf16", "fp16"):
            raise ValueError(f"model.frozen_dtype must be null, bf16 or fp16, got {frozen_dtype!r}")
        if frozen_dtype is not None and autocast is None:
            raise ValueError(f"model.frozen_dtype={frozen_dtype} needs model.autocast (bf16 or fp16): frozen and "
                             "trainable layers of one UNet meet in the autocast dtype")
        optim, lr_scheduler = self._optim_nodes(to_plain(optim), to_plain(lr_scheduler))
        require_target(optim)  # an optional optimiser package (bitsandbytes) is named before anything is built
        checkpointing = to_plain(gradient_checkpointing)
        checkpointing = list(checkpointing) if isinstance(checkpointing, list | tuple) else bool(checkpointing)
        hp = dict(net=to_plain(net), attention=to_plain(attention) or {"type": "none"},
                  loss=VideoLossConfig.from_dict(loss, "loss").to_dict(), optim=optim, lr_scheduler=lr_scheduler,
                  substage=stage, trainable=list(to_plain(trainable) or DEFAULT_TRAINABLE[stage]), init_from=init_from,
                  scheduler=NoiseScheduleConfig.from_dict(scheduler, "model.scheduler").to_dict(),
                  sampling=VideoSamplingConfig.from_dict(sampling, "model.sampling").to_dict(),
                  ema=VideoEMAConfig.from_dict(ema, "model.ema").to_dict(),
                  validation=ValidationConfig.from_dict(validation, "model.validation").to_dict(),
                  gradient_checkpointing=checkpointing,
                  autocast=autocast, load_weights=bool(load_weights), frozen_dtype=frozen_dtype,
                  attention_processor=str(attention_processor), stage_a_temporal=bool(stage_a_temporal),
                  channels_last=bool(channels_last), vae_slicing=bool(vae_slicing), vae_tiling=bool(vae_tiling),
                  compile=compile_options(compile),
                  init_exclude=list(to_plain(init_exclude) or []), data_info=to_plain(data_info) or {},
                  metrics=to_plain(metrics))
        hp["data_info"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp["data_info"].items()}
        self.save_hyperparameters(hp)
        self.substage = stage
        att, info = hp["attention"], hp["data_info"]
        audio_shape = info.get("audio_embed_shape") or att.get("audio_embed_shape")
        # the attention config names its variant class (mmgt.models.video.attention), which checks branch_weights
        mask_resize = MaskConfig.from_dict(info["mask"]).resize if info.get("mask") else "area"
        self.net = VideoNet(hp["net"], audio_shape, {k: v for k, v in att.items() if k != "audio_embed_shape"},
                            load_weights=hp["load_weights"], key="size.video", mask_branches=info.get("num_branches"),
                            mask_resize=mask_resize, temporal=stage == "b" or hp["stage_a_temporal"])
        frame = info.get("frame_size")
        factor = self.net.codec.factor
        if frame and (int(frame[0]) % factor or int(frame[1]) % factor):
            raise ValueError(f"data.image_size {frame[0]}x{frame[1]} is not divisible by the codec's factor {factor} "
                             "(size.video.codec)")
        self.branch_weights = att.get("branch_weights")
        bad = [g for g in hp["init_exclude"] if g not in self.net.parameter_groups()]
        if bad:
            raise ValueError(f"model.init_exclude: unknown group(s) {bad}")
        if init_from:
            self.load_net(init_from)
        self.trainable_names = self.net.set_trainable(hp["trainable"])
        if not self.trainable_names:
            raise ValueError(f"model.trainable={hp['trainable']} selects no parameters")
        gc = hp["gradient_checkpointing"]
        if gc:
            self.net.enable_gradient_checkpointing(None if gc is True else gc)
        self.net.set_attention_processor(hp["attention_processor"])
        if hp["vae_slicing"] or hp["vae_tiling"]:
            if not hasattr(self.net.codec, "set_memory"):
                raise ValueError("model.vae_slicing / model.vae_tiling need a VAE codec (size.video.codec.type=vae), "
                                 f"this net has {type(self.net.codec).__name__}")
            self.net.codec.set_memory(slicing=hp["vae_slicing"], tiling=hp["vae_tiling"])
        if frozen_dtype is not None:
            self.cast_frozen(frozen_dtype)
        if hp["channels_last"]:
            self.net.to(memory_format=torch.channels_last)
        if hp["compile"] is not None:
            for child in self.net.backbone.children():
                child.compile(**hp["compile"])
        self.scheduler = make_scheduler(**hp["scheduler"])
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        e = hp["ema"]
        self.ema = EMA.of_params(self._trainable_params(), e["decay"], e["warmup"]) if e["enabled"] else None
        self._val_psnr = self._val_ssim = self._copy_psnr = None

    # ------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _optim_nodes(optim: Any, lr_scheduler: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``model.optim`` / ``model.lr_scheduler`` as ``_partial_`` nodes; a missing optimiser is the YAML's (with
        its LR schedule), a flat block (older checkpoints) the AdamW + warm-up/cosine it meant."""
        if optim is None:
            return yaml_block("model/video.yaml", "optim"), yaml_block("model/video.yaml", "lr_scheduler")
        if "_target_" in optim:
            return dict(optim), lr_scheduler
        return legacy_video_optim(optim, yaml_block("model/video.yaml", "optim"),
                                  {**yaml_block("model/video.yaml", "lr_scheduler"), **(lr_scheduler or {})})

    def cast_frozen(self, dtype: str | torch.dtype) -> int:
        """Hold every frozen parameter of the net in ``dtype`` (``bf16`` | ``fp16`` or a torch dtype); trainable ones
        stay as they are. Returns the number of values cast."""
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"model.frozen_dtype must be bf16 or fp16, got {dtype!r}")
        n = 0
        with torch.no_grad():
            for p in self.net.parameters():
                if not p.requires_grad and p.dtype != dt:
                    p.data = p.data.to(dt)
                    n += p.numel()
        return n

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; channels-last weights stay channels-last after ``assign=True`` (the
        checkpoint readers assign the file's contiguous tensors)."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if assign and self.hparams.get("channels_last"):
            self.net.to(memory_format=torch.channels_last)
        return out

    def _trainable_params(self) -> list[tuple[str, nn.Parameter]]:
        names = set(self.trainable_names)
        return [(n, p) for n, p in self.net.named_parameters() if n in names]

    def load_net(self, path: str | Path) -> None:
        """Initialise the net from a checkpoint; parts this net has but the checkpoint lacks (e.g. audio modules
        added in stage B) keep their (zero) init; mismatched shapes are an error."""
        sd = load_net_state(path, prefer_ema=bool(self.hparams.ema["init_from_ema"]))
        groups = self.net.parameter_groups()
        skip = {n for g in self.hparams.init_exclude for n, _ in groups[g]}
        sd = {k: v for k, v in sd.items() if k not in skip}
        own = self.net.state_dict()
        bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ValueError(f"{path} (config key `model.init_from`) does not fit this model: shape mismatch in "
                             f"{bad[:4]}{' ...' if len(bad) > 4 else ''}")
        missing, unexpected = self.net.load_state_dict(sd, strict=False)
        if not sd or len(missing) == len(own):
            raise ValueError(f"{path} (config key `model.init_from`) holds no weights of this model")
        log.info("initialised from %s: %d tensors loaded, %d kept at init (%s...), %d ignored", path,
                 len(own) - len(missing), len(missing), ", ".join(missing[:3]), len(unexpected))

    def configure_optimizers(self) -> Any:
        sched = self.hparams.lr_scheduler
        if sched and sched.get("schedule") == "cosine" and not sched.get("total_steps"):  # null: the trainer's
            sched = {**sched, "total_steps": int(self.trainer.estimated_stepping_batches)}
        return configure_optimizers([p for _, p in self._trainable_params()], self.hparams.optim, sched)

    def setup(self, stage: str) -> None:
        from mmgt.metrics import PSNR, SSIM

        # the metrics protocol: per frame on [0, 1] (data range 1), mean over frames, then over clips
        self._val_psnr = PSNR(input_range=(-1.0, 1.0)).to(self.device)
        self._copy_psnr = PSNR(input_range=(-1.0, 1.0)).to(self.device)
        self._val_ssim = SSIM(input_range=(-1.0, 1.0)).to(self.device)
        self._suite, self._suite_updated = None, False
        if self.hparams.get("metrics"):
            from mmgt.metrics import MetricSuite, build_suite

            # the networks of the suite stay outside the module tree (not in checkpoints, not in DDP)
            self._suite = build_suite(self.hparams.metrics, MetricSuite).to(self.device)

    # ------------------------------------------------------------------------------------------ forward
    def _autocast(self):
        ac = self.hparams.autocast
        if ac is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if ac == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Network conditions of a batch; stage A uses one frame and no audio."""
        frames, pose = batch["frames"], batch["pose_images"]
        audio = batch.get("audio_emb") if self.substage == "b" and self.net.audio_proj is not None else None
        masks = batch.get("masks")
        if self.substage == "a" and frames.shape[1] != 1:  # sub-stage A trains an image model: one frame per sample
            frames, pose = frames[:, :1], pose[:, :1]
        if audio is None or not self.net.masked:  # masks only gate audio branches (mm_haa)
            masks = None
        return dict(frames=frames, pose=pose, audio=audio, masks=masks, ref=batch["ref_frame"])

    def _drops(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        lo = self.hparams.loss
        n = b if lo["cfg_per_sample"] else 1
        drop_img = (torch.rand(n, device=self.device) < float(lo["drop_image"])).expand(b)
        drop_aud = None
        if self.substage == "b":
            drop_aud = (torch.rand(n, device=self.device) < float(lo["drop_audio"])).expand(b)
        return drop_img, drop_aud

    def diffusion_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """v-prediction loss with noise offset, min-SNR-γ per sample and per-sample CFG dropout."""
        x = self._inputs(batch)
        lo = self.hparams.loss
        net = self.net
        latents = net.encode_frames(x["frames"])  # (B, C, F, h, w)
        ref_lat = net.encode_frames(x["ref"])
        b = latents.shape[0]
        noise = torch.randn_like(latents)
        off = float(lo["noise_offset"])
        if off:
            noise = noise + off * torch.randn(b, latents.shape[1], 1, 1, 1, device=latents.device, dtype=noise.dtype)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = self.scheduler.get_velocity(latents, noise, t)
        drop_img, drop_aud = self._drops(b)
        with self._autocast():
            emb = net.embed_reference(x["ref"])
            pred = net(noisy, t, ref_lat, emb, x["pose"], x["audio"], x["masks"], self.branch_weights,
                       drop_image=drop_img, drop_audio=drop_aud)
        mse = (pred.float() - target.float()).square().flatten(1).mean(1)
        w = snr_weights(self.alphas_cumprod, t, lo["snr_gamma"], bool(lo["snr_plus_one"]))
        loss = (mse * w).mean()
        return loss, {"mse": mse.mean().detach(), "snr_weight": w.mean().detach()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self.diffusion_loss(batch)
        b = batch["frames"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/mse", parts["mse"], batch_size=b)
        return loss

    def update_ema(self) -> None:
        """Fold the trainable parameters into the EMA (no-op without one); called by
        :class:`~mmgt.lit.resume.ResumableTraining` once per optimiser step that changed them, before the
        checkpoint of that step is written."""
        if self.ema is not None:
            self.ema.update([p for _, p in self._trainable_params()])

    # ------------------------------------------------------------------------------------------ sampling
    def sampling_settings(self) -> dict[str, Any]:
        """The recorded sampling settings with their defaults filled in (what :meth:`sampler` and the generation
        pipeline sample with); ``branch_weights`` resolved (null: the training weights)."""
        s = self.hparams.sampling
        return {"steps": int(s["steps"]), "guidance": float(s["guidance"]), "context_frames": int(s["context_frames"]),
                "context_overlap": int(s["context_overlap"]), "eta": float(s["eta"]),
                "beta_schedule": s["beta_schedule"], "branch_weights": self.sample_branch_weights()}

    def sampler(self, **overrides: Any) -> VideoSampler:
        s = {**self.sampling_settings(), **overrides}
        return VideoSampler(self.net, self.scheduler, steps=int(s["steps"]), guidance=float(s["guidance"]),
                            context_frames=int(s["context_frames"]), context_overlap=int(s["context_overlap"]),
                            eta=float(s["eta"]), beta_schedule=s["beta_schedule"])

    def sample_branch_weights(self) -> list[float] | None:
        bw = self.hparams.sampling["branch_weights"]
        return self.branch_weights if bw is None else bw

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], generator: torch.Generator | None = None,
                 **overrides: Any) -> torch.Tensor:
        """Frames (B, F, 3, H, W) in [-1, 1] for a batch (its pose, audio and masks; its reference frame)."""
        x = self._inputs(batch)
        with self._autocast():
            out = self.sampler(**overrides)(x["ref"], x["pose"], x["audio"], x["masks"],
                                             self.sample_branch_weights(), generator=generator)
        return out.float()

    def ema_weights(self) -> contextlib.AbstractContextManager:
        """Context in which the trainable parameters hold their EMA (validation, generation); no-op without EMA."""
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.applied([p for _, p in self._trainable_params()])

    def on_validation_epoch_start(self) -> None:
        self._prefix = "val" if not self.trainer.testing else "test"
        self._ema_stack = contextlib.ExitStack()
        self._ema_stack.enter_context(self.ema_weights())

    def on_validation_epoch_end(self) -> None:
        self._ema_stack.close()
        self.log(f"{self._prefix}/psnr_copy_ref", self._copy_psnr.compute(), sync_dist=True)
        self._copy_psnr.reset()
        if self._suite is None:
            self.log(f"{self._prefix}/psnr", self._val_psnr.compute(), sync_dist=True)
            self.log(f"{self._prefix}/ssim", self._val_ssim.compute(), sync_dist=True)
            self._val_psnr.reset()
            self._val_ssim.reset()
        elif self._suite_updated:  # the suite's PSNR/SSIM replace the standalone ones (same classes)
            values = self._suite.compute()  # collective: every rank calls it; values are already synchronised
            self.log_dict({f"{self._prefix}/{k}": v for k, v in values.items()})
            self._suite.reset()
        self._suite_updated = False

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        v = self.hparams.validation
        b = batch["frames"].shape[0]
        loss, _ = self.diffusion_loss(batch)
        self.log(f"{self._prefix}/loss", loss, batch_size=b, sync_dist=True)
        if batch_idx >= int(v["max_batches"]):
            return
        g = torch.Generator(device=self.device).manual_seed(int(v["seed"]) + batch_idx + 1000 * self.global_rank)
        gen = self.generate(batch, generator=g)
        x = self._inputs(batch)
        gt = x["frames"].float()
        copy = x["ref"].float()[:, None].expand_as(gt).contiguous()
        self._copy_psnr.update(copy, gt)
        if self._suite is None:
            self._val_psnr.update(gen, gt)
            self._val_ssim.update(gen, gt)
        else:
            kp = batch["keypoints"][:, :gt.shape[1]].float()  # pixels of these frames: locate the mouth
            self._suite.update(gen, gt, audio=batch["audio"][:, :gt.shape[1] * HOP], keypoints=kp)
            self._suite_updated = True
        gt, fake = (gt + 1) / 2, (gen + 1) / 2
        if batch_idx == 0 and v["log_media"] and self.trainer.is_global_zero and self.loggers:
            self._log_media(batch, x, gt, fake)

    # the test split is evaluated exactly like validation, logged under test/
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    def _log_media(self, batch: dict[str, Any], x: dict[str, Any], gt: torch.Tensor, fake: torch.Tensor) -> None:
        from mmgt.callbacks.media import log_panel

        hw = tuple(gt.shape[-2:])
        n = min(int(self.hparams.validation["max_videos"]), gt.shape[0])
        fps = float(self.hparams.data_info.get("fps", 25.0))
        for i in range(n):
            parts = {"ground truth": _to_uint8(gt[i]), "pose": _to_uint8(x["pose"][i].float())}
            if "masks" in batch:
                parts["masks"] = _to_uint8(mask_video(batch["masks"][i, :, :gt.shape[1]], hw))
            parts["generated"] = _to_uint8(fake[i])
            audio = batch["audio"][i] if "audio" in batch else None  # the window's 16 kHz speech, cut to the panel
            where = f"clip {batch['clip_id'][i]}, from frame {int(batch['start'][i])}" if "clip_id" in batch else ""
            log_panel(self.loggers, f"val/sample_{i}", parts, step=self.global_step, fps=fps, caption=where,
                      audio=audio)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoints.stamp(checkpoint, "video", substage=self.substage)
        lean.prune(self, checkpoint)  # frozen parts with a source file are recorded, not saved (mmgt.lit.lean)
        super().on_save_checkpoint(checkpoint)  # the training seed (mmgt.lit.resume)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        lean.restore_for_resume(self, checkpoint)  # a lean checkpoint's frozen parts: this module's own, verified
        super().on_load_checkpoint(checkpoint)

    def inference_view(self) -> VideoModule:
        """Copy the EMA averages into the trainable parameters and drop the EMA: the module as generation and
        exports use it."""
        if self.ema is not None:
            self.ema.copy_to(self.net)
            self.ema = None
        return self

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for _, p in self._trainable_params())

    def extra_repr(self) -> str:
        return f"stage={self.substage}, trainable={self.hparams.trainable} ({self.n_trainable:,} params)"


__all__ = ["DEFAULT_TRAINABLE", "EMA", "VideoModule", "load_net_state", "snr_weights"]
