"""Build the two diffusers UNets of the video model from one small config dict.

- reference UNet: ``UNet2DConditionModel`` (SD layout), run on the reference latent at t=0;
- denoising UNet: ``UNetMotionModel`` (the same 2D layout + AnimateDiff temporal transformers after every spatial
  layer and in the mid block), either built directly (random init, motion ``proj_out`` zeroed so the motion
  modules start as identities, as in AnimateDiff) or via ``UNetMotionModel.from_unet2d`` from local pretrained
  SD and ``MotionAdapter`` folders.

Config keys (``size.video.unet``): ``block_out_channels``, ``layers_per_block``, ``down_blocks`` (``cross`` or
``plain`` per level), ``heads``, ``cross_attention_dim``, ``norm_num_groups``, ``motion_heads``,
``motion_max_seq_length``, ``pretrained`` (SD UNet folder or null), ``motion_adapter`` (folder or null),
``motion_norm`` (``per_frame`` | ``across_frames`` | null, see :func:`set_motion_norm`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from mmgt.models.video.weights import require

_DOWN = {"cross": "CrossAttnDownBlock2D", "plain": "DownBlock2D"}
_UP = {"cross": "CrossAttnUpBlock2D", "plain": "UpBlock2D"}

# SD-1.5 layout (what `size=full` uses; the published SD / sd-image-variations UNets have this config).
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                 down_blocks=["cross", "cross", "cross", "plain"], heads=8, cross_attention_dim=768,
                 norm_num_groups=32, motion_heads=8, motion_max_seq_length=32)


UNET_KEYS = frozenset(("block_out_channels", "layers_per_block", "down_blocks", "heads", "cross_attention_dim",
                       "norm_num_groups", "motion_heads", "motion_max_seq_length", "pretrained", "motion_adapter",
                       "motion_norm"))
MOTION_NORMS = ("per_frame", "across_frames")


def check_unet_config(cfg: dict, key: str = "size.video.unet") -> None:
    """Refuse unknown keys (a typo would otherwise silently fall back to a default)."""
    bad = sorted(set(cfg) - UNET_KEYS)
    if bad:
        raise ValueError(f"{key}: unknown key(s) {bad}; known: {sorted(UNET_KEYS)}")
    mode = cfg.get("motion_norm")
    if mode is not None and mode not in MOTION_NORMS:
        raise ValueError(f"{key}.motion_norm must be one of {MOTION_NORMS} or null, got {mode!r}")


def unet2d_config(cfg: dict, latent_channels: int) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` kwargs for our compact config."""
    kinds = list(cfg["down_blocks"])
    if len(kinds) != len(cfg["block_out_channels"]) or any(k not in _DOWN for k in kinds):
        raise ValueError(f"unet.down_blocks must list 'cross'/'plain' per level of block_out_channels, got {kinds}")
    return dict(
        in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=tuple(_DOWN[k] for k in kinds), up_block_types=tuple(_UP[k] for k in reversed(kinds)),
        block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=int(cfg["layers_per_block"]),
        cross_attention_dim=int(cfg["cross_attention_dim"]), attention_head_dim=int(cfg["heads"]),
        norm_num_groups=int(cfg["norm_num_groups"]),
    )


def motion_config(cfg: dict, latent_channels: int) -> dict[str, Any]:
    """diffusers ``UNetMotionModel`` kwargs for the same layout plus motion modules."""
    c2 = unet2d_config(cfg, latent_channels)
    return dict(
        in_channels=c2["in_channels"], out_channels=c2["out_channels"],
        down_block_types=tuple(t.replace("2D", "Motion") for t in c2["down_block_types"]),
        up_block_types=tuple(t.replace("2D", "Motion") for t in c2["up_block_types"]),
        block_out_channels=c2["block_out_channels"], layers_per_block=c2["layers_per_block"],
        cross_attention_dim=c2["cross_attention_dim"], num_attention_heads=int(cfg["heads"]),
        norm_num_groups=c2["norm_num_groups"], motion_num_attention_heads=int(cfg.get("motion_heads", cfg["heads"])),
        motion_max_seq_length=int(cfg.get("motion_max_seq_length", 32)), use_motion_mid_block=True,
    )


def zero_motion_outputs(unet: UNetMotionModel) -> None:
    """Zero every motion module's ``proj_out`` so the temporal layers start as identities."""
    for name, m in unet.named_modules():
        if name.endswith("motion_modules") and isinstance(m, nn.ModuleList):
            for mm in m:
                nn.init.zeros_(mm.proj_out.weight)
                nn.init.zeros_(mm.proj_out.bias)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken per frame of a (B, C, F, H, W) input, as AnimateDiff and MMGT compute
    them (diffusers' ``AnimateDiffTransformer3D`` pools them over all frames of the window). Same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).transpose(1, 2)


def set_motion_norm(unet: nn.Module, mode: str) -> None:
    """Make every motion module's input GroupNorm ``per_frame`` (AnimateDiff/MMGT) or ``across_frames`` (diffusers).

    Weights trained with one convention compute a different function under the other (measured on MMGT's motion
    module: 1-5 % output change; the full net's prediction moves by 7 %), so AnimateDiff / MMGT weights need
    ``per_frame``. The module is swapped in place and keeps its ``weight`` / ``bias`` parameters (and names).
    """
    if mode not in MOTION_NORMS:
        raise ValueError(f"motion_norm must be one of {MOTION_NORMS}, got {mode!r}")
    cls = FrameGroupNorm if mode == "per_frame" else nn.GroupNorm
    for m in unet.modules():
        if isinstance(m, AnimateDiffTransformer3D) and type(m.norm) is not cls:
            old = m.norm
            new = cls(old.num_groups, old.num_channels, eps=old.eps, affine=old.affine, device="meta")
            if old.affine:
                new.weight, new.bias = old.weight, old.bias
            m.norm = new


def motion_norm_mode(cfg: dict) -> str:
    """The configured ``motion_norm``; null means ``per_frame`` when AnimateDiff weights are loaded (the convention
    they were trained with), else ``across_frames`` (diffusers' module as is)."""
    return cfg.get("motion_norm") or ("per_frame" if cfg.get("motion_adapter") else "across_frames")


def build_reference_unet(cfg: dict, latent_channels: int, key: str = "size.video.unet",
                         load_weights: bool = True) -> UNet2DConditionModel:
    if cfg.get("pretrained") and load_weights:
        path = require(cfg["pretrained"], f"{key}.pretrained", "unet", files=("config.json",))
        return UNet2DConditionModel.from_pretrained(str(path), local_files_only=True)
    return UNet2DConditionModel(**unet2d_config(cfg, latent_channels))


def build_denoising_unet(cfg: dict, latent_channels: int, key: str = "size.video.unet",
                         load_weights: bool = True) -> UNetMotionModel:
    check_unet_config(cfg, key)
    adapter = None
    if cfg.get("motion_adapter") and load_weights:
        path = require(cfg["motion_adapter"], f"{key}.motion_adapter", "motion_adapter", files=("config.json",))
        adapter = MotionAdapter.from_pretrained(str(path), local_files_only=True)
    if cfg.get("pretrained") and load_weights:
        unet2d = build_reference_unet(cfg, latent_channels, key)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    else:
        unet = UNetMotionModel(**motion_config(cfg, latent_channels))
        if adapter is not None:
            unet.load_motion_modules(adapter)
    if adapter is None:
        zero_motion_outputs(unet)
    set_motion_norm(unet, motion_norm_mode(cfg))
    return unet
