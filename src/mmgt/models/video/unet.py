"""The default stage-2 backbone: two diffusers UNets built from one small config dict (:class:`UNetBackbone`).

- reference UNet: ``UNet2DConditionModel`` (SD layout), run on the reference latent at t=0;
- denoising UNet: ``UNetMotionModel`` (the same 2D layout + AnimateDiff temporal transformers after every spatial
  layer and in the mid block), either built directly (random init, motion ``proj_out`` zeroed so the motion
  modules start as identities, as in AnimateDiff) or via ``UNetMotionModel.from_unet2d`` from local pretrained
  SD and ``MotionAdapter`` folders.

Config keys (``size.video.unet``): ``block_out_channels``, ``layers_per_block``, ``down_blocks`` (``cross`` or
``plain`` per level), ``heads``, ``cross_attention_dim``, ``norm_num_groups``, ``motion_heads``,
``motion_max_seq_length``, ``pretrained`` (SD UNet folder or null), ``motion_adapter`` (folder or null),
``motion_norm`` (``per_frame`` | ``across_frames`` | null, see :func:`set_motion_norm`).

The UNets stay unmodified diffusers models (their state dicts keep the SD / AnimateDiff names): the reference bank
goes through attention processors (:mod:`mmgt.models.video.reference`), pose features and audio modules attach
through forward hooks on ``conv_in`` and on the spatial ``Transformer2DModel`` layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from mmgt.models.video.backbone import ROLE_GROUPS, Backbone, Site
from mmgt.models.video.reference import ForwardContext, attach_reference
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


BLOCK_KINDS = ("down", "mid", "up")


class UNetBackbone(Backbone):
    """Reference UNet (``UNet2DConditionModel``, writes the bank at t=0) + denoising UNet with motion modules
    (``UNetMotionModel``, reads it): MMGT's / AnimateDiff's layout. Keyword arguments: the ``size.video.unet`` keys.

    Attention sites are the spatial ``Transformer2DModel`` layers of the blocks named by ``attention.blocks``:
    ``down`` / ``mid`` / ``up`` (every block of that kind with attention) or single blocks such as ``down.1``.
    """

    def __init__(self, ctx: ForwardContext, latent_channels: int, load_weights: bool = True,
                 key: str = "size.video.unet", **unet: Any) -> None:
        super().__init__(ctx)
        self.reference_unet = build_reference_unet(unet, latent_channels, key, load_weights)
        self.denoising_unet = build_denoising_unet(unet, latent_channels, key, load_weights)
        if self.denoising_unet.config.in_channels != latent_channels:
            raise ValueError(f"{key}: UNet in_channels {self.denoising_unet.config.in_channels} != codec "
                             f"latent channels {latent_channels}")
        self.latent_channels = int(latent_channels)
        self.context_dim = int(self.denoising_unet.config.cross_attention_dim)
        self.norm_groups = int(self.denoising_unet.config.norm_num_groups)
        self.reference_layers = attach_reference(self.reference_unet, self.denoising_unet, ctx)

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        ehs = context.repeat_interleave(latents.shape[2], dim=0)  # one token per frame (B·F, 1, D)
        return self.denoising_unet(latents, timesteps, encoder_hidden_states=ehs, return_dict=False)[0]

    def run_reference(self, ref_latents: torch.Tensor, context: torch.Tensor) -> None:
        t0 = torch.zeros(ref_latents.shape[0], device=ref_latents.device, dtype=torch.long)
        self.reference_unet(ref_latents, t0, encoder_hidden_states=context, return_dict=False)

    def input_site(self) -> Site:
        c0 = int(self.denoising_unet.config.block_out_channels[0])
        return Site("conv_in", self.denoising_unet.conv_in, c0, self.latent_channels, self.norm_groups)

    def attention_sites(self, blocks: Sequence[str]) -> list[Site]:
        """The spatial attentions of the selected blocks; ``in_channels`` is the block's input width for layer 0 of
        a down block and the block's width otherwise (what MMGT sizes its audio module by)."""
        for b in blocks:
            if b.split(".")[0] not in BLOCK_KINDS:
                raise ValueError(f"attention.blocks entries must be down/mid/up[.i], got {b!r}")
        unet = self.denoising_unet
        parts = [("down", i, blk) for i, blk in enumerate(unet.down_blocks)]
        parts += [("mid", 0, unet.mid_block)] if unet.mid_block is not None else []
        parts += [("up", i, blk) for i, blk in enumerate(unet.up_blocks)]
        sites = []
        for kind, i, blk in parts:
            if (kind in blocks or f"{kind}.{i}" in blocks) and hasattr(blk, "attentions"):
                prefix = "mid_block" if kind == "mid" else f"{kind}_blocks.{i}"
                for j, a in enumerate(blk.attentions):
                    c_in = blk.resnets[0].in_channels if kind == "down" and j == 0 else a.config.in_channels
                    sites.append(Site(f"{prefix}.attentions.{j}", a, int(a.config.in_channels), int(c_in),
                                      self.norm_groups))
        return sites

    def unused_reference_parameters(self) -> list[str]:
        """Reference-UNet parameters that cannot influence any bank entry (its output head and the layers after the
        last written self-attention input); kept frozen so DDP never sees parameters without gradients."""
        ref = self.reference_unet
        names = [n for n, _ in ref.named_parameters() if n.startswith(("conv_norm_out.", "conv_out."))]
        last = len(ref.up_blocks) - 1
        blk = ref.up_blocks[last]
        if hasattr(blk, "attentions"):
            a = len(blk.attentions) - 1
            t = len(blk.attentions[a].transformer_blocks) - 1
            pre = f"up_blocks.{last}.attentions.{a}."
            tails = (pre + "proj_out.",) + tuple(f"{pre}transformer_blocks.{t}.{s}."
                                                 for s in ("attn1", "norm2", "attn2", "norm3", "ff"))
            names += [n for n, _ in ref.named_parameters() if n.startswith(tails)]
        return names

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        unused = {f"reference_unet.{n}" for n in self.unused_reference_parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in ROLE_GROUPS}
        for n, p in self.named_parameters():
            if n.startswith("denoising_unet."):
                groups["motion_modules" if ".motion_modules." in n else "denoising_unet"].append((n, p))
            elif n not in unused:
                groups["reference_unet"].append((n, p))
        return groups

    def enable_gradient_checkpointing(self) -> None:
        self.reference_unet.enable_gradient_checkpointing()
        self.denoising_unet.enable_gradient_checkpointing()
